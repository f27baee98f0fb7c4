"""Identical in-flight calls of one tenant share one upstream call (spec section 6).

A call's answer is either whole (shared as bytes) or a stream. A stream is fanned
out chunk by chunk to every caller that joined before it began. Callers that arrive
once the body has started make a call of their own.

The fan-out is paced by the fastest subscriber, never held by the slowest: Cube is read
while any subscriber has less than ``PACE_BYTES`` waiting, and a subscriber that falls
``MAX_LAG_BYTES`` behind is dropped (its answer is cut off) rather than stalling the
others. So a stream holds at most ``MAX_LAG_BYTES`` per subscriber, whatever its size.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

from proxy.cube.client import Buffered, CubeAnswer, Streamed
from proxy.cube.tenants import Tenant
from proxy.observe.tracing import Traced

log = logging.getLogger(__name__)

#: the pump reads on from Cube while any subscriber has less than this waiting
PACE_BYTES = 256 * 1024
#: a subscriber with more than this waiting has fallen behind: it is dropped
MAX_LAG_BYTES = 4 * 1024 * 1024


class StreamBroken(Exception):
    """The upstream body ended early: the caller's answer must not look complete."""


class _Subscriber:
    """One caller's place in a fan-out: the chunks waiting for it, and its end."""

    __slots__ = ("chunks", "end", "size", "waiter")

    def __init__(self) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        #: bytes in ``chunks``
        self.size = 0
        #: None while the stream goes on; then True (it ended whole) or why it broke
        self.end: bool | BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SharedStream:
    """One subscriber's view of a fanned-out stream."""

    __slots__ = ("_broadcast", "_sub", "content_length")

    def __init__(self, content_length: int | None, broadcast: _Broadcast, sub: _Subscriber) -> None:
        self.content_length = content_length
        self._broadcast = broadcast
        self._sub = sub

    async def chunks(self) -> AsyncIterator[bytes]:
        sub = self._sub
        while True:
            if sub.chunks:
                chunk = sub.chunks.popleft()
                sub.size -= len(chunk)
                if sub.size < PACE_BYTES:
                    self._broadcast.room()
                yield chunk
            elif sub.end is True:
                return
            elif isinstance(sub.end, BaseException):
                raise StreamBroken(str(sub.end)) from sub.end
            else:
                sub.waiter = asyncio.get_running_loop().create_future()
                try:
                    await sub.waiter
                finally:
                    sub.waiter = None

    def close(self) -> None:
        self._broadcast.leave(self._sub)


QueryAnswer = Buffered | Streamed | SharedStream


#: a caller's answer, whether it joined an earlier caller's call, and that call's span when one was traced (a plain
#: tuple: made for every call)
Coalesced = tuple[QueryAnswer, bool, Traced | None]


class _LeaderLeft:
    """What followers get when the caller making the shared call hung up: ask again."""


_LEADER_LEFT = _LeaderLeft()


