"""Caching: every rule of what is kept, reused or shared between callers lives here.

- ``singleflight``: a bounded TTL cache whose concurrent misses of one key share one load (a base
  module: GitLab's answers, meta and readiness use it from the layers below).
- ``coalesce``: identical calls in flight share one upstream call, streams fanned out.
- ``answer_cache``: the answer cache's entries, keys and bounds; ``cached_queries``: load and
  dry-run through it, the fleet's copy in Redis, and stale entries' refreshes.
- ``kept``: an answer as a cache keeps it; ``verdict``: where an answer came from.

A personal (``include_token``) call never reaches this package's query caches: the pipeline
branches it off first.
"""
