"""Identical in-flight calls of one tenant share one upstream call (spec section 6).

A call's answer is either whole (shared as bytes) or a stream. A stream is fanned
out chunk by chunk to every caller that joined before it began; each caller has a
small bounded queue, so memory does not grow with the result's size. Callers that
arrive once the body has started make a call of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass

from proxy.cube.client import Answer, Buffered, Streamed

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 8


class StreamBroken(Exception):
    """The upstream body ended early: the caller's answer must not look complete."""


@dataclass
class SharedStream:
    """One subscriber's view of a fanned-out stream."""

    content_length: int | None
    _queue: asyncio.Queue[bytes | BaseException | None]
    _leave: Callable[[], None]

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise StreamBroken(str(item)) from item
            yield item

    def close(self) -> None:
        self._leave()


Outcome = Buffered | Streamed | SharedStream


class _LeaderLeft:
    """What followers get when the caller making the shared call hung up: ask again."""


_LEADER_LEFT = _LeaderLeft()


class _Flight:
    """One call in flight and the callers sharing it (a plain slotted class: one is made per call)."""

    __slots__ = ("broadcast", "followers", "joined", "left")

    def __init__(self) -> None:
        #: callers that joined; caller n holds slot n (the leader, making the call, holds 0)
        self.joined = 1
        #: slots whose callers gave up before taking the answer
        self.left: set[int] = set()
        #: each waiting follower's slot and the future its answer arrives on
        self.followers: dict[int, asyncio.Future[Answer | _LeaderLeft]] = {}
        self.broadcast: _Broadcast | None = None

    def settle(self, outcome: Answer | _LeaderLeft | BaseException) -> None:
        """Give every follower still waiting the leader's answer, its error, or word that it left."""
        for waiter in self.followers.values():
            if waiter.done():
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)


class _Broadcast:
    def __init__(self, source: Streamed, slots: list[int], tasks: set[asyncio.Task[None]]) -> None:
        self._source = source
        self.queues: dict[int, asyncio.Queue[bytes | BaseException | None]] = {
            slot: asyncio.Queue(QUEUE_CHUNKS) for slot in slots
        }
        self._task = asyncio.ensure_future(self._pump())
        tasks.add(self._task)
        self._task.add_done_callback(tasks.discard)

    def subscriber(self, slot: int) -> SharedStream:
        return SharedStream(self._source.content_length, self.queues[slot], lambda: self.leave(slot))

    def leave(self, slot: int) -> None:
        queue = self.queues.pop(slot, None)
        if queue is not None:
            while not queue.empty():  # unblock a pump waiting on this queue
                queue.get_nowait()
        if not self.queues and not self._task.done():
            self._task.cancel()

    async def _put(self, item: bytes | BaseException | None) -> None:
        for slot, queue in list(self.queues.items()):
            if self.queues.get(slot) is queue:
                await queue.put(item)

    async def _pump(self) -> None:
        try:
            async for chunk in self._source.chunks():
                await self._put(chunk)
                if not self.queues:
                    return
            await self._put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("upstream stream broke during fan-out: %s", type(exc).__name__)
            for queue in self.queues.values():
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(exc)
        finally:
            self._source.close()


class Coalescer:
    """Shares one upstream call among identical concurrent callers (keys never cross tenants)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    def waiting(self) -> int:
        """Callers waiting on a flight that has not answered yet."""
        return sum(f.joined - len(f.left) for f in self._flights.values())

    async def run(self, key: Hashable | None, produce: Callable[[], Awaitable[Answer]]) -> tuple[Outcome, bool]:
        """The answer for this caller, and whether it was shared with an earlier caller.

        The first caller makes the call itself, in its own task: no task or future is made
        for a call nobody else asks for (most calls). Callers that join wait for its answer.
        If the first caller hangs up, its call stops, and those still waiting ask again:
        one of them makes the call, the others share it (and Cube's own queue joins the
        query it is already running).
        """
        if key is None:
            return await produce(), False
        flight = self._flights.get(key)
        if flight is None:
            return await self._lead(key, produce), False
        slot = flight.joined
        flight.joined += 1
        waiter: asyncio.Future[Answer | _LeaderLeft] = asyncio.get_running_loop().create_future()
        flight.followers[slot] = waiter
        try:
            answer = await waiter
        except asyncio.CancelledError:
            self._abandon(flight, slot)
            raise
        if isinstance(answer, _LeaderLeft):
            return await self.run(key, produce)
        return self._take(flight, slot, answer), True

    async def _lead(self, key: Hashable, produce: Callable[[], Awaitable[Answer]]) -> Outcome:
        flight = self._flights[key] = _Flight()
        try:
            answer = await produce()
        except asyncio.CancelledError:
            self._land(key, flight)
            flight.settle(_LEADER_LEFT)
            raise
        except BaseException as exc:
            self._land(key, flight)
            flight.settle(exc)
            raise
        self._land(key, flight)
        outcome = self._take(flight, 0, answer)
        flight.settle(answer)
        return outcome

    def _land(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _take(self, flight: _Flight, slot: int, answer: Answer) -> Outcome:
        if isinstance(answer, Buffered):
            return answer
        if flight.joined == 1:
            return answer
        if flight.broadcast is None:
            live = [s for s in range(flight.joined) if s not in flight.left]
            flight.broadcast = _Broadcast(answer, live, self._pumps)
        return flight.broadcast.subscriber(slot)

    def _abandon(self, flight: _Flight, slot: int) -> None:
        flight.left.add(slot)
        flight.followers.pop(slot, None)
        if flight.broadcast is not None:
            flight.broadcast.leave(slot)

    async def close(self) -> None:
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
