"""Running the proxy: the parent of one process, or of ``[server] workers`` processes sharing the port (uvicorn's
supervisors): its sockets, its generations of workers, reloads. A worker's own serving is ``serve.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.observe.families import RELOADS
from proxy.observe.store import parent_event, retire
from proxy.runtime.logs import log_uncaught, setup_logging
from proxy.runtime.serve import loop_factory, serve, tune_gc
from proxy.runtime.sockets import CannotListen, Listeners, bind, raise_open_files_limit, same_addresses
from proxy.runtime.workers import Supervisor, die_with_parent
from proxy.settings import Settings, SettingsError

log = logging.getLogger(__name__)


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
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory()) as runner:
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
        on_event=lambda kind, label: parent_event(folder, kind, label, time.time() if kind == RELOADS.key else None),
    )
    try:
        return supervisor.run()
    finally:
        parent.current.listeners.close()
        shutil.rmtree(folder, ignore_errors=True)
