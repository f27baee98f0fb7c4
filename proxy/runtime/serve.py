"""One worker: serve on its slot's sockets through the fast lane and aiohttp, and drain on SIGTERM (uvicorn's
``Server``); the garbage collector tuned for a long-running server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from proxy.lane import listener as fast_lane
from proxy.lane.listener import FastLane
from proxy.runtime.sockets import Sockets
from proxy.settings import Settings
from proxy.web.app import create_app
from proxy.web.keys import PIPELINE
from proxy.web.runner import ProxyRunner

log = logging.getLogger(__name__)

GC_GEN0_THRESHOLD = 50_000
#: seconds a worker retired by a reload keeps its connections open for their next request before draining
RETIRE_HANDOFF = 2.0


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


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
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
