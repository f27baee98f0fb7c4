"""The lane connection's state machine, move by move, over a mock transport (uvicorn's way of testing its
protocol): every move goes through one checked method, and a move its table does not allow is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.lane.connection import BUSY, CLOSED, CLOSING, HANDED_OVER, IDLE, LAST, MOVES, BadMove, Connection, State


class MockTransport(asyncio.Transport):
    """What the lane writes, and whether it closed; nothing goes on a wire."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FakeLane:
    """The lane as a connection sees it, with nothing behind it."""

    keepalive_timeout = 60.0
    max_body = 1024 * 1024
    closing = False

    def __init__(self) -> None:
        self.connections: set[Connection] = set()

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)


def test_the_table_names_every_state_and_only_lost_connections_end_closed():
    assert set(MOVES) == set(State)
    assert all(CLOSED in moves for state, moves in MOVES.items() if state is not HANDED_OVER)
    assert MOVES[HANDED_OVER] == frozenset()  # aiohttp's server owns it: the lane moves it no more
    assert IDLE not in MOVES[LAST] and IDLE not in MOVES[CLOSING]  # a last answer never serves another


async def test_moves_over_a_mock_transport_and_a_refused_move():
    lane = FakeLane()
    conn = Connection(lane)  # type: ignore[arg-type]
    transport = MockTransport()
    conn.connection_made(transport)
    assert conn.state is IDLE and conn in lane.connections
    conn._move(BUSY)  # as a whole request makes it
    conn.close_when_idle()  # draining while it serves: its answer is the last
    assert conn.state is LAST and not transport.closed
    with pytest.raises(BadMove, match="cannot go from last to idle"):
        conn._move(IDLE)
    conn._close()
    assert conn.state is CLOSING and transport.closed
    conn.connection_lost(None)
    assert conn.state is CLOSED and conn not in lane.connections
    with pytest.raises(BadMove, match="cannot go from closed to busy"):
        conn._move(BUSY)


async def test_an_idle_connection_asked_to_close_closes_at_once():
    lane = FakeLane()
    conn = Connection(lane)  # type: ignore[arg-type]
    transport = MockTransport()
    conn.connection_made(transport)
    conn.close_when_idle()
    assert conn.state is CLOSING and transport.closed
    conn.connection_lost(None)
    assert conn.state is CLOSED
