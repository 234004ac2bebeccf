"""One generation thread for the whole server, shared fairly between requests.

Torch runs in a single worker thread; the event loop only parses requests and
streams results. Each request becomes a :class:`Job`: a Python iterator (one
``next`` = one decoding step of all ``n`` samples of a text request, one sampler step
of a diffusion request, or the whole batch of a GAN or VAE request). The worker
advances every active job by one step per round (round-robin), so all clients
stream at the same time and a long request cannot starve a short one. At most ``max_active`` jobs run; up to ``max_queued``
more wait in arrival order; beyond that :meth:`Scheduler.submit` raises
:class:`Busy` (the server answers 429).

A job whose client went away is cancelled from the event loop; the worker closes
its iterator (freeing its KV cache) before the next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Callable, Iterator

from aigc.generate.engine import RowsFull


class Busy(Exception):
    """Every generation slot and every queue place is taken."""


class Job:
    """One request's work; results arrive on :attr:`queue` as ``(kind, value)`` pairs.

    Kinds: ``"item"`` (one step's output), ``"end"`` (finished), ``"error"`` (an exception
    raised by the iterator, passed on to the request handler).
    """

    def __init__(self, make_iter: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self.make_iter = make_iter
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.finished = False
        self.submitted = time.perf_counter()
        self.started: float | None = None  # when the worker first ran it (queue wait = started - submitted)
        self.it: Iterator | None = None
        self.deferred = False  # has it waited for batch rows?
        self.filtered = False  # cancelled because the content policy cut every output (not a client that left)

    def cancel(self) -> None:
        """Stop generating (called from the event loop when the client disconnects)."""
        self.cancelled = True

    def _send(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True

    async def results(self):
        """Yield each item as it is produced; re-raise the iterator's exception; cancel when abandoned."""
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            if not self.finished:
                self.cancel()


class Scheduler:
    """The generation thread and its queue (see the module docstring).

    Args:
        max_active: jobs generating at once (round-robin).
        max_queued: jobs waiting for a slot; more are refused with :class:`Busy`.
        on_cancel: called (in the worker thread) for each job dropped because it was cancelled.
        on_defer: called (in the worker thread) the first time a job waits for batch rows.
        after_round: called (in the worker thread) after every job has been advanced once: the
            batch engines' ``step``, which decode the next token of all their sequences together.
            A job whose first step raises :class:`~aigc.generate.engine.RowsFull` goes back to the
            head of the queue until rows free up.
    """

    def __init__(self, max_active: int = 64, max_queued: int = 256, on_cancel: Callable[[Job], None] | None = None,
                 after_round: list[Callable[[], None]] = (), on_defer: Callable[[Job], None] | None = None):
        self.max_active, self.max_queued = max_active, max_queued
        self.on_cancel, self.on_defer = on_cancel, on_defer
        self.after_round = list(after_round)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="aigc-generate", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Jobs generating now."""
        return len(self._active)

    def submit(self, make_iter: Callable[[], Iterator]) -> Job:
        """Queue a job; ``make_iter`` is called in the worker thread when the job starts.

        Must be called from the event loop's thread.

        Raises:
            Busy: ``max_active`` jobs run and ``max_queued`` wait already.
        """
        job = Job(make_iter, asyncio.get_running_loop())
        with self._cond:
            if len(self._active) + len(self._waiting) >= self.max_active + self.max_queued:
                raise Busy(f"server busy: {len(self._active)} requests generating and {len(self._waiting)} "
                           "queued; retry later")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        """Stop the worker after its current step; unfinished jobs are cancelled."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _finish(self, job: Job, kind: str, value=None) -> None:
        job.finished = True
        if job.it is not None and hasattr(job.it, "close"):
            job.it.close()
        self._active.remove(job)
        if kind == "cancelled":
            if self.on_cancel is not None:
                self.on_cancel(job)
            job._send("end")  # wakes a handler still waiting (a non-streaming request whose client left)
        else:
            job._send(kind, value)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._active):
                    self._cond.wait()
                if self._closed:
                    for job in self._active + list(self._waiting):
                        job.cancel()
                    return
                while self._waiting and len(self._active) < self.max_active:
                    job = self._waiting.popleft()
                    if job.cancelled:  # the client left while it waited
                        job.finished = True
                        if self.on_cancel is not None:
                            self.on_cancel(job)
                        job._send("end")
                        continue
                    self._active.append(job)
            deferred = []
            for job in list(self._active):
                if job.cancelled:
                    self._finish(job, "cancelled")
                    continue
                try:
                    if job.it is None:
                        job.started = time.perf_counter()
                        job.it = job.make_iter()
                    item = next(job.it)
                except StopIteration:
                    self._finish(job, "end")
                except RowsFull:  # no batch rows free: wait at the head of the queue
                    if not job.deferred and self.on_defer is not None:
                        self.on_defer(job)
                    job.it, job.deferred = None, True
                    self._active.remove(job)
                    deferred.append(job)
                except Exception as e:  # noqa: BLE001 - handed to the request, which reports it
                    self._finish(job, "error", e)
                else:
                    job._send("item", item)
            if deferred:
                with self._cond:
                    self._waiting.extendleft(reversed(deferred))
            for step in self.after_round:
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - a failed batch step fails the jobs in it
                    for job in list(self._active):
                        self._finish(job, "error", e)
            if deferred and not self._active:
                time.sleep(0.001)  # nothing can free rows this round; do not spin
