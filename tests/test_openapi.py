"""The API's OpenAPI description: valid OpenAPI 3.1, equal to docs/openapi.yaml, served at /-/openapi.json, and
naming exactly the routes the app serves (methods and paths)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from proxy.web.app import create_app
from proxy.web.openapi import OPENAPI_PATH, document

DOC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def test_the_document_is_valid_openapi_and_docs_holds_it() -> None:
    validate(document())
    assert yaml.safe_load(DOC.read_text()) == document(), "run: python -m proxy.web.openapi > docs/openapi.yaml"


def test_the_document_names_exactly_the_apps_routes(settings) -> None:
    app = create_app(settings)
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp answers HEAD for every GET
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        served.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    described = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert served == described, (served - described, described - served)


@pytest.mark.handed_over  # a GET: aiohttp's
async def test_the_document_is_served(client) -> None:
    resp = await client.get(OPENAPI_PATH)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == document()
    page = await (await client.get("/-/explorer")).text()
    assert 'href="/-/openapi.json"' in page  # the explorer links to it
