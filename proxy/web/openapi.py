"""The API's machine-readable description (OpenAPI 3.1), served at ``/-/openapi.json``.

One source: this module builds the document; ``docs/openapi.yaml`` is written from it
(``python -m proxy.web.openapi``) and a test keeps the two equal, checks the document with
openapi-spec-validator, and compares its paths and methods with the app's routes.
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.pipeline.routes import ANALYTICS_ROOT, DRY_RUN, LOAD, META, PREFIXES
from proxy.web.openapi_schemas import schemas

OPENAPI_PATH = "/-/openapi.json"


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def _errors(*extra: str) -> dict[str, Any]:
    """The error answers every analytics route can give, and ``extra`` ones (status codes as strings)."""
    every = {
        "401": _error("No valid credential (missing, malformed, revoked or expired), or no access to the project."),
        "403": _error("The token lacks the scope the method needs (`read_api` for GET, `api` otherwise)."),
        "404": _error(
            "Not a project the caller can see, product analytics not enabled for it, or its tenant has no data yet."
        ),
        "429": _error("The caller's rate limit is spent; retry after `Retry-After` seconds.", retry=True),
        "502": _error("Cube did not answer as Cube does (refused, reset, not JSON, too large)."),
        "503": _error(
            "GitLab or Cube's database unavailable, the proxy overloaded, or a limit on work in flight"
            " reached; retry after `Retry-After` seconds.",
            retry=True,
        ),
        "504": _error("Cube did not answer within the proxy's read timeout."),
    }
    more = {
        "400": _error(
            "Bad input (the message says what to fix), or Cube's own error for the query (under both"
            " `message` and `error`)."
        ),
        "408": _error("The request body did not arrive within the body timeout."),
        "413": _error("The request body is larger than the limit."),
    }
    return {**{code: more[code] for code in extra}, **every}


def _query_route(endpoint: str, summary: str, answer: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": f"{endpoint.replace('-', '_')}",
            "tags": ["analytics"],
            "parameters": [
                {"$ref": "#/components/parameters/Project"},
                {"$ref": "#/components/parameters/RequestId"},
                *_ANSWER_PARAMETERS,
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QueryRequest"}}},
            },
            "responses": {
                "200": {
                    "description": f'{answer}, or `{{"error": "Continue wait"}}` while Cube still works on it'
                    " (ask again).",
                    "headers": {
                        "X-Request-Id": {"$ref": "#/components/headers/RequestId"},
                        "X-Cache": {"$ref": "#/components/headers/Cache"},
                        "Age": {"$ref": "#/components/headers/Age"},
                        **_FORM_HEADERS,
                    },
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": f"#/components/schemas/{answer}"},
                                    {"$ref": "#/components/schemas/ContinueWait"},
                                ]
                            }
                        }
                    },
                },
                "304": _NOT_MODIFIED,
                **_errors("400", "408", "413"),
            },
        }
    }


#: the request headers an answer's form depends on
_ANSWER_PARAMETERS = [
    {"$ref": "#/components/parameters/AcceptEncoding"},
    {"$ref": "#/components/parameters/IfNoneMatch"},
]
#: the headers that say an answer's form
_FORM_HEADERS = {
    "Content-Encoding": {"$ref": "#/components/headers/ContentEncoding"},
    "Vary": {"$ref": "#/components/headers/Vary"},
    "ETag": {"$ref": "#/components/headers/ETag"},
}
_NOT_MODIFIED = {
    "description": "Not modified: the caller's `If-None-Match` names this answer's content (an answer served from"
    " the answer cache, or meta); no body.",
    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}, "Vary": {"$ref": "#/components/headers/Vary"}},
}


def _meta_route() -> dict[str, Any]:
    answer = {
        "description": "The tenant's cubes, measures and dimensions (Cube's `/meta`), or Continue wait.",
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **_FORM_HEADERS},
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/MetaAnswer"},
                        {"$ref": "#/components/schemas/ContinueWait"},
                    ]
                }
            }
        },
    }
    parameters = [
        {"$ref": "#/components/parameters/Project"},
        {"$ref": "#/components/parameters/RequestId"},
        *_ANSWER_PARAMETERS,
    ]
    return {
        "get": {
            "summary": "The project's data model",
            "operationId": "meta",
            "tags": ["analytics"],
            "parameters": parameters,
            "responses": {"200": answer, "304": _NOT_MODIFIED, **_errors("400")},
        },
        "post": {
            "summary": "The project's data model (POST, as GitLab accepts it too)",
            "operationId": "meta_post",
            "tags": ["analytics"],
            "parameters": parameters,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {"200": answer, "304": _NOT_MODIFIED, **_errors("400", "408", "413")},
        },
    }


def _operator(summary: str, content: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["operations"],
            "security": [],
            "responses": {"200": {"description": "OK", "content": content}, **(extra or {})},
        }
    }


def _json(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"application/json": {"schema": schema or {"type": "object"}}}


_NOT_HERE = {"404": {"description": "Not for this caller, or turned off.", "content": _json()}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the proxy serves."""
    paths: dict[str, Any] = {}
    for prefix in PREFIXES:
        root = f"{prefix}{ANALYTICS_ROOT}"
        paths[f"{root}/{LOAD}"] = _query_route(LOAD, "Run a Cube query for the project", "LoadAnswer")
        paths[f"{root}/{DRY_RUN}"] = _query_route(DRY_RUN, "Check and normalise a Cube query", "DryRunAnswer")
        paths[f"{root}/{META}"] = _meta_route()
    if "" in PREFIXES:  # the same routes without /api/v4, as a sidecar behind GitLab's path rewriting
        for path, item in paths.items():
            if not path.startswith("/api/v4"):
                for operation in item.values():
                    operation["operationId"] = operation["operationId"] + "_bare"
    paths["/-/liveness"] = _operator("200 while the process serves", _json())
    paths["/-/readiness"] = _operator(
        "200 while the proxy can serve: how many Cubes are up and down (none named)",
        _json(),
        {"503": {"description": "Shutting down, every Cube down, or (ready_check) GitLab down.", "content": _json()}},
    )
    paths["/-/metrics"] = _operator(
        "Prometheus' text format, every worker added up", {"text/plain": {"schema": {"type": "string"}}}, _NOT_HERE
    )
    paths["/-/status"] = _operator(
        "The status page (HTML, or JSON with `Accept: application/json`): metrics port, loopback, or administrators",
        {"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}},
        _NOT_HERE,
    )
    paths["/-/runtime"] = _operator("This worker's tasks, connections and live objects: loopback callers", _json(),
                                    _NOT_HERE)  # fmt: skip
    paths["/-/explorer"] = _operator(
        "The query explorer page", {"text/html": {"schema": {"type": "string"}}}, _NOT_HERE
    )
    paths["/-/explorer/static/{name}"] = {
        "get": {
            "summary": "The explorer's own scripts and styles",
            "tags": ["operations"],
            "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file"}, "404": {"description": "No such file"}},
        }
    }
    paths[OPENAPI_PATH] = _operator("This document", _json())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "product-analytics-proxy",
            "version": __version__,
            "summary": "GitLab's product analytics API (load, dry-run, meta) in front of Cube",
            "description": (
                "The product analytics API as GitLab serves it, as a proxy in front of Cube: each call is "
                "authorised with the caller's GitLab credential and role, signed for the project's Cube tenant "
                "(`gitlab_project_<id>`), and forwarded to Cube's `/cubejs-api/v1`. Answers are Cube's, errors "
                "are JSON with a `message` (and `error` where Cube's client reads it). A browser on GitLab's "
                "origin may use GitLab's session cookie; a non-GET call then needs GitLab's `X-CSRF-Token`."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "analytics", "description": "The product analytics API (spec sections 1 to 5)."},
            {"name": "operations", "description": "Probes, metrics and pages for operators."},
        ],
        "security": [
            {"PrivateToken": []},
            {"Bearer": []},
            {"PrivateTokenQuery": []},
            {"AccessTokenQuery": []},
            {"Session": []},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "PrivateToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "PRIVATE-TOKEN",
                    "description": "A personal, project or group access token (`api` or `read_api`).",
                },
                "Bearer": {"type": "http", "scheme": "bearer", "description": "An access token or OAuth token."},
                "PrivateTokenQuery": {"type": "apiKey", "in": "query", "name": "private_token"},
                "AccessTokenQuery": {"type": "apiKey", "in": "query", "name": "access_token"},
                "Session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "_gitlab_session",
                    "description": "GitLab's browser session; a non-GET call also sends the page's CSRF token"
                    " as `X-CSRF-Token`, which GitLab confirms.",
                },
            },
            "parameters": {
                "Project": {
                    "name": "project",
                    "in": "path",
                    "required": True,
                    "description": "The project's numeric id, or its URL-encoded full path (`group%2Fproject`).",
                    "schema": {"type": "string", "minLength": 1},
                },
                "RequestId": {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": False,
                    "description": "Kept when well-formed (a `-span-1` suffix added), else replaced; sent to Cube.",
                    "schema": {"type": "string"},
                },
                "AcceptEncoding": {
                    "name": "Accept-Encoding",
                    "in": "header",
                    "required": False,
                    "description": "`gzip` (q-values honoured): answers of 1 KiB or more come gzipped, streams too.",
                    "schema": {"type": "string"},
                },
                "IfNoneMatch": {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "description": "An `ETag` the caller has: a 304 without a body when it names the answer's content.",
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before asking again.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "RequestId": {"description": "The request's id, as Cube saw it.", "schema": {"type": "string"}},
                "Cache": {
                    "description": "The answer cache's say, when it is on for the project (`answer_ttl`): from the"
                    " cache (`HIT`), from it while one refresh runs (`STALE`), from Cube (`MISS`), or from Cube"
                    " because the call cannot share an answer (`BYPASS`: `include_token`, `renewQuery`).",
                    "schema": {"type": "string", "enum": ["HIT", "STALE", "MISS", "BYPASS"]},
                },
                "Age": {
                    "description": "Seconds since Cube gave a cached answer (with `X-Cache: HIT` or `STALE`).",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "ContentEncoding": {
                    "description": "`gzip` when the answer is gzipped (the caller takes gzip; 1 KiB or more).",
                    "schema": {"type": "string", "enum": ["gzip"]},
                },
                "Vary": {
                    "description": "`Accept-Encoding`: an answer's form depends on it.",
                    "schema": {"type": "string"},
                },
                "ETag": {
                    "description": "A strong validator of a kept answer's content (answer cache, meta): one per coding"
                    ' (`"<hash>"`, `"<hash>-gzip"`).',
                    "schema": {"type": "string"},
                },
            },
            "schemas": schemas(),
        },
    }


async def openapi_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI], headers={"Cache-Control": "public, max-age=300"})


OPENAPI = web.AppKey("openapi", dict)


def setup_openapi(app: web.Application) -> None:
    """``/-/openapi.json``: the document, built once."""
    app[OPENAPI] = document()
    app.router.add_get(OPENAPI_PATH, openapi_view, name="openapi")


def as_yaml() -> str:
    """The document as ``docs/openapi.yaml`` holds it (PyYAML, a development tool: never needed to serve it)."""
    import yaml  # type: ignore[import-untyped]

    header = "# The API's OpenAPI 3.1 description, written by `python -m proxy.web.openapi > docs/openapi.yaml`.\n"
    return header + str(yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=110))


if __name__ == "__main__":
    sys.stdout.write(as_yaml())
