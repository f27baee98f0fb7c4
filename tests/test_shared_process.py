"""A fleet's worth of processes (``--workers 4``) on one real Redis: a dashboard costs GitLab and Cube once."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import QUERY, SIGNING_KEY
from tests.support.processes import proxy_process
from tests.support.redis_server import RedisServer

LOAD = "/api/v4/projects/1/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"
NEW_TOKEN = {"PRIVATE-TOKEN": "glpat-dev-00000000000006"}  # not seen before by any process


async def burst(url: str, n: int, method: str = "POST", **kw) -> list[int]:
    """``n`` callers at once, each on its own connection (so the kernel spreads them over the workers)."""

    async def one(i: int) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            body = {"query": {**QUERY, "limit": i + 1}} if method == "POST" else None
            async with session.request(method, url, json=body, **kw) as resp:
                await resp.read()
                return resp.status

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_four_workers_on_redis_ask_gitlab_once_per_question_and_cube_once_for_meta(
    cube, gitlab, gitlab_url, cube_url, tmp_path
):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    # a generous Redis timeout: this test is about sharing, and a loaded test machine can be slow to connect
    section = f'workers = 4\n[redis]\nurl = "{redis.url}"\nsigning_key = "{SIGNING_KEY}"\ntimeout = 2.0\n'
    try:
        async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=section) as (proc, port):
            base = f"http://127.0.0.1:{port}"
            statuses = await burst(f"{base}{LOAD}", 20, headers=NEW_TOKEN)  # a 20-panel dashboard
            assert statuses == [200] * 20
            for endpoint in ("/api/v4/user", "/api/v4/personal_access_tokens/self", "/api/v4/projects/{id}"):
                assert gitlab.calls[endpoint] == 1, (endpoint, dict(gitlab.calls))
            assert gitlab.calls["/api/v4/projects/{id}/members/all/{user_id}"] == 1
            meta = await burst(f"{base}{META}", 20, method="GET", headers=NEW_TOKEN)
            assert meta == [200] * 20 and len(cube.calls_to("meta")) == 1
            # Redis stops mid-run: every request is still answered (each process asks for itself)
            redis.stop()
            again = await burst(f"{base}{LOAD}", 12, headers={"PRIVATE-TOKEN": "glpat-maint-000000000004"})
            assert again == [200] * 12
            proc.send_signal(15)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        redis.stop()


async def test_the_rate_limit_holds_across_four_workers(cube, gitlab_url, cube_url, tmp_path):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    section = (
        f'workers = 4\n[redis]\nurl = "{redis.url}"\nsigning_key = "{SIGNING_KEY}"\ntimeout = 2.0\n'
        "[limits]\nrate_limit = 0.1\nrate_limit_burst = 5\n"
    )
    try:
        async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=section) as (proc, port):
            statuses = await burst(f"http://127.0.0.1:{port}{LOAD}", 12, headers=NEW_TOKEN)
            # each worker's own bucket would let 5 through (up to 20 in all); the fleet's lets 5
            assert sorted(statuses) == [200] * 5 + [429] * 7
            proc.send_signal(15)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        redis.stop()
