"""Instructions per call of each step of a pass-through request, counted: where the proxy's cost goes.

``python -m bench.feature_costs`` runs this module under valgrind's callgrind once per step:
a real ``Pipeline`` (its services opened, GitLab's answers for the benchmark's caller warm,
as in ``make bench``) calls the step ``N`` times; a run calling nothing gives the baseline.
(total - baseline) / N is the step's cost in user-space instructions, comparable with
``python -m bench.instructions``' count of a whole request. Needs valgrind; a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench.procs import ROOT, fake_gitlab
from bench.run import KEY, TOKEN

N = 20_000
BODY = orjson.dumps({"query": {"measures": ["TrackedEvents.count"], "limit": 7}, "queryType": "multi"})
HEAD = (
    b"POST /api/v4/projects/1/product_analytics/request/load HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"PRIVATE-TOKEN: " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nUser-Agent: wrk\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n"
)
#: the steps, in a request's order, and what each is
STEPS = {
    "lane_read": "the lane reads the request (httptools, the route, the headers read)",
    "begin_finish": "Pipeline.begin and finish: request id, clock, client, metrics, the access line (off, as benched)",
    "gate": "Pipeline.gate: the credential from the headers, the caller's rate bucket",
    "authorize": "the authorisation, answered from the remembered grant (a warm caller)",
    "body": "the body parsed, depth-checked and reduced to Cube's payload",
    "sign": "the JWT signed (reused within the same second)",
    "coalesce": "the coalescer's lookup for a call nobody shares",
    "answer_head": "the lane's answer head (status line, type, request id, date, framing)",
    "answer_hit": "the answer cache's hit (its key, the lookup, the headers), when it is on",
}


async def _steps(gitlab_url: str) -> dict[str, Callable[[], Awaitable[Any] | Any]]:
    from proxy.auth.credentials import extract_credential
    from proxy.caching.coalesce import coalesce_key
    from proxy.cube.client import Buffered
    from proxy.lane.answer_head import AnswerHeads
    from proxy.lane.request_head import RequestReader
    from proxy.pipeline.core import Pipeline
    from proxy.pipeline.request_body import parse_body, query_request
    from proxy.settings import settings_from_mapping

    settings = settings_from_mapping(
        {
            "gitlab": {"url": gitlab_url, "cache_ttl": 3600.0},
            "product_analytics": {"cube_api_base_url": "http://127.0.0.1:9", "cube_api_key": KEY, "answer_ttl": 3600.0},
            "limits": {"rate_limit": 0.0},
            "server": {"log_level": "WARNING"},
        },
        {},
    )
    pipeline = Pipeline(settings)
    services = pipeline.services
    stack = _Contexts([services.open_gitlab()])
    await stack.enter()
    headers = {"PRIVATE-TOKEN": TOKEN, "Content-Type": "application/json", "User-Agent": "wrk"}
    credential = extract_credential(headers, {}, pipeline.session_cookie)
    await services.authorizer.authorize(credential, "1", "POST")  # GitLab asked once: the grant is remembered
    tenant = services.tenants.get(1)
    assert tenant is not None
    query = query_request(parse_body(BODY, 10), {})
    reader = RequestReader(1 << 20)
    heads = AnswerHeads()
    answer = Buffered(200, b'{"results":[]}')
    exchange = pipeline.begin("POST", "/api/v4/projects/{project}/product_analytics/request/load", headers, "127.0.0.1")

    async def answered(recorded: Any) -> Any:
        return answer

    await services.cached_queries.answer(exchange, tenant, "load", query, answered)  # the entry a hit finds

    def begin_finish() -> None:
        pipeline.finish(
            pipeline.begin("POST", "/api/v4/projects/{project}/product_analytics/request/load", headers, "127.0.0.1"),
            200,
        )

    async def produce() -> Buffered:
        return answer

    return {
        "nothing": lambda: None,
        "lane_read": lambda: reader.read(HEAD + BODY),
        "begin_finish": begin_finish,
        "gate": lambda: pipeline.gate(exchange, headers, {}),
        "authorize": lambda: services.authorizer.authorize(credential, "1", "POST"),
        "body": lambda: query_request(parse_body(BODY, 10), {}),
        "sign": lambda: services.signer.sign(tenant, int(time.time()), None),
        "coalesce": lambda: services.coalescer.run(coalesce_key(tenant, "load", query.fingerprint), produce),
        "answer_head": lambda: b"".join(
            heads.head(200, b"application/json", exchange.request_id, b"Content-Length: 14\r\n", None, False)
        ),
        "answer_hit": lambda: services.cached_queries.answer(exchange, tenant, "load", query, answered),
    }  # fmt: skip


class _Contexts:
    def __init__(self, contexts: list[Any]) -> None:
        self._contexts = contexts

    async def enter(self) -> None:
        for context in self._contexts:
            await context.__aenter__()


async def _run(step: str, n: int, gitlab_url: str) -> None:
    steps = await _steps(gitlab_url)
    call = steps[step]
    for _ in range(n):
        result = call()
        if asyncio.iscoroutine(result):
            await result


def _count(step: str, n: int, gitlab_url: str, workdir: Path) -> int:
    out = workdir / f"{step}-{n}.out"
    subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "bench.feature_costs", "--inside", step, str(n), gitlab_url,
        ],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", nargs=3, metavar=("STEP", "N", "GITLAB_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        step, n, gitlab_url = args.inside
        asyncio.run(_run(step, int(n), gitlab_url))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pa-proxy-features-") as tmp:
        workdir = Path(tmp)
        gitlab, gitlab_url = fake_gitlab(workdir)
        gitlab.start()
        try:
            baseline = _count("nothing", 0, gitlab_url, workdir)
            loop = (_count("nothing", N, gitlab_url, workdir) - baseline) / N
            print("| step | instructions per call | what it is |\n|---|---|---|")
            for step, what in STEPS.items():
                cost = (_count(step, N, gitlab_url, workdir) - baseline) / N - loop
                print(f"| {step} | {cost:,.0f} | {what} |", flush=True)
        finally:
            gitlab.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
