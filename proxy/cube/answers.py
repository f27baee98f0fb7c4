"""Pure mapping of Cube's answers to the caller's answers (spec section 5)."""

from __future__ import annotations

import re
from typing import Any

CONTINUE_WAIT = "Continue wait"

# ClickHouse: Code: 81 (UNKNOWN_DATABASE) or Code: 60 (UNKNOWN_TABLE); PostgreSQL: the tenant's
# schema or table is missing ('relation "gitlab_project_1.events" does not exist',
# 'schema "gitlab_project_1" does not exist').
_MISSING_DATABASE = re.compile(
    r"Code:\s*(?:81|60)\b|UNKNOWN_DATABASE|UNKNOWN_TABLE"
    r"|(?:relation|schema)\s+\"[^\"]*\"\s+does not exist",
    re.IGNORECASE,
)

DATABASE_NOT_FOUND = {"message": "404 Clickhouse Database Not Found"}


def error_text(body: Any) -> str | None:
    """Cube's error message, if the body is an error answer; ``None`` for data."""
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        if isinstance(error, str):
            return error
        return str(error) if error is not None else "Cube answered an error without a message"
    return None


def is_continue_wait(body: Any) -> bool:
    return error_text(body) == CONTINUE_WAIT


def map_cube_error(message: str) -> tuple[int, dict[str, str]]:
    """The caller's status and body for a Cube ``error`` (never its ``stack``)."""
    if _MISSING_DATABASE.search(message):
        return 404, dict(DATABASE_NOT_FOUND)
    return 400, {"message": message, "error": message}
