"""The one thread that owns the engines: admitted requests wait in a bounded queue, and the
worker serves them round-robin, one input (or up to ``max_batch`` inputs of one bundle) per
engine call, so one client's 64 inputs never starve another's single one.

Knows requests as lists of texts on a ``Generation``; answers go back to the event loop through
``loop.call_soon_threadsafe``. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from pld.errors import InputError, PldError
from pld.runtime import Prediction

from .metrics import ServeMetrics
from .registry import Generation, Registry

__all__ = ["Job", "QueueFull", "Worker"]

log = logging.getLogger("pld.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` inputs already; ``retry_after`` seconds is a fair wait."""

    def __init__(self, pending: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {pending} inputs are queued and the limit is {limit}; retry "
            f"after {retry_after} s, or send fewer inputs per request"
        )
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    """One admitted request: its texts on the generation it was admitted with."""

    gen: Generation
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Prediction]]
    admitted: float = field(default_factory=time.perf_counter)
    results: list[Prediction | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    checked: bool = False
    taken: int = 0  # inputs handed to the engine
    answered: int = 0
    failed: bool = False  # a check failed or the client left: the rest is dropped

    def __post_init__(self) -> None:
        self.results = [None] * len(self.texts)


def _resolve(
    fut: asyncio.Future[list[Prediction]], value: list[Prediction] | BaseException
) -> None:
    if fut.done():  # the client left and its handler gave up waiting
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class Worker:
    """Owns every engine call: one thread, one queue, round-robin over admitted requests."""

    def __init__(
        self,
        registry: Registry,
        metrics: ServeMetrics,
        *,
        max_queue: int = 256,
        max_batch: int = 1,
        batch_window_ms: float = 0.0,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, batch_window_ms) / 1000
        self.cond = threading.Condition()
        self.jobs: deque[Job] = deque()  # jobs with inputs not yet taken, in serving order
        self.pending = 0  # inputs admitted and not yet answered
        self.per_input_s = 0.05  # moving average of engine time per input, for Retry-After
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="pld-serve-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every admitted job, then end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)

    # -- the event loop's side -----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise ``QueueFull`` (its inputs stay held on the generation only
        when admitted)."""
        n = len(job.texts)
        with self.cond:
            if self.pending + n > self.max_queue:
                wait = math.ceil(max(1.0, (self.pending + n) * self.per_input_s))
                raise QueueFull(self.pending, self.max_queue, wait)
            self.pending += n
            self.jobs.append(job)
            self.metrics.queue_inputs.set(self.pending)
            self.cond.notify()

    def abandon(self, job: Job) -> None:
        """The client left: drop the inputs not yet taken (those in the engine finish)."""
        with self.cond:
            self._fail(job)

    # -- the worker's side ---------------------------------------------------------------

    def _fail(self, job: Job) -> bool:
        """Mark ``job`` failed and drop its inputs not yet taken (lock held); False when it had
        already failed."""
        if job.failed:
            return False
        job.failed = True
        dropped = len(job.texts) - job.taken
        job.taken = len(job.texts)
        if job in self.jobs:
            self.jobs.remove(job)
        self._forget(job, dropped)
        return True

    def _forget(self, job: Job, n: int) -> None:
        """``n`` inputs of ``job`` leave the queue (lock held)."""
        self.pending -= n
        self.metrics.queue_inputs.set(self.pending)
        if n and self.registry.release(job.gen, n):
            job.gen.classifier.close()  # retired by a swap and now unused (worker thread)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.stopping:
                    self.cond.wait()
                if not self.jobs:
                    return
                if self.max_batch > 1 and self.window_s > 0:
                    # a partial batch waits up to the window for more inputs of its bundle
                    deadline = time.perf_counter() + self.window_s
                    while self._available() < self.max_batch and not self.stopping:
                        left = deadline - time.perf_counter()
                        if left <= 0:
                            break
                        self.cond.wait(left)
                fresh = [j for j in self.jobs if not j.checked]
            for job in fresh:
                self._check(job)
            with self.cond:
                batch = self._take()
            if batch:
                self._serve(batch)

    def _check(self, job: Job) -> None:
        """Tokenize every input of a new job once, before any of it is decoded: a bad input
        fails the whole request at once (422) without spending engine time."""
        try:
            clf = job.gen.classifier
            job.tokens = [len(clf.request_tokens(t)[0]) for t in job.texts]
        except Exception as exc:  # InputError (422), or a fault that fails only this request
            if not isinstance(exc, InputError):
                log.exception("%s: could not check a request", job.gen.task)
            with self.cond:
                self._fail(job)
            job.loop.call_soon_threadsafe(_resolve, job.future, exc)
            return
        job.checked = True

    def _available(self) -> int:
        """Inputs waiting on the head job's bundle (lock held)."""
        head = self.jobs[0].gen if self.jobs else None
        return sum(len(j.texts) - j.taken for j in self.jobs if j.gen is head and not j.failed)

    def _take(self) -> list[tuple[Job, int]]:
        """Up to ``max_batch`` inputs of the first checked job's generation, one per job per
        pass; the jobs served move to the back of the queue (lock held)."""
        head = next((j for j in self.jobs if j.checked and not j.failed), None)
        if head is None:
            return []
        gen, batch = head.gen, list[tuple[Job, int]]()
        served: list[Job] = []
        while len(batch) < self.max_batch:
            before = len(batch)
            for job in self.jobs:
                if len(batch) >= self.max_batch:
                    break
                if job.gen is gen and job.checked and not job.failed and job.taken < len(job.texts):
                    if job.taken == 0:  # its first input reaches the engine now
                        wait = time.perf_counter() - job.admitted
                        self.metrics.queue_wait.labels(gen.task).observe(wait)
                    batch.append((job, job.taken))
                    job.taken += 1
                    if job not in served:
                        served.append(job)
            if len(batch) == before:
                break
        rest = [j for j in self.jobs if j not in served]
        self.jobs = deque(rest + [j for j in served if j.taken < len(j.texts)])
        return batch

    def _serve(self, batch: list[tuple[Job, int]]) -> None:
        gen = batch[0][0].gen
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            preds = gen.classifier.classify_many([job.texts[i] for job, i in batch])
        except PldError as exc:
            error, preds = exc, []
        except Exception as exc:  # an engine fault: fail these requests, keep serving
            log.exception("%s: engine error", gen.task)
            error, preds = exc, []
        per = (time.perf_counter() - t0) / len(batch)
        self.per_input_s = 0.9 * self.per_input_s + 0.1 * per
        self.metrics.batch_size.observe(len(batch))
        done: list[Job] = []
        with self.cond:
            for k, (job, i) in enumerate(batch):
                if error is None:
                    job.results[i] = preds[k]
                    self.metrics.inputs.labels(gen.task, gen.version).inc()
                    self.metrics.input_tokens.labels(gen.task, gen.version).inc(job.tokens[i])
                job.answered += 1
                if error is not None and self._fail(job):
                    job.loop.call_soon_threadsafe(_resolve, job.future, error)
                elif not job.failed and job.answered == len(job.texts):
                    done.append(job)
            self._forget_batch(batch)
        for job in done:
            out = [p for p in job.results if p is not None]
            job.loop.call_soon_threadsafe(_resolve, job.future, out)

    def _forget_batch(self, batch: list[tuple[Job, int]]) -> None:
        counts: dict[int, tuple[Job, int]] = {}
        for job, _ in batch:
            j, n = counts.get(id(job), (job, 0))
            counts[id(job)] = (j, n + 1)
        for job, n in counts.values():
            self._forget(job, n)
