"""Large zero-fills, off the event loop and fair between tenants: a process of their own and a turn per tenant.

- ``FillProcess``: one spawned process (started on first use) parses, fills and serialises
  answers too large for the loop. ``close(grace)`` lets a fill under way finish within
  ``grace`` seconds, then terminates the process: a worker never waits on it at exit.
- ``FillQueue``: a tenant's fills queue behind its own, not everyone's (one turn per tenant,
  first come first served within it), so the process takes the tenants' fills in turn. The
  per-tenant table holds one entry per tenant with a fill waiting or under way.

Memory for fills, per worker: the raw answers waiting here are held to the Cube client's
whole-answers budget (``[cube] whole_answers_bytes``: taken before an answer's first byte
is read, given back once it is filled), and the fill process works on one at a time (its
parse is some times the answer's size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import AsyncIterator
from multiprocessing.pool import Pool
from typing import Any

import orjson

from proxy.cube.zerofill import FillPlan, zero_fill
from proxy.errors import ApiError

log = logging.getLogger(__name__)


def filled(plan: FillPlan, raw: bytes) -> bytes:
    """Cube's answer zero-filled, as bytes (what the fill process runs)."""
    return orjson.dumps(zero_fill(plan, orjson.loads(raw)))


class FillProcess:
    """One spawned process for large fills, started on first use, stopped within a deadline."""

    def __init__(self) -> None:
        self._pool: Pool | None = None
        #: fills sent and not yet answered (each is failed if the process is ended first)
        self._pending: set[asyncio.Future[bytes]] = set()

    async def run(self, plan: FillPlan, raw: bytes) -> bytes:
        if self._pool is None:
            # spawned: nothing of this process's loop or sockets is copied into it
            self._pool = multiprocessing.get_context("spawn").Pool(1)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def settle(result: Any) -> None:
            loop.call_soon_threadsafe(_settle, done, result)

        self._pending.add(done)
        try:
            self._pool.apply_async(filled, (plan, raw), callback=settle, error_callback=settle)
            return await done
        finally:
            self._pending.discard(done)

    async def close(self, grace: float) -> None:
        """Let a fill under way finish for ``grace`` seconds, then end the process; returns when it is gone."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(pool.join), grace)
        except TimeoutError:
            log.warning("the fill process did not finish within %g s; ending it", grace, extra={"event": "fill_ended"})
            await asyncio.to_thread(_end, pool)
        for done in self._pending:
            _settle(done, ApiError(503, {"message": "The proxy is shutting down; retry"}, {"Retry-After": "1"}))


#: seconds a terminated fill process may take to exit before it is killed
EXIT_SECONDS = 2.0


def _end(pool: Pool) -> None:
    """Terminate the pool, then make sure its process is gone: joined, or killed past ``EXIT_SECONDS``.

    ``Pool.terminate`` races a ``join`` still running in another thread (the grace's), and can
    return with the process alive; the workers are the pool's own list (CPython's ``_pool``).
    """
    workers = list(getattr(pool, "_pool", ()))
    pool.terminate()
    for worker in workers:
        worker.join(EXIT_SECONDS)
        if worker.is_alive():
            worker.kill()
            worker.join(EXIT_SECONDS)


def _settle(done: asyncio.Future[bytes], result: Any) -> None:
    if done.done():
        return  # the caller went away
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


class FillQueue:
    """Fills in the fill process, one turn per tenant."""

    def __init__(self, process: FillProcess) -> None:
        self._process = process
        #: each tenant with a fill waiting or under way: its turn, and how many hold or wait for it
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def fill(self, tenant: str, plan: FillPlan, raw: bytes) -> bytes:
        async with self._turn(tenant):
            return await self._process.run(plan, raw)

    @contextlib.asynccontextmanager
    async def _turn(self, tenant: str) -> AsyncIterator[None]:
        lock, users = self._turns.get(tenant) or self._turns.setdefault(tenant, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[tenant]

    def waiting(self) -> dict[str, int]:
        """Fills waiting or under way, by tenant (for tests and the status page)."""
        return {tenant: users[0] for tenant, (_, users) in self._turns.items()}
