"""The heads of the lane's answers, written as aiohttp's server writes them (status line, ``Date`` and all)."""

from __future__ import annotations

import email.utils
import http
import time

from proxy.pipeline.request_id import REQUEST_ID_HEADER

#: the request id header line's start, between Content-Type and the id
REQUEST_ID_LINE = b"\r\n" + REQUEST_ID_HEADER.encode() + b": "
JSON = b"application/json"
JSON_UTF8 = b"application/json; charset=utf-8"
CLOSE = b"Connection: close\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>``, with the standard reason (none for an unknown status)."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status.value: status_line(status.value) for status in http.HTTPStatus}


def content_length(length: int) -> bytes:
    return b"Content-Length: %d\r\n" % length


class AnswerHeads:
    """Builds answer heads; ``Date`` formatted once per second, as aiohttp does. One per lane."""

    __slots__ = ("_date",)

    def __init__(self) -> None:
        self._date = (0, b"")

    def date(self) -> bytes:
        """The ``Date`` header's value for now."""
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def head(
        self,
        status: int,
        content_type: bytes,
        request_id: str,
        framing: bytes,
        extra: dict[str, str] | None,
        close: bool,
    ) -> list[bytes]:
        """The head's parts, to be joined: status, type, request id, date, framing, extra headers, the close."""
        lines = [
            _STATUS_LINES.get(status) or status_line(status),
            b"Content-Type: ",
            content_type,
            REQUEST_ID_LINE,
            request_id.encode("latin-1"),
            b"\r\nDate: ",
            self.date(),
            b"\r\n",
            framing,
        ]
        if extra:
            for name, value in extra.items():
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if close:
            lines.append(CLOSE)
        lines.append(b"\r\n")
        return lines
