"""Running the proxy: one process, or ``[server] workers`` processes sharing the port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable

from aiohttp import web

from .app import create_app
from .logs import setup_logging
from .settings import Settings

log = logging.getLogger(__name__)

GC_GEN0_THRESHOLD = 50_000


async def serve(settings: Settings, *, reuse_port: bool = False, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting and let in-flight answers finish."""
    app = create_app(settings)
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
    site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_port=reuse_port or None, backlog=4096)
    await site.start()
    log.info("listening on http://%s:%s", settings.server.host, settings.server.port, extra={"event": "listening"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: letting in-flight requests finish", extra={"event": "shutdown"})
    await runner.cleanup()


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


def _run_one(settings: Settings, reuse_port: bool) -> None:
    setup_logging(settings.server.log_format, settings.server.log_level)
    tune_gc()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, reuse_port=reuse_port))


def run(settings: Settings) -> None:
    """Run in this process, or fork ``workers`` processes that share the port (SO_REUSEPORT)."""
    workers = settings.server.workers
    if workers == 1:
        _run_one(settings, reuse_port=False)
        return
    setup_logging(settings.server.log_format, settings.server.log_level)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_run_one, args=(settings, True), daemon=False) for _ in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
