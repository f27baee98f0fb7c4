"""The listening sockets: made by the parent before it forks, one public socket per worker slot (SO_REUSEPORT) and
one metrics socket, kept across a reload of the same addresses; and the open-files limit they need."""

from __future__ import annotations

import logging
import resource
import socket
from dataclasses import dataclass

from proxy.lane import listener as fast_lane
from proxy.settings import Settings

log = logging.getLogger(__name__)

#: the soft limit on open files asked for when the hard limit is unlimited (Linux's default fs.nr_open)
OPEN_FILES_WHEN_UNLIMITED = 1_048_576


class CannotListen(Exception):
    """The address is taken or not ours: said in one line, not a traceback."""


@dataclass(frozen=True)
class Sockets:
    """The listening sockets one worker accepts on: its slot's public ones, and the shared metrics one."""

    public: tuple[socket.socket, ...]
    metrics: socket.socket | None = None

    def all(self) -> set[socket.socket]:
        return {*self.public, *([self.metrics] if self.metrics is not None else [])}


@dataclass(frozen=True)
class Listeners:
    """The parent's listening sockets: one public socket per worker slot (SO_REUSEPORT: the kernel spreads
    new connections over them evenly), and one metrics socket the workers share."""

    public: tuple[socket.socket, ...]
    metrics: socket.socket | None

    def for_slot(self, slot: int, workers: int) -> Sockets:
        """Worker ``slot``'s sockets: its own, and those of slots beyond ``workers`` (kept from a reload that
        lowered ``workers``: closing them would reset the connections waiting in their queues)."""
        return Sockets(self.public[slot::workers], self.metrics)

    def close(self, keep: Listeners | None = None) -> None:
        """Close the sockets ``keep`` does not use too."""
        kept = set() if keep is None else {*keep.public, keep.metrics}
        for sock in (*self.public, self.metrics):
            if sock is not None and sock not in kept:
                sock.close()


def bind(settings: Settings, reuse: Listeners | None = None) -> Listeners:
    """The listening sockets, made by the parent before it forks: a worker accepts on its slot's socket, and
    so does the worker that replaces it, on a crash or a reload. The sockets stay open in the parent, so a
    connection waiting in one's queue is taken by the new worker, never refused. ``reuse``: a reload's
    sockets of the same addresses, every one of them (fewer workers share them out; more get new ones)."""
    server = settings.server
    public: list[socket.socket] = list(reuse.public) if reuse is not None else []
    metrics = reuse.metrics if reuse is not None else None
    made: list[socket.socket] = []
    try:
        while len(public) < server.workers:
            sock = _listening(server.host, server.port, fast_lane.BACKLOG)
            made.append(sock)
            public.append(sock)
        if server.metrics_port and metrics is None:
            metrics = _listening(server.metrics_host, server.metrics_port, 128)
            made.append(metrics)
    except OSError as exc:
        for sock in made:
            sock.close()
        public_full = len(public) >= server.workers  # the failure was the metrics socket's
        where = f"{server.metrics_host}:{server.metrics_port}" if public_full else f"{server.host}:{server.port}"
        raise CannotListen(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return Listeners(tuple(public), metrics)


def _listening(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=True)
    sock.set_inheritable(True)
    return sock


def same_addresses(old: Settings, new: Settings) -> bool:
    a, b = old.server, new.server
    return (a.host, a.port, a.metrics_host, a.metrics_port) == (b.host, b.port, b.metrics_host, b.metrics_port)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit, as nginx's ``worker_rlimit_nofile`` does.

    Every caller holds a socket, and so does every connection to Cube: 5,000 callers held
    on slow queries need 5,000 of them. Service managers often start processes with a soft
    limit of 1,024, past which the server cannot accept a connection. Forked workers
    inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open files limit from %d: %s", soft, exc, extra={"event": "rlimit"})
        return
    log.info("open files limit raised from %d to %d", soft, wanted, extra={"event": "rlimit"})
