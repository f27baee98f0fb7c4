"""The parent process: it holds the listening sockets, forks the workers, keeps them running, reloads and stops them.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from proxy.observe.families import RELOADS, WORKER_RESTARTS

log = logging.getLogger(__name__)

#: prctl(2): the signal a process gets when the thread that forked it ends
PR_SET_PDEATHSIG = 1

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
#: seconds a reload's new workers get to start listening before the reload is given up
RELOAD_START_TIMEOUT = 60.0

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
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the parent's to do
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    worker_main(parent, on_listening)


@dataclass
class _Worker:
    process: BaseProcess
    listening: Event
    #: the generation (settings and sockets) it was started with
    generation: Any
    #: its number within the generation (which of the generation's sockets it listens on)
    slot: int = 0


class Supervisor:
    """Runs one generation of workers at a time; SIGHUP asks ``reload`` for the next one.

    ``main_for(generation, slot)`` is what worker number ``slot`` of that generation runs (a
    replacement takes the slot of the worker it replaces, so the sockets a slot listens on
    stay in use); ``reload()`` returns
    the next generation (new settings, and the listening sockets they need) or None when
    the configuration is not valid (it has logged why: the workers go on as they are).
    A reload starts the new generation's workers, waits until every one of them listens,
    and only then asks the old ones to retire (SIGUSR2: drain now, no delay). The
    listening sockets belong to this process and are shared, so a connection waiting in
    the kernel's queue is accepted by a new worker, never refused.

    ``on_event(kind, label)`` is told each reload by outcome (``reloads``: ``ok``,
    ``refused``, ``failed``) and each worker restart by cause (``worker_restarts``:
    ``killed`` by a signal, ``crashed`` with a status, ``exited`` with 0), for the metrics.
    """

    def __init__(
        self,
        main_for: Callable[[Any, int], WorkerMain],
        generation: Any,
        workers_of: Callable[[Any], int],
        reload: Callable[[], Any | None] = lambda: None,
        on_exit: Callable[[int], None] = lambda pid: None,
        on_reload_done: Callable[[Any, Any], None] = lambda old, new: None,
        on_event: Callable[[str, str], None] = lambda kind, label: None,
    ) -> None:
        self._context = multiprocessing.get_context("fork")
        self._on_event = on_event
        self._parent = os.getpid()
        self._main_for = main_for
        self._workers_of = workers_of
        self._reload = reload
        self._on_exit = on_exit
        #: told (old, new) once a reload is done, and (failed, current) when one is given up
        self._reload_done = on_reload_done
        self._generation = generation
        self._running: dict[int, _Worker] = {}  # by the process's sentinel
        self._stopping = False
        self._failed = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._reload_asked = False

    # -- signals -------------------------------------------------------------------------------

    def _signal_all(self, signum: int, workers: list[_Worker] | None = None) -> None:
        for worker in workers if workers is not None else list(self._running.values()):
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True
        self._signal_all(signum)
        self._wake()

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self._reload_asked = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"!")

    # -- workers -------------------------------------------------------------------------------

    def _start(self, generation: Any, slot: int) -> _Worker:
        listening = self._context.Event()
        process = self._context.Process(
            target=_worker, args=(self._main_for(generation, slot), self._parent, listening.set), daemon=False
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)  # the child unblocks them once its handlers are reset
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        worker = self._running[process.sentinel] = _Worker(process, listening, generation, slot)
        if self._stopping:  # the stop signal came while this one was being forked
            self._signal_all(signal.SIGTERM, [worker])
        return worker

    def run(self) -> int:
        """Until SIGTERM or SIGINT; 0 after a requested stop, 1 after a failed start."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            for slot in range(self._workers_of(self._generation)):
                self._start(self._generation, slot)
            while self._running:
                ready = multiprocessing.connection.wait([*self._running, self._wake_read])
                for sentinel in ready:
                    if sentinel == self._wake_read:
                        os.read(self._wake_read, 64)
                        continue
                    assert isinstance(sentinel, int)
                    self._reap(self._running.pop(sentinel))
                if self._reload_asked and not self._stopping:
                    self._reload_asked = False
                    self._replace_generation()
        finally:
            os.close(self._wake_read)
            os.close(self._wake_write)
        return 1 if self._failed else 0

    def _reap(self, worker: _Worker) -> None:
        worker.process.join()
        if worker.process.pid is not None:
            self._on_exit(worker.process.pid)
        if self._stopping or worker.generation is not self._generation:
            return  # stopped, or retired by a reload
        code = worker.process.exitcode
        if not worker.listening.is_set():
            log.error(
                "worker %s failed before it was listening (exit code %s): stopping",
                worker.process.pid,
                code,
                extra={"event": "worker_failed"},
            )
            self._stopping = self._failed = True
            self._signal_all(signal.SIGTERM)
        else:
            log.error(
                "worker %s ended (exit code %s): starting another",
                worker.process.pid,
                code,
                extra={"event": "worker_replaced"},
            )
            self._on_event(WORKER_RESTARTS.key, _cause(code))
            self._start(self._generation, worker.slot)

    def _replace_generation(self) -> None:
        """SIGHUP: the next generation listening first, then the old one retired; on any failure, the old one stays."""
        log.info("SIGHUP: reloading the settings", extra={"event": "reload"})
        generation = self._reload()
        if generation is None:
            self._on_event(RELOADS.key, "refused")
            return  # the reload said why
        fresh = [self._start(generation, slot) for slot in range(self._workers_of(generation))]
        deadline = time.monotonic() + RELOAD_START_TIMEOUT
        while not self._stopping and not all(w.listening.is_set() for w in fresh):
            gone = [w for w in fresh if not w.process.is_alive()]
            if gone or time.monotonic() > deadline:
                log.error(
                    "reload failed: a new worker did not start listening; the old workers go on",
                    extra={"event": "reload_failed"},
                )
                self._signal_all(signal.SIGTERM, fresh)
                for worker in fresh:
                    worker.process.join(RELOAD_START_TIMEOUT)
                    self._running.pop(worker.process.sentinel, None)
                    if worker.process.pid is not None:
                        self._on_exit(worker.process.pid)
                self._reload_done(generation, self._generation)
                self._on_event(RELOADS.key, "failed")
                return
            ready = multiprocessing.connection.wait([w.process.sentinel for w in fresh] + [self._wake_read], 0.05)
            if self._wake_read in ready:
                os.read(self._wake_read, 64)
        if self._stopping:
            return
        old = [w for w in self._running.values() if w.generation is not generation]
        previous, self._generation = self._generation, generation
        self._signal_all(signal.SIGUSR2, old)  # retire: drain now, without the drain delay
        self._reload_done(previous, generation)
        self._on_event(RELOADS.key, "ok")
        log.info(
            "reloaded: %d new worker(s) listening, %d old one(s) draining",
            len(fresh),
            len(old),
            extra={"event": "reloaded"},
        )


def _cause(code: int | None) -> str:
    """Why a worker ended, as a metrics label: a signal (negative code), a failure status, or 0."""
    if code is None or code < 0:
        return "killed"
    return "crashed" if code else "exited"
