"""Large zero-fills, off the event loop and fair between tenants: a process of their own and a turn per tenant.

- ``FillProcess``: one spawned process (started on first use, and again if it dies) parses,
  fills and serialises answers too large for the loop, one at a time, over a pipe.
  ``close(grace)`` lets a fill under way finish within ``grace`` seconds, then ends the
  process: a worker never waits on it at exit. The process and its pipe hold no semaphore (a
  ``multiprocessing.Pool``'s queues do), so a worker killed outright leaves nothing for
  Python's resource tracker to report in plain text on stderr; the fill process ends by itself
  when its worker's end of the pipe closes.
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
import pickle
import signal
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from proxy.cube.zerofill import FillPlan, zero_fill
from proxy.errors import ApiError, unavailable

log = logging.getLogger(__name__)

#: the pickle protocol on the fill process's pipe
PROTOCOL = pickle.HIGHEST_PROTOCOL
#: seconds a fill process may take to exit once told to (its pipe closed, then SIGTERM) before it is killed
EXIT_SECONDS = 2.0


def filled(plan: FillPlan, raw: bytes) -> bytes:
    """Cube's answer zero-filled, as bytes (what the fill process runs)."""
    return orjson.dumps(zero_fill(plan, orjson.loads(raw)))


def serve_fills(pipe: Connection) -> None:
    """The fill process: fill each ``(plan, raw)`` that arrives and send back ``(True, bytes)`` or ``(False,
    error)``, until the pipe closes. Ctrl-C is its worker's to handle (the worker ends this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            plan, raw = _receive(pipe)
        except (EOFError, OSError):
            return  # the worker closed its end, or is gone
        try:
            reply: tuple[bool, Any] = (True, filled(plan, raw))
        except Exception as exc:  # every failure goes back to the caller, as it is
            reply = (False, exc)
        try:
            message = pickle.dumps(reply, PROTOCOL)
        except Exception:  # an error that does not pickle: its text goes back instead
            message = pickle.dumps((False, RuntimeError(repr(reply[1]))), PROTOCOL)
        del plan, raw, reply
        try:
            pipe.send_bytes(message)
        except OSError:
            return
        del message


def _receive(pipe: Connection) -> Any:
    """One message, unpickled from bytes. (``Connection.send``/``recv`` pickle through a ``BytesIO`` and an exported
    view of it, and a failed send that keeps them in a reference cycle makes the collector raise ``BufferError``
    later; plain bytes keep nothing.)"""
    return pickle.loads(pipe.recv_bytes())  # noqa: S301 - from our own fill process or worker only


def _shutting_down() -> ApiError:
    return unavailable("The proxy is shutting down; retry")


def _fill_process_ended() -> ApiError:
    return unavailable("The zero-fill process ended under this answer; retry")


class _ProcessEnded(Exception):
    """The fill process went away under a fill (ended at shutdown, or killed)."""


def _round_trip(pipe: Connection, plan: FillPlan, raw: bytes) -> bytes:
    """One fill, in a thread: send it, wait for its answer (the process works on one at a time)."""
    message = pickle.dumps((plan, raw), PROTOCOL)
    try:
        pipe.send_bytes(message)
        del message
        ok, result = _receive(pipe)
    except (EOFError, OSError):
        raise _ProcessEnded from None
    if ok:
        return bytes(result)
    raise result


class FillProcess:
    """One spawned process for large fills, started on first use, one fill at a time, stopped within a deadline."""

    def __init__(self) -> None:
        self._process: BaseProcess | None = None
        self._pipe: Connection | None = None
        #: one fill at a time in the process; whoever holds this talks to the pipe
        self._turn = asyncio.Lock()
        #: the fill under way (its thread's future), if any
        self._current: asyncio.Future[bytes] | None = None
        self._closed = False

    async def run(self, plan: FillPlan, raw: bytes) -> bytes:
        """The filled answer. The turn is held until the round trip ends, even if this caller goes away first: the
        pipe carries one fill at a time, so the next is sent only once this one's answer has been read."""
        await self._turn.acquire()
        try:
            if self._closed:
                raise _shutting_down()
            current = asyncio.ensure_future(asyncio.to_thread(_round_trip, self._started(), plan, raw))
        except BaseException:
            self._turn.release()
            raise
        self._current = current
        current.add_done_callback(self._round_trip_done)
        try:
            return await asyncio.shield(current)
        except _ProcessEnded:
            raise (_shutting_down() if self._closed else _fill_process_ended()) from None

    def _round_trip_done(self, current: asyncio.Future[bytes]) -> None:
        if self._current is current:
            self._current = None
        # seen here, so a caller that went away leaves no "never retrieved" complaint
        failure = None if current.cancelled() else current.exception()
        if isinstance(failure, _ProcessEnded) and not self._closed:
            self._discard()  # killed under a fill: the next fill starts another
        self._turn.release()

    def _discard(self) -> None:
        """Forget a fill process that is gone (its exit status is collected when the next one starts)."""
        process, pipe = self._process, self._pipe
        self._process = self._pipe = None
        if pipe is not None:
            pipe.close()
        if process is not None and process.is_alive():
            process.kill()

    def _started(self) -> Connection:
        if self._process is not None and not self._process.is_alive():
            self._discard()  # ended while idle (killed, say): nobody needs to pay for it with a 503
        if self._pipe is None:
            # spawned: nothing of this process's loop or sockets is copied into it
            context = multiprocessing.get_context("spawn")
            mine, theirs = context.Pipe()
            process = context.Process(target=serve_fills, args=(theirs,), name="fill", daemon=True)
            process.start()
            theirs.close()  # the process's end lives in the process only: its EOF is this end closing
            self._process, self._pipe = process, mine
        return self._pipe

    async def close(self, grace: float) -> None:
        """Let a fill under way finish for ``grace`` seconds, then end the process; returns when it is gone.
        Fills not yet sent are answered 503, as is one cut off by the end."""
        self._closed = True
        current = self._current
        if current is not None:
            await asyncio.wait({current}, timeout=grace)
            if not current.done():
                log.warning(
                    "the fill process did not finish within %g s; ending it", grace, extra={"event": "fill_ended"}
                )
        process, pipe = self._process, self._pipe
        self._process = self._pipe = None
        if process is not None:
            await asyncio.to_thread(_end, process, pipe if current is None or current.done() else None)
        if current is not None:
            await asyncio.wait({current})  # its pipe read ends with the process
        if pipe is not None:
            pipe.close()


def _end(process: BaseProcess, idle_pipe: Connection | None) -> None:
    """End the fill process: an idle one by closing its pipe (it exits by itself), one under way by SIGTERM;
    killed past ``EXIT_SECONDS`` either way, and joined."""
    if idle_pipe is not None:
        idle_pipe.close()
        process.join(EXIT_SECONDS)
    if process.is_alive():
        process.terminate()
        process.join(EXIT_SECONDS)
    if process.is_alive():
        process.kill()
        process.join(EXIT_SECONDS)


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
