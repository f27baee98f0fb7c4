"""What the tests share: helpers no test module owns (a test module imports this package, never another test module).

- ``processes``: real proxy processes, started as production starts them and never left behind.
- ``waiting``: waiting on a record, never on a time.
- ``metrics``, ``wire``, ``sessions``, ``queries``, ``answer_cache``, ``real_stack``, ``manifests``:
  what the tests read and send, by subject.
- ``redis_server``, ``otlp_receiver``: real peers (Debian's redis-server, an OTLP receiver);
  ``stranger_load``: a crowd of strangers, run as a process of its own.

The fakes of GitLab and Cube are in ``tests/fakes/``.
"""
