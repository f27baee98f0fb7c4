"""A browser's requests as GitLab's dashboards make them: the session cookie, the CSRF token, a load."""

from __future__ import annotations

from tests.conftest import QUERY
from tests.fakes.gitlab import SESSION_COOKIE, FakeGitLab
from tests.support.wire import LOAD_OF

ALICE, GARY, MO = 1, 2, 4  # reporter, guest and maintainer of project 1 (tests/fakes/gitlab.py)


def browser(gitlab: FakeGitLab, session: str, csrf: str | None = None) -> dict[str, str]:
    """The headers of a dashboard's POST: the page's masked CSRF token for ``session`` unless another is given."""
    return {**BROWSER, **cookie(session), "X-CSRF-Token": csrf if csrf is not None else gitlab.csrf_token(session)}


async def post_load(client, headers, project=1, body=None):
    return await client.post(LOAD_OF.format(project), json=body or {"query": QUERY}, headers=headers)


#: what GitLab's dashboards send besides the session (cube_analytics.js's HttpTransport, no token)
BROWSER = {"Authorization": "undefined", "X-Requested-With": "XMLHttpRequest"}


def cookie(session: str, *others: str) -> dict[str, str]:
    return {"Cookie": "; ".join([*others, f"{SESSION_COOKIE}={session}"])}
