"""Running the proxy: one process, or ``[server] workers`` processes sharing the port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from proxy.lane import listener as fast_lane
from proxy.lane.listener import FastLane
from proxy.observe.store import parent_event, retire
from proxy.runtime.logs import log_uncaught, setup_logging
from proxy.runtime.workers import Supervisor, die_with_parent
from proxy.settings import Settings, SettingsError
from proxy.web.app import create_app
from proxy.web.keys import PIPELINE
from proxy.web.runner import ProxyRunner

log = logging.getLogger(__name__)


class CannotListen(Exception):
    """The address is taken or not ours: said in one line, not a traceback."""


GC_GEN0_THRESHOLD = 50_000
#: seconds a worker retired by a reload keeps its connections open for their next request before draining
RETIRE_HANDOFF = 2.0
#: the soft limit on open files asked for when the hard limit is unlimited (Linux's default fs.nr_open)
OPEN_FILES_WHEN_UNLIMITED = 1_048_576


async def serve(
    settings: Settings,
    sockets: Sockets,
    *,
    on_listening: Callable[[], None] | None = None,
    metrics_folder: Path | None = None,
    slot: int = 0,
) -> None:
    """Serve on the parent's sockets until SIGTERM or SIGINT; then readiness fails at once, serving goes on for
    ``drain_delay`` seconds (a load balancer's time to stop sending), and in-flight answers get
    ``shutdown_timeout``. SIGUSR2 (a reload retiring this worker) drains at once: the new workers
    already accept on the same sockets."""
    app = create_app(settings, metrics_folder, slot)
    # handler_cancellation: a caller that hangs up cancels its request, freeing its tenant slot and its
    # Cube connection (a shared call carries on for the others). aiohttp's default keeps the handler
    # running until Cube answers; the tests' server has always cancelled, and now production does too.
    # keepalive_timeout: aiohttp's server defaults to an hour. It also bounds a caller that does not
    # finish a request's head (a slowloris): aiohttp arms the timer on connect and after each answer.
    runner = ProxyRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout,
        handler_cancellation=True,
        keepalive_timeout=settings.server.keepalive_timeout,
    )
    await runner.setup()
    listening = await _listen(app, runner, settings, sockets)
    stop = asyncio.Event()
    retiring = False

    def retire() -> None:
        nonlocal retiring
        retiring = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, retire)
    if on_listening is not None:  # before the log line: whoever reads the line may rely on the parent knowing
        on_listening()
    log.info("listening on http://%s:%s", settings.server.host, settings.server.port, extra={"event": "listening"})
    await stop.wait()
    app[PIPELINE].drain()  # readiness fails; every answer from now on says Connection: close
    if retiring:
        # a reload: the new workers accept on the same sockets already. Stop accepting here, and give the
        # connections this worker holds a moment to bring their next request (answered with Connection:
        # close, so its caller reconnects to a new worker) before the idle ones are closed
        await stop_accepting(runner, listening)
        await asyncio.sleep(RETIRE_HANDOFF)  # the hand-off period itself, not a synchronisation
    delay = 0.0 if retiring else settings.server.drain_delay
    if delay > 0:
        log.info(
            "stopping: readiness fails now; serving on for %g s before draining",
            delay,
            extra={"event": "drain_delay"},
        )
        stop.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)  # a second SIGTERM or SIGINT drains at once
    log.info("shutting down: letting in-flight requests finish", extra={"event": "shutdown"})
    await drain(runner, listening, settings.server.shutdown_timeout)


#: the fast lane's listeners (one per socket this worker accepts on) and the lane; None when aiohttp listens
Listening = tuple[list[asyncio.AbstractServer], FastLane] | None


async def stop_accepting(runner: web.AppRunner, listening: Listening) -> None:
    """No new connections on this worker's copies of the sockets (the parent's and the other workers' stay open)."""
    if listening is not None:
        for listener in listening[0]:
            listener.close()
    for site in list(runner.sites):
        await site.stop()


async def drain(runner: web.AppRunner, listening: Listening, grace: float) -> None:
    """Stop accepting; let in-flight answers on both front doors finish within one ``grace``; then clean up.

    The lane's connections and aiohttp's (its own, and those the lane handed over) drain
    at the same time against the same deadline; whatever is still busy then is closed.
    aiohttp's own shutdown would wait ``grace`` for a handler, then up to ``grace`` again
    after cancelling it, so it runs under the one deadline here, and the runner's clean-up
    finds no connection left to wait for.
    """
    server = runner.server
    assert server is not None
    if listening is None:
        for site in list(runner.sites):
            await site.stop()
        lane_drained: Awaitable[None] = asyncio.sleep(0)
    else:
        listeners, lane = listening
        for listener in listeners:
            listener.close()
        lane_drained = lane.shutdown(grace)
    server.pre_shutdown()  # idle connections close now

    async def aiohttp_drained() -> None:
        try:
            async with asyncio.timeout(grace):
                await server.shutdown(grace)
        except TimeoutError:
            for handler in server.connections:
                handler.force_close()  # its handler is cancelled as its connection goes

    await asyncio.gather(lane_drained, aiohttp_drained())
    await runner.cleanup()


async def _listen(app: web.Application, runner: web.AppRunner, settings: Settings, sockets: Sockets) -> Listening:
    """Accept on the parent's sockets: through the fast lane (which hands what it does not serve to aiohttp's
    server), or through aiohttp; the metrics port (loopback) through aiohttp beside them."""
    if sockets.metrics is not None:
        await web.SockSite(runner, sockets.metrics).start()
    if settings.server.fast_lane:
        return await fast_lane.listen_on(app[PIPELINE], runner, sockets.public)
    for public in sockets.public:
        await web.SockSite(runner, public).start()
    return None


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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay runnable without it
        return None
    return uvloop.new_event_loop


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server (measured in bench/NOTES.md).

    Start-up objects (modules, classes, settings) are moved out of the collector's sight
    with ``gc.freeze``, and the youngest generation is collected after 50,000 allocations
    instead of 700: a request's objects are nearly all freed by reference counting, so
    frequent young collections only walk the in-flight requests again and again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


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


@dataclass(frozen=True)
class Generation:
    """What one generation of workers runs with: its settings and the sockets they listen on."""

    settings: Settings
    listeners: Listeners


def _run_one(
    parent: int, on_listening: Callable[[], None], generation: Generation, slot: int, metrics_folder: Path
) -> None:
    die_with_parent(parent)
    settings = generation.settings
    setup_logging(settings.server.log_format, settings.server.log_level)
    log_uncaught()
    tune_gc()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        sockets = generation.listeners.for_slot(slot, settings.server.workers)
        runner.run(serve(settings, sockets, on_listening=on_listening, metrics_folder=metrics_folder, slot=slot))


class _Parent:
    """The parent's side of the generations: the one serving, the one a reload is starting, their sockets."""

    def __init__(self, first: Generation, folder: Path, load_again: Callable[[], Settings] | None) -> None:
        self.current = first
        self.starting: Generation | None = None
        self.folder = folder
        self._load_again = load_again

    def main_for(self, generation: Generation, slot: int) -> Callable[[int, Callable[[], None]], None]:
        # everything the parent listens on now but this worker's own sockets: closed in the child at once
        own = generation.listeners.for_slot(slot, generation.settings.server.workers).all()
        others = [
            sock
            for held in (self.current, self.starting)
            if held is not None
            for sock in (*held.listeners.public, held.listeners.metrics)
            if sock is not None and sock not in own
        ]

        def main(parent: int, on_listening: Callable[[], None]) -> None:
            for sock in others:
                sock.close()
            _run_one(parent, on_listening, generation, slot, self.folder)

        return main

    def reload(self) -> Generation | None:
        if self._load_again is None:
            log.warning("SIGHUP: no settings to read again; going on", extra={"event": "reload_failed"})
            return None
        try:
            fresh = self._load_again()
        except SettingsError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem, extra={"event": "reload_failed"})
            log.error("the proxy goes on with the settings it has", extra={"event": "reload_failed"})
            return None
        try:
            reuse = self.current.listeners if same_addresses(self.current.settings, fresh) else None
            self.starting = Generation(fresh, bind(fresh, reuse))
        except CannotListen as exc:
            log.error(
                "reload refused: %s; the proxy goes on with the settings it has", exc, extra={"event": "reload_failed"}
            )
            return None
        return self.starting

    def reload_done(self, old: Generation, new: Generation) -> None:
        """After a reload (or a failed one, ``new`` being the current): ``old``'s sockets ``new`` does not use close.

        The old workers hold their own copies until they have drained.
        """
        self.current, self.starting = new, None
        old.listeners.close(keep=new.listeners)


