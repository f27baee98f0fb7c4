"""Keep-alive connections to one Cube origin: at most ``limit`` open, callers served in turn.

Rules it keeps: a caller waits at most ``pool_timeout`` for a connection; a connection given
back goes straight to the longest waiting caller; an idle connection older than
``idle_timeout`` is closed (by a timer, wherever it sits in the idle list), never reused;
each of the origin's addresses gets its share of ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl as ssl_module
from dataclasses import dataclass

from proxy.http_client.connection import Connection
from proxy.http_client.errors import ConnectFailed, ConnectTimeout, Disconnected, PoolBusy
from proxy.http_client.response import Response


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class HttpPool:
    """Keep-alive connections to one origin: at most ``limit`` open, idle ones reused newest first.

    Its idle list is ordered by the moment each connection went idle, oldest first, so the
    stale ones are always at its front, where the reaper's timer closes them.
    """

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int,
        connect_timeout: float,
        pool_timeout: float = 10.0,
        idle_timeout: float = 4.0,
        dns_ttl: float = 10.0,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        self.origin = origin
        self._limit = limit
        self._connect_timeout = connect_timeout
        #: seconds a caller waits for a connection while all ``limit`` are busy
        self._pool_timeout = pool_timeout
        self._idle_timeout = idle_timeout
        #: the origin's addresses, reused for ``dns_ttl`` s (aiohttp's default) instead of a lookup per connection
        self._dns_ttl = dns_ttl
        self._addresses: list[tuple[int, str]] = []
        self._addresses_until = 0.0
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._opening = 0
        #: callers waiting for a connection, oldest first
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._closing = False
        #: the one timer that closes idle connections as they pass ``idle_timeout`` (armed while any are idle)
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection."""
        return len(self._waiters)

    async def request(self, head: bytes, body: bytes | None, read_timeout: float) -> Response:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; await the headers.

        A call that fails on a reused connection before any answer arrived is sent once
        more on a new one: the peer closed an idle connection as the call went out.
        Cube's API calls are reads, so asking twice is safe.
        """
        data = head + body if body else head
        # an idle connection and nobody waiting before us (most calls): take it without a coroutine
        conn = None if self._waiters else self._idle_connection()
        if conn is None:
            conn = await self._acquire()
        reused = conn.calls > 0
        try:
            return await self._round_trip(conn, data, read_timeout)
        except Disconnected:
            if not reused:
                raise
        conn = await self._acquire(fresh=True)
        return await self._round_trip(conn, data, read_timeout)

    async def _round_trip(self, conn: Connection, data: bytes, read_timeout: float) -> Response:
        response = conn.send(data, read_timeout)
        try:
            while not response.status:  # set when the status line and headers have arrived
                if response.error is not None:
                    raise response.error
                await response.wait()
        except BaseException:
            response.release()
            raise
        return response

    async def _acquire(self, fresh: bool = False) -> Connection:
        """A connection to send on, in turn: callers that find the pool full are served first come, first served.

        A connection given back while callers wait goes straight to the longest waiting one,
        and a slot freed by a closed connection is reserved for it, so a caller arriving at
        that moment cannot take it past them. (It could before: under load the same callers
        were passed over again and again, and p99 grew to seconds.) A caller waits at most
        ``pool_timeout``, then gets ``PoolBusy``. ``fresh`` skips idle connections; one handed
        over from a call that just finished counts as fresh.
        """
        if not self._waiters:
            if not fresh and (conn := self._idle_connection()) is not None:
                return conn
            if len(self._open) + self._opening < self._limit:
                self._opening += 1
                return await self._connect()
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._pool_timeout):
                handed = await waiter
        except TimeoutError:
            self._abandon(waiter)
            raise PoolBusy(f"all {self._limit} connections to Cube stayed busy for {self._pool_timeout:g} s") from None
        except BaseException:
            self._abandon(waiter)
            raise
        if handed is None:  # a slot, reserved for this caller
            return await self._connect()
        return handed

    def _abandon(self, waiter: asyncio.Future[Connection | None]) -> None:
        """A waiting caller left: pass on whatever was handed to it meanwhile."""
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        elif waiter.exception() is None:
            handed = waiter.result()
            if handed is None:
                self._opening -= 1
                self._slot_freed()
            else:
                self.give_back(handed)

    def _idle_connection(self) -> Connection | None:
        """The most recently used idle connection still worth reusing (older ones are the reaper's)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def _reap(self) -> None:
        """The timer: close every idle connection older than ``idle_timeout`` (the oldest are first); re-arm."""
        self._reaper = None
        idle = self._idle
        if not idle:
            return
        now = idle[0].loop.time()
        stale = 0
        while stale < len(idle) and now - idle[stale].idle_since >= self._idle_timeout:
            stale += 1
        if stale:
            expired, self._idle[:stale] = idle[:stale], []
            for conn in expired:
                conn.close()
        if self._idle:
            self._arm_reaper(self._idle[0])

    def _arm_reaper(self, oldest: Connection) -> None:
        if self._reaper is None:
            when = oldest.idle_since + self._idle_timeout
            self._reaper = oldest.loop.call_at(when, self._reap)

    async def _connect(self) -> Connection:
        """Open a connection in a slot the caller reserved (counted in ``_opening``)."""
        loop = asyncio.get_running_loop()
        try:
            if self._closing:
                raise ConnectFailed("the proxy is shutting down")
            try:
                async with asyncio.timeout(self._connect_timeout):
                    conn = await self._open_connection(loop)
            except TimeoutError:
                raise ConnectTimeout(f"Cube did not accept a connection within {self._connect_timeout:g} s") from None
            except ssl_module.SSLError as exc:
                raise ConnectFailed(f"TLS with Cube failed: {exc.reason or type(exc).__name__}") from None
            except OSError as exc:
                raise ConnectFailed(f"Cube is unreachable: {exc.strerror or type(exc).__name__}") from None
        except BaseException:
            self._opening -= 1
            self._slot_freed()
            raise
        self._opening -= 1
        if conn.closed:
            self._slot_freed()
            raise Disconnected("Cube closed the connection at once")
        self._open.add(conn)
        return conn

    async def _open_connection(self, loop: asyncio.AbstractEventLoop) -> Connection:
        """Connect to the origin's addresses in turn, each within its share of what is left of ``connect_timeout``.

        An address that never answers (a black hole) costs only its share, so the next one
        is still tried in time. If none answers, the name is looked up afresh next time.
        """
        deadline = loop.time() + self._connect_timeout
        if loop.time() >= self._addresses_until:
            found = await loop.getaddrinfo(self.origin.host, self.origin.port, type=socket.SOCK_STREAM)
            self._addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in found]
            self._addresses_until = loop.time() + self._dns_ttl
        failure: OSError = ConnectionRefusedError(f"no address for {self.origin.host}")
        addresses = self._addresses
        for index, (family, address) in enumerate(addresses):
            share = (deadline - loop.time()) / (len(addresses) - index)
            try:
                async with asyncio.timeout(share):
                    _, conn = await loop.create_connection(
                        lambda: Connection(self),
                        address,
                        self.origin.port,
                        family=family,
                        ssl=self._ssl,
                        server_hostname=self.origin.host if self._ssl is not None else None,
                    )
                return conn
            except ssl_module.SSLError:
                raise
            except TimeoutError:
                failure = TimeoutError(f"{address} did not answer")
            except OSError as exc:
                failure = exc
        self._addresses_until = 0.0
        raise failure

    def give_back(self, conn: Connection) -> None:
        """A connection whose answer was read to the end: to the longest waiting caller, or the idle list."""
        if self._closing:
            conn.close()
        elif not self._hand_over(conn):
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
            self._arm_reaper(self._idle[0])

    def forget(self, conn: Connection) -> None:
        """A connection closed: its slot is free."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._slot_freed()

    def _slot_freed(self) -> None:
        if len(self._open) + self._opening < self._limit:
            self._hand_over(None)

    def _hand_over(self, conn: Connection | None) -> bool:
        """Give a connection, or with None a reserved slot to connect in, to the longest waiting caller."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if conn is None:
                    self._opening += 1
                waiter.set_result(conn)
                return True
        return False

    async def close(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for conn in list(self._open):
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the proxy is shutting down"))
