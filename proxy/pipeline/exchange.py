"""The per-request record both front doors carry through the pipeline."""

from __future__ import annotations

from proxy.auth.credentials import Credential
from proxy.caching.verdict import Verdict
from proxy.observe.metrics import ProjectTally
from proxy.observe.tracing import Traced


class Exchange:
    """What the pipeline notes about one request as it goes: one is made per request, by ``Pipeline.begin``.

    A slotted class, not a mapping: every step reads and writes named, typed fields, and
    the access line is written from them.
    """

    __slots__ = (
        "aborted",
        "age",
        "bytes_received",
        "bytes_sent",
        "cache",
        "client",
        "credential",
        "cube_seconds",
        "cube_status",
        "cube_url",
        "gzip",
        "hung_up",
        "if_none_match",
        "method",
        "path",
        "project",
        "request_id",
        "route",
        "started",
        "tally",
        "trace",
        "traceparent",
        "user_agent",
        "user_id",
    )

    def __init__(self, request_id: str, method: str, route: str | None, started: float) -> None:
        #: Cube's ``<id>-span-<n>`` form, returned to the caller and sent to Cube
        self.request_id = request_id
        self.method = method
        #: the route template (never a raw path), or None when no route matched
        self.route = route
        #: when no route matched: the path as a template (``proxy/pipeline/path_template.py``), else None
        self.path: str | None = None
        #: the request body's declared size (``Content-Length``), when it has one
        self.bytes_received: int | None = None
        #: the caller went away before its answer was whole (a 499 in the access line and the metrics)
        self.hung_up = False
        #: ``time.perf_counter()`` when the request began
        self.started = started
        #: set by the gate on analytics routes
        self.credential: Credential | None = None
        #: the numeric project id, once authorised
        self.project: int | None = None
        #: where the answer came from, from whichever cache had the say (``proxy/caching/verdict.py``); only the
        #: answer cache's verdicts are sent as ``X-Cache``
        self.cache: Verdict | None = None
        #: a cached answer's age in seconds (``Age``)
        self.age: int | None = None
        #: a streamed 200 was cut off because Cube's body broke
        self.aborted = False
        #: bytes of the answer's body written (set by the front door)
        self.bytes_sent = 0
        #: the caller's address (through trusted proxies), its User-Agent, its W3C traceparent if valid
        self.client: str | None = None
        self.user_agent: str | None = None
        self.traceparent: str | None = None
        #: the request's server span, with ``[tracing]`` on (None otherwise: every step's one branch)
        self.trace: Traced | None = None
        #: the GitLab user id, once authorised (never a name or a token)
        self.user_id: int | None = None
        #: the project's tally in the metrics, once authorised
        self.tally: ProjectTally | None = None
        #: what Cube answered this request (or the call it shared), and how long that took
        self.cube_status: int | None = None
        self.cube_seconds: float | None = None
        #: the Cube asked (its URL as it may be shown), when one was
        self.cube_url: str | None = None
        #: the caller takes its answer gzipped (``Accept-Encoding``), and the validators it already has
        self.gzip = False
        self.if_none_match: str | None = None

    def __repr__(self) -> str:
        return f"Exchange(request_id={self.request_id!r}, route={self.route!r}, project={self.project!r})"
