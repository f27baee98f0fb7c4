"""Spec section 5, "Streaming": chunk by chunk, bounded memory, never a truncated answer that looks whole."""

import asyncio
import gc
import socket
import tracemalloc

import aiohttp
import orjson
import pytest

from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER
from tests.fakes.cube import chunked, generated, held_until
from tests.support.metrics import scrape, value
from tests.support.waiting import until
from tests.support.wire import HEAD, TAIL

LOAD = "/api/v4/projects/1/product_analytics/request/load"


@pytest.fixture
def stream_settings(make_settings):
    # bodies over 64 bytes stream; a small limit keeps the fakes' answers small
    return make_settings(cube={"buffer_limit": 64, "continue_wait_budget": 0.0})


async def test_caller_reads_the_first_chunk_while_cube_is_still_sending(stream_settings, make_client, cube):
    rest_may_come = asyncio.Event()
    cube.behaviour = chunked([HEAD + b" " * 100, TAIL], between=rest_may_come)
    client = await make_client(stream_settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200
    assert resp.headers["X-Request-Id"].endswith("-span-1")
    first = await resp.content.readexactly(len(HEAD))
    assert first == HEAD
    assert not rest_may_come.is_set()  # Cube has not sent the rest: the caller got the head anyway
    rest_may_come.set()
    body = first + await resp.read()
    assert orjson.loads(body)["results"][0]["data"] == [{"TrackedEvents.count": "1"}]


async def test_an_answer_without_a_length_is_streamed_in_chunks(stream_settings, make_client, cube):
    """Cube may answer without Content-Length: the caller gets chunked framing and every byte, in order."""
    middle = b'{"TrackedEvents.count":"2"},' * 200
    cube.behaviour = chunked([HEAD + b" " * 100, middle, TAIL], length=False)
    client = await make_client(stream_settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers
    body = await resp.read()
    assert body == HEAD + b" " * 100 + middle + TAIL
    assert len(orjson.loads(body)["results"][0]["data"]) == 201


async def test_upstream_dying_mid_body_aborts_the_callers_answer(stream_settings, make_client, cube, access_lines):
    cube.behaviour = chunked([HEAD + b" " * 100, b'{"a":"' + b"x" * 5000, TAIL], die_after=2)
    client = await make_client(stream_settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await until(access_lines)
    (line,) = access_lines()
    assert line["aborted"] is True  # the log says the 200 never completed


@pytest.mark.parametrize("coding", ["gzip", "identity"])
async def test_memory_does_not_grow_with_the_body(stream_settings, make_client, cube, coding):
    """Plain and gzipped as it goes (zlib's window, whatever the length)."""
    size = 48 * 1024 * 1024
    cube.behaviour = generated(size)
    client = await make_client(stream_settings)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        headers = {**REPORTER, "Accept-Encoding": coding}
        resp = await client.post(LOAD, json={"query": QUERY}, headers=headers)
        received = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            received += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.status == 200 and resp.headers.get("Content-Encoding", "identity") == coding
    assert received >= size - 64 * 1024
    # proxy, fake Cube and client together hold a few MB at most, not the 48 MB that passed through
    assert peak - baseline < 8 * 1024 * 1024, peak - baseline


async def fanned_out(client, cube, callers, middle=b" " * 5000, die_after=None):
    """``callers`` identical loads that all join one flight; Cube holds the rest of its body until told."""
    hold, rest_may_come = asyncio.Event(), asyncio.Event()
    cube.behaviour = held_until(
        hold, chunked([HEAD + b" " * 100, middle, TAIL], between=rest_may_come, die_after=die_after)
    )
    coalescer = client.app[PIPELINE].services.coalescer
    tasks = [asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER)) for _ in range(callers)]
    await until(lambda: coalescer.waiting() == callers)
    hold.set()
    return await asyncio.gather(*tasks), rest_may_come


async def test_identical_streams_fan_out_from_one_upstream_call(stream_settings, make_client, cube):
    client = await make_client(stream_settings)
    hold = asyncio.Event()
    cube.behaviour = held_until(hold, chunked([HEAD + b" " * 100, b" " * 5000, TAIL]))
    waiting = [asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER)) for _ in range(4)]
    await until(lambda: client.app[PIPELINE].services.coalescer.waiting() == 4)
    # the callers waiting on one coalesced call are a gauge
    assert value(await scrape(client), "pa_proxy_coalesced_waiting_callers") == 4
    hold.set()
    for resp in await asyncio.gather(*waiting):
        assert resp.status == 200 and len(await resp.read()) == len(HEAD) + 5100 + len(TAIL)
    assert value(await scrape(client), "pa_proxy_coalesced_waiting_callers") == 0
    cube.calls.clear()
    responses, rest_may_come = await fanned_out(client, cube, 5)
    heads = [await r.content.readexactly(len(HEAD)) for r in responses]
    assert heads == [HEAD] * 5  # every caller has the head while Cube still holds the rest
    rest_may_come.set()
    bodies = [h + await r.read() for h, r in zip(heads, responses, strict=True)]
    assert [r.status for r in responses] == [200] * 5
    assert all(orjson.loads(b)["results"][0]["data"] == [{"TrackedEvents.count": "1"}] for b in bodies)
    assert len(cube.calls_to("load")) == 1