def run(settings: Settings, load_again: Callable[[], Settings] | None = None) -> int:
    """Bind the sockets, fork ``workers`` processes onto them, and supervise them; the exit status.

    ``load_again`` re-reads the settings on SIGHUP (raising SettingsError when they are not
    valid): a valid change starts a new generation of workers before the old one drains.
    """
    setup_logging(settings.server.log_format, settings.server.log_level)
    log_uncaught()
    raise_open_files_limit()
    try:
        listeners = bind(settings)
    except CannotListen as exc:
        log.error("%s", exc, extra={"event": "listen_failed"})
        return 1
    # the workers' metrics meet here: each writes its snapshot, a scrape adds them up, a dead one's are kept
    folder = Path(tempfile.mkdtemp(prefix="product-analytics-proxy-metrics-"))
    parent = _Parent(Generation(settings, listeners), folder, load_again)
    supervisor = Supervisor(
        parent.main_for,
        parent.current,
        lambda generation: generation.settings.server.workers,
        parent.reload,
        on_exit=lambda pid: retire(folder, pid),
        on_reload_done=parent.reload_done,
        on_event=lambda kind, label: parent_event(folder, kind, label, time.time() if kind == "reloads" else None),
    )
    try:
        return supervisor.run()
    finally:
        parent.current.listeners.close()
        shutil.rmtree(folder, ignore_errors=True)
