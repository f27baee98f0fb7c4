"""The access log: one line per request, written without ``logging``'s per-record machinery.

It writes the line a ``logging`` handler would (the same fields, in the JSON or text form
``[server] log_format`` picks, through the same redaction guard) straight to the stream
the log handler writes to (why: ``bench/NOTES.md``). Whether it writes at all follows
the ``proxy.access`` logger: a ``log_level`` above INFO turns it off.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from proxy.pipeline.exchange import Exchange
from proxy.redaction import redact
from proxy.stamps import UtcStamps

LOGGER = "proxy.access"


class AccessLog:
    def __init__(self, fmt: str, stream: Callable[[], TextIO] = lambda: sys.stderr) -> None:
        self._json = fmt == "json"
        #: looked up per line, so a stream replaced after start-up (tests capturing stderr) is honoured
        self._stream = stream
        self._logger = logging.getLogger(LOGGER)
        self._stamp = UtcStamps()
        #: this process's id, on every line (workers share one stream)
        self._pid = os.getpid()

    def enabled(self, probe: bool = False) -> bool:
        """Whether a line would be written: INFO for requests, DEBUG for probes (health, metrics, status)."""
        return self._logger.isEnabledFor(logging.DEBUG if probe else logging.INFO)

    def request(self, exchange: Exchange, status: int, seconds: float, probe: bool) -> None:
        """One request's line, from what its exchange recorded (never a token: hashes, ids and templates).

        Its ``trace_id`` and ``span_id`` are the request's server span's when it is traced (so a line
        finds its trace), else the caller's ``traceparent``'s."""
        route = exchange.route
        trace = exchange.trace.traceparent if exchange.trace is not None else exchange.traceparent
        self.write(
            f"{exchange.method} {route or exchange.path} {status}",
            {
                "event": "request",
                "request_id": exchange.request_id,
                "method": exchange.method,
                "route": route,
                "path": exchange.path,
                "project": exchange.project,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "bytes": exchange.bytes_sent,
                "request_bytes": exchange.bytes_received,
                "client": exchange.client,
                "user_agent": exchange.user_agent,
                "user_id": exchange.user_id,
                "cache": exchange.cache.name if exchange.cache is not None else None,
                "cube": exchange.cube_url,
                "cube_status": exchange.cube_status,
                "cube_ms": None if exchange.cube_seconds is None else round(exchange.cube_seconds * 1000, 2),
                "trace_id": trace[3:35] if trace is not None else None,
                "span_id": trace[36:52] if trace is not None else None,
                "aborted": exchange.aborted,
            },
            probe,
        )

    def write(self, message: str, fields: dict[str, Any], probe: bool = False) -> None:
        now = time.time()
        stamp = self._stamp(now)
        level = "DEBUG" if probe else "INFO"
        if self._json:
            entry = {"time": stamp, "level": level, "logger": LOGGER, "pid": self._pid, "message": message}
            line = orjson.dumps(entry | fields, default=str).decode()
        else:
            line = f"{stamp} {level} {LOGGER} {message}"
        self._stream().write(redact(line) + "\n")
