"""Project ids as the proxy accepts them anywhere (routes, settings, dev tokens): ASCII digits only."""

from __future__ import annotations

import re

#: 1 to 18 ASCII digits: str.isdigit() also accepts other scripts' digits (superscript two,
#: Arabic-Indic and fullwidth ones), which int() refuses or reads as another number, so an id
#: is matched against this, never isdigit()
_ID = re.compile(r"[0-9]{1,18}")


def project_id(text: str) -> int | None:
    """The positive project id ``text`` spells in ASCII digits, else None."""
    if _ID.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value > 0 else None
