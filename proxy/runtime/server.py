"""Running the proxy: one process, or ``[server] workers`` processes sharing the port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from proxy.lane import protocol as fast_lane
from proxy.lane.protocol import FastLane
from proxy.observe.store import retire
from proxy.runtime.logs import setup_logging
from proxy.runtime.workers import die_with_parent, supervise
from proxy.settings import Settings
from proxy.web.app import create_app
from proxy.web.keys import PIPELINE

log = logging.getLogger(__name__)


class CannotListen(Exception):
    """The address is taken or not ours: said in one line, not a traceback."""


GC_GEN0_THRESHOLD = 50_000
#: the soft limit on open files asked for when the hard limit is unlimited (Linux's default fs.nr_open)
OPEN_FILES_WHEN_UNLIMITED = 1_048_576


async def serve(
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
    metrics_folder: Path | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; then readiness fails at once, serving goes on for ``drain_delay``
    seconds (a load balancer's time to stop sending), and in-flight answers get ``shutdown_timeout``."""
    app = create_app(settings, metrics_folder)
    # handler_cancellation: a caller that hangs up cancels its request, freeing its tenant slot and its
    # Cube connection (a shared call carries on for the others). aiohttp's default keeps the handler
    # running until Cube answers; the tests' server has always cancelled, and now production does too.
    # keepalive_timeout: aiohttp's server defaults to an hour. It also bounds a caller that does not
    # finish a request's head (a slowloris): aiohttp arms the timer on connect and after each answer.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout,
        handler_cancellation=True,
        keepalive_timeout=settings.server.keepalive_timeout,
    )
    await runner.setup()
    try:
        listening = await _listen(app, runner, settings, reuse_port)
    except OSError as exc:
        await runner.cleanup()  # the app's clients and tasks, started by setup()
        where = f"{settings.server.host}:{settings.server.port}"
        raise CannotListen(f"cannot listen on {where}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_listening is not None:  # before the log line: whoever reads the line may rely on the parent knowing
        on_listening()
    log.info("listening on http://%s:%s", settings.server.host, settings.server.port, extra={"event": "listening"})
    await stop.wait()
    app[PIPELINE].draining = True
    delay = settings.server.drain_delay
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


async def drain(runner: web.AppRunner, listening: tuple[asyncio.AbstractServer, FastLane] | None, grace: float) -> None:
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
        listener, lane = listening
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


async def _listen(
    app: web.Application, runner: web.AppRunner, settings: Settings, reuse_port: bool
) -> tuple[asyncio.AbstractServer, FastLane] | None:
    """Listen through the fast lane (which hands what it does not serve to aiohttp's server), or through aiohttp."""
    host, port = settings.server.host, settings.server.port
    if settings.server.metrics_port:
        # metrics and status on loopback only, served by aiohttp beside the public listener
        metrics_site = web.TCPSite(runner, "127.0.0.1", settings.server.metrics_port, reuse_port=reuse_port or None)
        await metrics_site.start()
    if settings.server.fast_lane:
        return await fast_lane.listen(app[PIPELINE], runner, host, port, reuse_port=reuse_port)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=fast_lane.BACKLOG)
    await site.start()
    return None


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


def _run_one(
    settings: Settings,
    reuse_port: bool,
    parent: int | None = None,
    on_listening: Callable[[], None] | None = None,
    metrics_folder: Path | None = None,
) -> None:
    if parent is not None:
        die_with_parent(parent)
    setup_logging(settings.server.log_format, settings.server.log_level)
    tune_gc()
    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings, reuse_port=reuse_port, on_listening=on_listening, metrics_folder=metrics_folder))
    except CannotListen as exc:
        log.error("%s", exc, extra={"event": "listen_failed"})
        raise SystemExit(1) from None


def run(settings: Settings) -> int:
    """Run in this process, or fork ``workers`` processes that share the port (SO_REUSEPORT); the exit status."""
    setup_logging(settings.server.log_format, settings.server.log_level)
    raise_open_files_limit()
    workers = settings.server.workers
    if workers == 1:
        _run_one(settings, reuse_port=False)
        return 0

    # the workers' metrics meet here: each writes its snapshot, a scrape adds them up, a dead one's are kept
    folder = Path(tempfile.mkdtemp(prefix="product-analytics-proxy-metrics-"))

    def worker_main(parent: int, on_listening: Callable[[], None]) -> None:
        _run_one(settings, True, parent, on_listening, folder)

    try:
        return supervise(worker_main, workers, on_exit=lambda pid: retire(folder, pid))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
