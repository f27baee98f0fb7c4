"""Pure mapping of Cube's answers to the caller's answers (spec section 5)."""

from __future__ import annotations

import re
from typing import Any

CONTINUE_WAIT = "Continue wait"

# ClickHouse: Code: 81 (UNKNOWN_DATABASE) or Code: 60 (UNKNOWN_TABLE), or without the code as older
# servers and drivers say it ('Error: Database gitlab_project_1 doesn't exist', 'Table
# gitlab_project_1.snowplow_events doesn't exist.'); PostgreSQL: the tenant's schema or table is missing
# ('relation "gitlab_project_1.events" does not exist', 'schema "gitlab_project_1" does not exist').
_MISSING_DATABASE = re.compile(
    r"Code:\s*(?:81|60)\b|UNKNOWN_DATABASE|UNKNOWN_TABLE"
    r"|\b(?:Database|Table)\s+[\w.`\"]+\s+doesn't exist"
    r"|(?:relation|schema)\s+\"[^\"]*\"\s+does not exist",
    re.IGNORECASE,
)

DATABASE_NOT_FOUND = {"message": "404 Clickhouse Database Not Found"}

# Cube cannot reach its own database: a connection refused, reset or timed out, a pool timeout
# (Cube 0.33: 'connect ECONNREFUSED 10.0.0.5:5432'; 1.x: 'Error: ResourceRequest timed out (postgres#default)')
_DATABASE_DOWN = re.compile(
    r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN"
    r"|ResourceRequest timed out|Connection terminated unexpectedly|timeout expired|the database system is",
    re.IGNORECASE,
)
DATABASE_UNAVAILABLE = "Cube's database is unavailable"
#: seconds a caller is asked to wait when Cube's database does not answer
DATABASE_RETRY_AFTER = "5"


def database_down(message: str) -> bool:
    """Whether Cube's error says it cannot reach its own database (not the caller's fault: a 503)."""
    return _DATABASE_DOWN.search(message) is not None


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


#: Cube 1.x's error kinds (``{"type": "UserError", "error": ...}``), kept for Cube's JavaScript client
_ERROR_TYPES = frozenset({"UserError"})


def error_type(body: Any) -> str | None:
    """Cube 1.x's ``type`` of an error answer, when it is one of the kinds its client knows."""
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if kind in _ERROR_TYPES else None


def map_cube_error(message: str, kind: str | None = None) -> tuple[int, dict[str, str]]:
    """The caller's status and body for a Cube ``error`` (never its ``stack``); a database that does not answer
    is 503 with a message of ours (Cube's names internal addresses). Cube 1.x's ``type`` is kept."""
    if database_down(message):
        return 503, {"message": DATABASE_UNAVAILABLE, "error": DATABASE_UNAVAILABLE}
    if _MISSING_DATABASE.search(message):
        return 404, dict(DATABASE_NOT_FOUND)
    body = {"message": message, "error": message}
    if kind is not None:
        body["type"] = kind
    return 400, body
