"""Ended spans on their way to the collector: a bounded queue and one thread that sends it in batches.

Rules it keeps:
- the queue holds at most ``queue_size`` spans: past it a new span is dropped and counted
  (``SpanCounts.dropped``), so a slow or dead collector costs memory it can name and the
  callers nothing;
- the event loop only appends to the queue (``on_end``, under a lock held for an append);
  the export, retries and their waits happen on the thread;
- a batch the exporter could not send is counted (``SpanCounts.unsent``), never retried
  past the exporter's own timeout;
- ``shutdown(budget)`` sends what is queued and returns within ``budget`` seconds, whatever
  the collector does (the thread is a daemon: a collector that never answers keeps no
  process alive).

The SDK's ``BatchSpanProcessor`` does the same but counts its drops only into an SDK meter
of its own; this one counts them where ``/-/metrics`` reads them. Only ``Tracing`` imports
this module, and only when tracing is on: the SDK is not loaded otherwise.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.observe.tracing import SpanCounts

log = logging.getLogger(__name__)


class BoundedExport(SpanProcessor):
    """A span processor (the SDK's ``SpanProcessor`` protocol): a bounded queue sent by one thread in batches."""

    def __init__(
        self, exporter: SpanExporter, queue_size: int, batch_size: int, delay: float, counts: SpanCounts
    ) -> None:
        self._exporter = exporter
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._delay = delay
        self.counts = counts
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: callers of ``force_flush`` waiting for the queue to be sent
        self._flushes: list[threading.Event] = []
        #: ``time.monotonic()`` past which the thread sends nothing more (set by ``shutdown``)
        self._stop_at: float | None = None
        self._thread: threading.Thread | None = None
        self._failures_logged = 0.0

    def start(self) -> None:
        """The export thread started (in the process that exports: after any fork)."""
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    # -- the SpanProcessor protocol -------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def _on_ending(self, span: Span) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        with self._lock:
            if len(self._queue) >= self._queue_size:
                self.counts.dropped += 1
                return
            self._queue.append(span)
            full = len(self._queue) == self._batch_size  # the thread, woken once, sends until the queue is empty
        if full:
            self._wake.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Everything queued now sent (or failed) before this returns True; False if ``timeout_millis`` passed."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        with self._lock:
            self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout_millis / 1000)

    def shutdown(self, budget: float = 5.0) -> None:
        """What is queued sent within ``budget`` seconds, then the exporter shut (which ends any retry's wait)."""
        self._stop_at = time.monotonic() + budget
        self._wake.set()
        if self._thread is not None:
            self._thread.join(budget)
        self._exporter.shutdown()
        if self._thread is not None:
            self._thread.join(0.5)  # a retry's wait ends as the exporter shuts; a call under way keeps its timeout

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)  # the export period, or sooner when a batch is full, a flush or a stop asks
            self._wake.clear()
            with self._lock:
                flushes, self._flushes = self._flushes, []
            self._send_queued()
            for done in flushes:
                done.set()
            if self._stop_at is not None:
                return

    def _send_queued(self) -> None:
        while self._stop_at is None or time.monotonic() < self._stop_at:
            with self._lock:
                count = min(self._batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
            if not batch:
                return
            if self._send(batch):
                self.counts.sent += count
            else:
                self.counts.unsent += count
        with self._lock:  # past the stop's budget: what is left is not sent
            self.counts.unsent += len(self._queue)
            self._queue.clear()

    def _send(self, batch: list[ReadableSpan]) -> bool:
        try:
            ok = self._exporter.export(batch) is SpanExportResult.SUCCESS
        except Exception as exc:  # an exporter's bug must not end the thread
            log.warning("span export raised %s", type(exc).__name__, extra={"event": "trace_export_failed"})
            return False
        if not ok and time.monotonic() - self._failures_logged > 60:  # at most a line a minute
            self._failures_logged = time.monotonic()
            log.warning(
                "the trace collector did not take %d spans (dropped; the callers are not affected)",
                len(batch),
                extra={"event": "trace_export_failed"},
            )
        return ok
