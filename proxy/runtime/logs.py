"""Log set-up: one JSON object per line (or plain text), with a redaction guard."""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from proxy.redaction import redact
from proxy.stamps import UtcStamps

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = UtcStamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class MalformedRequests(logging.Filter):
    """aiohttp's "Error handling request" for a request it could not parse becomes one WARNING line.

    aiohttp logs those at ERROR with a traceback whose message quotes the offending bytes,
    a credential header among them (``PRIVATE-TOKEN : <token>``). The line keeps the
    error's kind and drops its text and traceback: a malformed request is the caller's
    fault, not the proxy's.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed request refused (%d %s)"
            record.args = (exc.code, type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._stamp = UtcStamps()

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._stamp(record.created)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python's warnings (a leaked semaphore, a deprecation) as log records: every line on stderr is JSON
    logging.captureWarnings(True)
    # aiohttp's own access log would repeat ours and print raw query strings (private_token=...).
    logging.getLogger("aiohttp.access").disabled = True
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, MalformedRequests)]
    server.addFilter(MalformedRequests())


def log_uncaught() -> None:
    """Exceptions nobody caught (the main thread's, a thread's, one Python could only ignore, as in a ``__del__``)
    become log records too, so every line on stderr stays JSON. A process's start-up calls this, after
    ``setup_logging``; the hooks are the process's own (tests keep theirs)."""
    log = logging.getLogger("proxy.uncaught")

    def main_thread(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))

    def thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            name = args.thread.name if args.thread is not None else "?"
            exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
            log.error("uncaught %s in thread %s", args.exc_type.__name__, name, exc_info=exc_info)

    def unraisable(args: Any) -> None:
        where = args.err_msg or "Exception ignored in"
        try:
            what = repr(args.object)[:200]
        except Exception:  # its repr may be what fails
            what = f"<{type(args.object).__name__}>"
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
        log.warning("%s: %s", where, what, exc_info=exc_info)

    sys.excepthook = main_thread
    threading.excepthook = thread
    sys.unraisablehook = unraisable
