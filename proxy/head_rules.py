"""The request head's rules, one set for both front doors.

aiohttp's server is configured with these limits (``proxy/web/runner.py``); the fast lane
hands any request past them, or repeating a header aiohttp refuses to see twice, to that
server, which answers it. So a head is judged by one rule whichever door it came through.
"""

from __future__ import annotations

from aiohttp.http_parser import SINGLETON_HEADERS

#: the longest request line aiohttp's server reads (its ``max_line_size``)
MAX_LINE = 8190
#: the longest header field, name and value, aiohttp's server reads (its ``max_field_size``)
MAX_FIELD = 8190
#: the most header fields aiohttp's server reads (its ``max_headers``)
MAX_HEADERS = 128

#: the header names (lower-cased, bytes) a request may carry at most once, as aiohttp's parser rules
SINGLETONS: frozenset[bytes] = frozenset(str(name).lower().encode("latin-1") for name in SINGLETON_HEADERS)


def server_limits() -> dict[str, int | bool]:
    """The keyword arguments that give aiohttp's server these limits.

    aiohttp's own decompression is off: its parser inflates a body as it arrives, before anyone asked for it, and
    keeps reading (so inflating) a refused request's unread body, so a stranger's small gzip body could cost the
    loop the inflation of a gigabyte. The pipeline inflates a body it has decided to read, within the body limit
    (``request_body.inflate``)."""
    return {
        "max_line_size": MAX_LINE,
        "max_field_size": MAX_FIELD,
        "max_headers": MAX_HEADERS,
        "auto_decompress": False,
    }
