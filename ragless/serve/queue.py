"""The bounded queue of model work: one worker thread runs questions and ingestions one at a time, in order.

One worker, because the models already use every core (on 2 cores two concurrent forwards are slower than two in
turn) and because an index has one writer. At most ``capacity`` jobs wait behind the running one; a submission past
that raises `QueueFull` at once (the endpoint answers 429 with Retry-After), so a burst is refused, not buffered into
latency no client will wait for. A job still waiting when its request gives up (timeout, client gone) is cancelled
and never runs; a running job runs to its end (a forward pass cannot be interrupted) and its result is dropped.

    work = WorkQueue(capacity=8)
    future = work.submit(asker.ask, "question")     # concurrent.futures.Future; QueueFull when full
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class QueueFull(RuntimeError):
    """The queue holds ``capacity`` waiting jobs already."""


class WorkQueue:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"queue capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragless-model")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and neither finished nor cancelled (the running one included)
        self._running = 0
        self.rejected = 0  # submissions refused because the queue was full

    @property
    def depth(self) -> int:
        """Jobs waiting (not the running one)."""
        with self._lock:
            return self._pending - self._running

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._pending - self._running >= self.capacity and self._pending > 0:
                self.rejected += 1
                raise QueueFull(f"{self._pending - self._running} jobs are waiting (the limit)")
            self._pending += 1

        def job() -> Any:
            with self._lock:
                self._running += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1
                    self._pending -= 1

        future = self._pool.submit(job)
        future.add_done_callback(self._on_done)
        return future

    def _on_done(self, future: Future) -> None:
        if future.cancelled():  # never ran, so `job` did not count it out
            with self._lock:
                self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