class _Flight:
    """One call in flight and the callers sharing it (a plain slotted class: one is made per call)."""

    __slots__ = ("broadcast", "followers", "joined", "left", "origin")

    def __init__(self, origin: Traced | None) -> None:
        #: the leader's span of the call, which a joined caller's span links to (None: not traced)
        self.origin = origin
        #: callers that joined; caller n holds slot n (the leader, making the call, holds 0)
        self.joined = 1
        #: slots whose callers gave up before taking the answer
        self.left: set[int] = set()
        #: each waiting follower's slot and the future its answer arrives on
        self.followers: dict[int, asyncio.Future[CubeAnswer | _LeaderLeft]] = {}
        self.broadcast: _Broadcast | None = None

    def settle(self, outcome: CubeAnswer | _LeaderLeft | BaseException) -> None:
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
        self.subscribers: dict[int, _Subscriber] = {slot: _Subscriber() for slot in slots}
        self._room: asyncio.Future[None] | None = None
        self._task = asyncio.ensure_future(self._pump())
        tasks.add(self._task)
        self._task.add_done_callback(tasks.discard)

    def subscriber(self, slot: int) -> SharedStream:
        return SharedStream(self._source.content_length, self, self.subscribers[slot])

    def leave(self, sub: _Subscriber) -> None:
        for slot, each in list(self.subscribers.items()):
            if each is sub:
                del self.subscribers[slot]
        sub.chunks.clear()
        self.room()
        if not self.subscribers and not self._task.done():
            self._task.cancel()

    def room(self) -> None:
        """A subscriber caught up (or left): the pump may read on."""
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def _deliver(self, chunk: bytes) -> None:
        for slot, sub in list(self.subscribers.items()):
            sub.chunks.append(chunk)
            sub.size += len(chunk)
            if sub.size > MAX_LAG_BYTES:  # fallen behind: cut it off rather than hold the others
                del self.subscribers[slot]
                sub.chunks.clear()
                sub.size = 0
                sub.end = StreamBroken(f"this caller fell more than {MAX_LAG_BYTES} bytes behind the others")
            sub.wake()

    async def _pump(self) -> None:
        try:
            async for chunk in self._source.chunks():
                self._deliver(chunk)
                while self.subscribers and all(sub.size >= PACE_BYTES for sub in self.subscribers.values()):
                    self._room = asyncio.get_running_loop().create_future()
                    try:
                        await self._room
                    finally:
                        self._room = None
                if not self.subscribers:
                    return
            for sub in self.subscribers.values():
                sub.end = True
                sub.wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("upstream stream broke during fan-out: %s", type(exc).__name__)
            for sub in self.subscribers.values():
                sub.chunks.clear()
                sub.end = exc
                sub.wake()
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

    async def run(
        self, key: Hashable | None, produce: Callable[[], Awaitable[CubeAnswer]], origin: Traced | None = None
    ) -> Coalesced:
        """The answer for this caller, whether it was shared with an earlier caller, and that caller's ``origin`` (the
        span it made the call under, when traced).

        The first caller makes the call itself, in its own task: no task or future is made
        for a call nobody else asks for (most calls). Callers that join wait for its answer.
        If the first caller hangs up, its call stops, and those still waiting ask again:
        one of them makes the call, the others share it (and Cube's own queue joins the
        query it is already running).
        """
        if key is None:
            return await produce(), False, None
        flight = self._flights.get(key)
        if flight is None:
            return await self._lead(key, produce, origin), False, None
        slot = flight.joined
        flight.joined += 1
        waiter: asyncio.Future[CubeAnswer | _LeaderLeft] = asyncio.get_running_loop().create_future()
        flight.followers[slot] = waiter
        try:
            answer = await waiter
        except asyncio.CancelledError:
            self._abandon(flight, slot)
            raise
        if isinstance(answer, _LeaderLeft):
            return await self.run(key, produce, origin)
        return self._take(flight, slot, answer), True, flight.origin

    async def _lead(
        self, key: Hashable, produce: Callable[[], Awaitable[CubeAnswer]], origin: Traced | None
    ) -> QueryAnswer:
        flight = self._flights[key] = _Flight(origin)
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

    def _take(self, flight: _Flight, slot: int, answer: CubeAnswer) -> QueryAnswer:
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
        broadcast = flight.broadcast
        if broadcast is not None and (sub := broadcast.subscribers.get(slot)) is not None:
            broadcast.leave(sub)

    async def close(self) -> None:
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


def coalesce_key(tenant: Tenant, endpoint: str, fingerprint: bytes) -> tuple[Tenant, str, bytes]:
    """The key identical calls share a flight by (the tenant, the endpoint, the query's canonical fingerprint). A
    personal call (``include_token``) is never given one: ``Pipeline._personal`` runs it alone."""
    return (tenant, endpoint, fingerprint)