async def test_a_fanned_out_stream_that_breaks_aborts_every_caller(stream_settings, make_client, cube):
    responses, rest_may_come = await fanned_out(await make_client(stream_settings), cube, 3, die_after=1)
    rest_may_come.set()
    for resp in responses:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_one_fanned_out_caller_leaving_does_not_stop_the_others(stream_settings, make_client, cube):
    responses, rest_may_come = await fanned_out(await make_client(stream_settings), cube, 3, middle=b" " * 300_000)
    leaver, *stayers = responses
    assert await leaver.content.readexactly(len(HEAD)) == HEAD
    leaver.close()
    rest_may_come.set()
    for resp in stayers:
        assert orjson.loads(await resp.read())["results"][0]["data"] == [{"TrackedEvents.count": "1"}]


async def test_caller_leaving_mid_stream_frees_the_tenant_slot(make_settings, make_client, cube):
    settings = make_settings(cube={"buffer_limit": 64, "max_concurrent_per_tenant": 1, "queue_timeout": 5.0})
    never = asyncio.Event()
    cube.behaviour = chunked([HEAD + b" " * 100, TAIL], between=never)
    client = await make_client(settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert await resp.content.readexactly(len(HEAD)) == HEAD
    resp.close()  # the caller goes away while Cube still holds the rest
    cube.behaviour = None
    resp = await client.post(LOAD, json={"query": {"measures": ["TrackedEvents.count"], "limit": 1}}, headers=REPORTER)
    assert resp.status == 200
    never.set()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_fault_after_a_streamed_200_cuts_the_connection_off(
    stream_settings, make_client, cube, monkeypatch, caplog, length
):
    """A bug that strikes once the 200 is out: the caller's connection is aborted, never a 500 inside the 200."""
    from proxy.cube.client import Streamed

    real_chunks = Streamed.chunks

    async def first_chunk_then_a_bug(self):  # stands in for any unexpected error mid-stream
        async for chunk in real_chunks(self):
            yield chunk
            raise RuntimeError("a bug")

    monkeypatch.setattr(Streamed, "chunks", first_chunk_then_a_bug)
    cube.behaviour = chunked([HEAD + b" " * 100, TAIL], between=asyncio.Event(), length=length)  # the rest never comes
    client = await make_client(stream_settings)
    body = orjson.dumps({"query": QUERY})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            f"POST {LOAD} HTTP/1.1\r\nHost: proxy\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes the connection
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 500" not in received and b"Internal Server Error" not in received
    assert TAIL not in received and not received.endswith(b"0\r\n\r\n")  # cut short, never looking whole
    assert any(r.getMessage() == "unhandled error" and r.exc_info for r in caplog.records)


async def stalled_caller(client, query):
    """A caller that sends a load and then reads nothing, with a small receive buffer (so the proxy feels it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.server.host, client.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()
    body = orjson.dumps({"query": query})
    writer.write(
        f"POST {LOAD} HTTP/1.1\r\nHost: proxy\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return reader, writer


async def received_until_closed(reader, writer):
    writer.transport.resume_reading()
    total = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            total += len(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    return total


async def test_a_caller_that_reads_nothing_is_cut_off_and_frees_its_tenant_slot(make_settings, make_client, cube):
    """write_timeout: a caller holding a large answer unread loses it, and its slot goes to the next caller."""
    size = 32 * 1024 * 1024
    cube.behaviour = generated(size)
    settings = make_settings(
        server={"write_timeout": 0.5}, cube={"buffer_limit": 64, "max_concurrent_per_tenant": 1, "queue_timeout": 5.0}
    )
    client = await make_client(settings)
    reader, writer = await stalled_caller(client, QUERY)
    await until(lambda: len(cube.calls) == 1)
    # the project's one slot is the stalled caller's: this one waits for it (another query: no sharing)
    resp = await client.post(LOAD, json={"query": {**QUERY, "limit": 10}}, headers=REPORTER)
    assert resp.status == 200
    assert len(await resp.read()) > size - 64 * 1024
    assert await received_until_closed(reader, writer) < size  # the stalled caller was cut off


async def test_a_shared_stream_drops_a_caller_that_falls_behind_instead_of_stalling_the_others(
    make_settings, make_client, cube
):
    """Two callers share one 32 MB answer; one reads nothing: the other still gets all of it, at once."""
    size = 32 * 1024 * 1024
    go = asyncio.Event()
    cube.behaviour = held_until(go, generated(size))
    client = await make_client(make_settings(server={"write_timeout": 60.0}, cube={"buffer_limit": 64}))
    reader, writer = await stalled_caller(client, QUERY)
    await until(lambda: len(cube.calls) == 1)
    reading = asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER))
    coalescer = client.app[PIPELINE].services.coalescer
    await until(lambda: coalescer.waiting() == 2)
    go.set()
    resp = await asyncio.wait_for(reading, 10)
    body = await asyncio.wait_for(resp.read(), 20)  # not held for the stalled caller's write_timeout (60 s)
    assert resp.status == 200 and len(body) > size - 64 * 1024
    assert len(cube.calls) == 1  # it was one shared call
    assert await received_until_closed(reader, writer) < size  # the one that fell behind was cut off


@pytest.mark.parametrize("whitespace", [512 * 1024, 20 * 1024 * 1024], ids=["half-a-mib", "20-mib"])
async def test_leading_whitespace_costs_linear_work_and_is_bounded(stream_settings, make_client, cube, whitespace):
    """Cube's body in 16 KiB pieces after a run of whitespace: read in linear time (it was quadratic:
    the prefix grew by concatenation), passed on when short, a 502 past 1 MiB (Cube writes none)."""
    piece = b" " * 16384
    cube.behaviour = chunked([piece] * (whitespace // len(piece)) + [HEAD, TAIL], length=False)
    client = await make_client(stream_settings)
    resp = await asyncio.wait_for(client.post(LOAD, json={"query": QUERY}, headers=REPORTER), 10)
    body = await asyncio.wait_for(resp.read(), 10)
    if whitespace < 1024 * 1024:
        assert resp.status == 200 and body.strip() == HEAD + TAIL
    else:
        assert resp.status == 502 and b"whitespace" in body


async def test_while_draining_a_streamed_answer_says_connection_close_too(stream_settings, make_client, cube):
    """The draining rule holds for streamed answers on both doors (aiohttp's streams are prepared by the view)."""
    size = 1024 * 1024
    cube.behaviour = generated(size)
    client = await make_client(stream_settings)
    kept = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert kept.headers.get("Connection") != "close"
    assert len(await kept.read()) > size - 64 * 1024
    client.server.app[PIPELINE].drain()
    resp = await client.post(LOAD, json={"query": {**QUERY, "limit": 10}}, headers=REPORTER)
    assert resp.status == 200 and resp.headers["Connection"] == "close"
    assert resp.headers["X-Request-Id"].endswith("-span-1")
    assert len(await resp.read()) > size - 64 * 1024
