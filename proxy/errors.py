"""The one exception views and helpers raise to answer a caller with an error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answer: HTTP status, JSON body and extra headers."""

    def __init__(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})


class CallerStalled(TimeoutError):
    """The caller read nothing of an answer being written for ``[server] write_timeout`` seconds."""


#: the body of a 500: what failed is in the log, never in the answer
INTERNAL_ERROR: Mapping[str, str] = {"message": "500 Internal Server Error"}


def unauthorized() -> ApiError:
    return ApiError(401, {"message": "401 Unauthorized"})


def bad_request(message: str, status: int = 400) -> ApiError:
    return ApiError(status, {"message": message, "error": message})


def not_enabled() -> ApiError:
    return ApiError(404, {"message": "Product Analytics is not enabled"})


def project_not_found() -> ApiError:
    return ApiError(404, {"message": "404 Project Not Found"})


def access_denied() -> ApiError:
    return ApiError(401, {"message": "Access Denied"})


def insufficient_scope(needed: str) -> ApiError:
    return ApiError(
        403,
        {
            "error": "insufficient_scope",
            "message": (
                "The request requires higher privileges than provided by the access token:"
                f" it needs the '{needed}' scope."
            ),
        },
    )


def renewals_limited(wait: int, per_second: float) -> ApiError:
    """429: the project's calls with ``renewQuery`` (each makes Cube run the query again) are over their rate."""
    return ApiError(
        429,
        {
            "message": f"Too many renewQuery calls for this project (at most {per_second:g} a second);"
            f" retry after {wait} s, or ask without renewQuery"
        },
        {"Retry-After": str(wait)},
    )


def rate_limited(wait: int) -> ApiError:
    """429: the caller's bucket (this process's, or the fleet's) is empty for ``wait`` seconds."""
    return ApiError(
        429, {"message": f"Too many requests from this caller; retry after {wait} s"}, {"Retry-After": str(wait)}
    )


def unavailable(message: str, retry_after: int | str = 1, body: dict[str, Any] | None = None) -> ApiError:
    """503 with ``Retry-After``: not the caller's fault, and worth asking again after ``retry_after`` seconds. The one
    way every such answer is built (``body``: a body of its own, when the answer carries more than a message)."""
    return ApiError(503, body if body is not None else {"message": message}, {"Retry-After": str(retry_after)})


def gitlab_unavailable(retry_after: int) -> ApiError:
    return unavailable("GitLab is unavailable", retry_after)
