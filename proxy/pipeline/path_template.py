"""The path of a request no route matched, as the access line may show it: a template, never the raw path.

No query string (it may carry ``private_token``), every segment of digits as ``{n}``, every
segment that is long or not plain (a token, an encoded value) as ``{x}``, at most
``MAX_SEGMENTS`` segments and ``MAX_LENGTH`` characters: what was asked for is recognisable,
and a caller can neither put a secret in a log line nor make a label out of one.
"""

from __future__ import annotations

import re

MAX_SEGMENTS = 12
MAX_LENGTH = 160
#: a segment shown as it is: a short word of letters, digits, '-', '_' or '.'
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,31}")


def path_template(path: str) -> str:
    """``/api/v4/projects/12/nope?private_token=x`` -> ``/api/v4/projects/{n}/nope``."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    segments = path.split("/")[1 : MAX_SEGMENTS + 1]
    shown = [
        segment
        if (_PLAIN.fullmatch(segment) and not segment.startswith("gl")) or segment in {"-", ""}
        else "{n}"
        if segment.isascii() and segment.isdigit()
        else "{x}"
        for segment in segments
    ]
    template = "/" + "/".join(shown)
    if path.count("/") > MAX_SEGMENTS:
        template += "/..."
    return template[:MAX_LENGTH]
