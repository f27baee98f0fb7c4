"""``[server] workers`` > 1: a parent process that forks the workers, keeps them running and stops them.

The parent serves nothing itself. It forwards SIGTERM and SIGINT to every worker and
waits for them to finish their in-flight answers. A worker that ends while the proxy is
not stopping is replaced, as nginx's master replaces a crashed worker, unless it ended
before it was listening: that is a failure at start-up (the port taken, say), which a
new worker would only repeat, so the parent stops the others and exits with status 1.
Each worker asks the kernel for SIGTERM when the parent dies, even by SIGKILL, so no
orphan keeps serving on the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

#: prctl(2): the signal a process gets when the thread that forked it ends
PR_SET_PDEATHSIG = 1

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: what a worker runs: given its parent's pid and a function to call once it is listening
WorkerMain = Callable[[int, Callable[[], None]], None]


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM (a graceful stop) when the parent dies, even by SIGKILL."""
    if sys.platform != "linux":  # pragma: no cover - the proxy is built and tested on Linux
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover - cannot fail on Linux
        log.warning("workers will outlive a killed parent: prctl failed (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the line above: nobody will signal us
        raise SystemExit("product-analytics-proxy: the parent process is gone")


def _worker(worker_main: WorkerMain, parent: int, on_listening: Callable[[], None]) -> None:
    """A forked worker's first step: drop the parent's signal handlers, which the fork copied.

    Until its event loop installs its own, a worker that got SIGTERM (the parent stopping
    the others after one failed to start, say) ran the parent's handler on the parent's
    copied bookkeeping, which failed with a traceback. The parent forks with the stop
    signals blocked, so none can arrive before this; any that came meanwhile is delivered
    on unblocking, and now ends the worker as SIGTERM's default does.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    worker_main(parent, on_listening)


@dataclass
class _Worker:
    process: BaseProcess
    listening: Event


def supervise(worker_main: WorkerMain, workers: int, on_exit: Callable[[int], None] = lambda pid: None) -> int:
    """Run ``workers`` forked workers until SIGTERM or SIGINT; 0 after a requested stop, 1 after a failed start.

    ``on_exit`` is told each worker's pid as it is reaped (its metrics are kept by it).
    """
    context = multiprocessing.get_context("fork")
    parent = os.getpid()
    running: dict[int, _Worker] = {}  # by the process's sentinel
    stopping = False
    failed = False

    def signal_all(signum: int) -> None:
        for worker in list(running.values()):
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        signal_all(signum)

    def start() -> None:
        listening = context.Event()
        process = context.Process(target=_worker, args=(worker_main, parent, listening.set), daemon=False)
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)  # the child unblocks them once its handlers are reset
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        running[process.sentinel] = _Worker(process, listening)
        if stopping:  # the stop signal came while this one was being forked
            signal_all(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for _ in range(workers):
        start()
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            assert isinstance(sentinel, int)
            worker = running.pop(sentinel)
            worker.process.join()
            if worker.process.pid is not None:
                on_exit(worker.process.pid)
            if stopping:
                continue
            code = worker.process.exitcode
            if not worker.listening.is_set():
                log.error(
                    "worker %s failed before it was listening (exit code %s): stopping",
                    worker.process.pid,
                    code,
                    extra={"event": "worker_failed"},
                )
                stopping = failed = True
                signal_all(signal.SIGTERM)
            else:
                log.error(
                    "worker %s ended (exit code %s): starting another",
                    worker.process.pid,
                    code,
                    extra={"event": "worker_replaced"},
                )
                start()
    return 1 if failed else 0
