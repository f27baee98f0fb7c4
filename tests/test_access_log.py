"""The access log and the log lines: one line per request, no tokens, the redaction guard."""

import asyncio
import json
import logging
import re

import orjson
import pytest

from proxy.runtime.logs import JsonFormatter, TextFormatter, redact, setup_logging
from tests.conftest import QUERY, REPORTER

LOAD = "/api/v4/projects/1/product_analytics/request/load"


@pytest.mark.handed_over
async def test_one_access_log_line_per_request_without_tokens(client, cube, access_lines, capsys):
    await client.post(
        LOAD + "?private_token=glpat-reporter-0000000001", json={"query": QUERY}, headers={"X-Request-Id": "trace-1"}
    )
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    lines = access_lines()
    assert len(lines) == 3
    first = lines[0]
    assert first["level"] == "INFO"
    assert first["message"] == "POST /api/v4/projects/{project}/product_analytics/request/load 200"
    assert first["event"] == "request"
    assert first["request_id"] == "trace-1-span-1"
    assert first["method"] == "POST"
    assert first["project"] == 1
    assert first["route"] == "/api/v4/projects/{project}/product_analytics/request/load"
    assert first["status"] == 200
    assert first["duration_ms"] >= 0
    assert first["aborted"] is False
    assert [line["cache"] for line in lines] == ["miss", "miss", "hit"]
    assert "glpat" not in orjson.dumps(lines).decode()


@pytest.mark.parametrize("prefix", ["/api/v4", ""])
async def test_the_access_line_of_a_plain_load_and_of_a_refused_one(client, cube, access_lines, serving, prefix):
    """The fields of the line each front door writes for the calls the lane serves (a plain load, a 401)."""
    path = f"{prefix}/projects/1/product_analytics/request/load"
    served = await client.post(path, json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "abc"})
    refused = await client.post(path, json={"query": QUERY})
    assert (served.status, refused.status) == (200, 401)
    ok, no = access_lines()
    route = f"{prefix}/projects/{{project}}/product_analytics/request/load"
    assert ok["message"] == f"POST {route} 200"
    assert (ok["route"], ok["method"], ok["status"], ok["project"], ok["cache"]) == (route, "POST", 200, 1, "miss")
    assert ok["request_id"] == served.headers["X-Request-Id"] == "abc-span-1"
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= 0 and ok["aborted"] is False
    assert (no["route"], no["status"], no["project"], no["cache"]) == (route, 401, None, None)
    assert no["request_id"] == refused.headers["X-Request-Id"]


@pytest.mark.handed_over
async def test_no_access_lines_above_info(client, cube, capsys, caplog):
    caplog.set_level(logging.WARNING, logger="proxy.access")
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    assert "proxy.access" not in capsys.readouterr().err


def test_access_lines_in_text_form_and_through_the_redaction_guard():
    import io

    from proxy.pipeline.access_log import AccessLog

    stream = io.StringIO()
    AccessLog("text", lambda: stream).write("GET /x?private_token=secret 200", {"status": 200})
    AccessLog("json", lambda: stream).write("GET /y 200", {"note": "Authorization: Bearer secret"})
    text, json_line = stream.getvalue().splitlines()
    assert text.endswith(" INFO proxy.access GET /x?private_token=[REDACTED] 200")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text.split(" ")[0])  # UTC, ms, zone
    entry = json.loads(json_line)
    assert entry["note"] == "Authorization: [REDACTED]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_redaction_guard():
    assert "secret" not in redact("GET /x?private_token=secret&a=1")
    assert "secret" not in redact("PRIVATE-TOKEN: secret")
    assert "secret" not in redact("Authorization: Bearer secret")
    assert "secret" not in redact('{"q":"a","h":"authoRIZATION=secret"}')
    assert "secret" not in redact("Author\u0131zation: secret")  # the dotless i, which re folds to i
    assert "secret" not in redact("job_to\u212aen=secret")  # the Kelvin sign, which re folds to k
    assert redact('{"route":"/x","status":200}') == '{"route":"/x","status":200}'
    # every credential form, any case and spacing: headers, query strings, cookies, CSRF tokens, bare tokens
    for line in [
        "PRIVATE-TOKEN : secret",
        "private-token:secret",
        "JOB-TOKEN: secret",
        "b'job-token :\\tsecret\\x01'",
        "Cookie: theme=dark; _gitlab_session=secret; other=secret",
        "b'Cookie: _gitlab_session=secret\\x01'",
        "X-CSRF-Token: secret",
        "csrf_token=secret",
        "_gitlab_session=secret",
        "Authorization: Basic secret",
        "the caller sent glpat-secretsecret1234 somewhere",
        "gloas-secretsecret1234",
    ]:
        assert "secret" not in redact(line), line
    record = logging.makeLogRecord({"msg": "token access_token=secret", "levelname": "INFO", "name": "x"})
    assert "secret" not in TextFormatter("%(message)s").format(record)
    try:
        raise ValueError("private_token=secret")
    except ValueError:
        import sys as _sys

        record = logging.makeLogRecord({"msg": "boom", "exc_info": _sys.exc_info(), "levelname": "ERROR"})
    assert "secret" not in JsonFormatter().format(record)


def test_log_lines_carry_each_record_s_own_time_in_utc_to_the_millisecond():
    formatter, text = JsonFormatter(), TextFormatter("%(asctime)s %(message)s")
    times, texts = [], []
    for created in (1000.2, 1000.9, 1001.0, 1764619801.5):
        record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "x", "created": created})
        times.append(orjson.loads(formatter.format(record))["time"])
        texts.append(text.format(record).split(" ")[0])
    expected = [
        "1970-01-01T00:16:40.200Z",
        "1970-01-01T00:16:40.900Z",
        "1970-01-01T00:16:41.000Z",
        "2025-12-01T20:10:01.500Z",
    ]
    assert times == texts == expected


def test_setup_logging_installs_one_handler():
    setup_logging("json", "debug")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("aiohttp.access").disabled
    setup_logging("text", "INFO")
    assert isinstance(root.handlers[0].formatter, TextFormatter)


async def test_a_user_agent_that_is_not_utf8_is_logged_and_answered(client, cube, access_lines):
    """aiohttp keeps header bytes that are not UTF-8 as lone surrogates, which no JSON line can hold: not a 500."""
    body = b'{"query":{"measures":["TrackedEvents.count"]}}'
    data = (
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n".encode()
        + b"User-Agent: agent\x80\xff\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    [line] = [entry for entry in access_lines() if entry["route"] and entry["route"].endswith("/load")]
    assert line["status"] == 200 and line["user_agent"].startswith("agent")
