"""One thread runs the model; jobs hand it work items and wait for each item's audio.

Jobs run in their own threads (RunPod's handler runs each with ``asyncio.to_thread``) and call
:meth:`Scheduler.submit` or :meth:`Scheduler.results`, once per job with all its items. The
scheduler thread makes one call of the sampling function per batch: the next item of the job
whose turn it is, then the waiting items that can share its forward pass (equal ``batch_key``),
taken from the jobs in turn, one per job per round, up to ``max_batch``. The jobs served then
go to the back of the turn, and a new job joins it at the back. So a job waits for the running
batch and then for at most one item of each job ahead of it, not for all of a long job's chunks
(head-of-line blocking: BENCHMARKS.md section 7), and no job waits more batches than there are
jobs ahead of it. It never waits for a batch to fill: a lone item starts at once, and what
arrives while a batch runs joins the next one. A job submitted with ``early_first`` (one whose
audio goes out as it is made) has its first item batched without its own other items: a pass
of several items takes longer than a pass of one (BENCHMARKS.md section 4), so a stream's first
audio comes after that one item's pass, not the pass of all its chunks (other jobs' items still
join it).

Sizing ``max_batch`` by memory: a batch's activations grow linearly with its item count times
the frames per item (reference + generated, at most ``tts_model.MAX_CONTEXT_S`` seconds), and
classifier-free guidance runs the model on twice the batch. Measure the peak memory of one
item at the longest chunk (``bench/gpu_rtf.py`` prints it) minus the weights, and take
``max_batch = (free memory after loading) / (that per-item peak)``, rounded down. Too large a
limit costs time, never a job: a batch that runs out of memory is split in halves and retried,
and only an item that does not fit alone fails.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from f5worker.engine.memory import OUT_OF_MEMORY, release_memory
from f5worker.engine.sampler import WorkItem, batch_key
from f5worker.settings import CONCURRENCY_LIMIT

log = logging.getLogger(__name__)

SampleFn = Callable[[list[WorkItem]], list[np.ndarray]]  # one batched call: one wave per item, in order

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_QUEUE = 1024  # items: a long job at speed 0.25 is about 100 chunks
DEFAULT_GPU_CONCURRENCY = 8  # concurrent RunPod jobs on a GPU: their chunks fill a default batch


class QueueFull(RuntimeError):
    """A job's items could not all be admitted; none were. Retrying later can succeed."""

    def __init__(self, items: int, waiting: int, limit: int):
        if items > limit:
            reason = f"this job alone has {items} items, over the queue limit of {limit}"
        else:
            reason = f"{waiting} items are waiting and the limit is {limit}; this job needs room for {items}"
        super().__init__(f"the synthesis queue is full: {reason}")
        self.items, self.waiting, self.limit = items, waiting, limit


class SchedulerClosed(RuntimeError):
    """The scheduler was closed: it takes no new work, and work that had not started fails with this."""


@dataclass(frozen=True, eq=False)  # compared by identity: an item is in one job's queue once
class _Waiting:
    item: WorkItem
    key: Hashable
    future: Future[np.ndarray]
    alone: bool = False  # an early_first job's first item: batched without the job's other items


class Scheduler:
    """Owns the sampling function (the model) and the one thread that calls it.

    ``max_queue`` bounds the items waiting (not yet started); a submission that does not fit
    raises :class:`QueueFull` at once. ``key`` says which items share a forward pass.
    """

    def __init__(self, sample: SampleFn, max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE,
                 key: Callable[[WorkItem], Hashable] = batch_key):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._sample = sample
        self._key = key
        self._jobs: dict[int, deque[_Waiting]] = {}  # each submission's waiting items, in turn order
        self._job_ids = itertools.count()
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="synthesis-scheduler", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[WorkItem], early_first: bool = False) -> list[Future[np.ndarray]]:
        """Queue ``items`` (all or none); one future per item, resolved with its wave or its error.

        Cancelling a future before its batch starts drops the item. ``early_first``: the first
        item is batched without the others (module docstring).
        """
        keys = [self._key(item) for item in items]  # here, so that a bad item fails its job, not the thread
        with self._wakeup:
            if self._closed:
                raise SchedulerClosed("the synthesis scheduler is closed")
            self._drop_cancelled()
            waiting = self._count()
            if waiting + len(items) > self.max_queue:
                raise QueueFull(len(items), waiting, self.max_queue)
            futures: list[Future[np.ndarray]] = [Future() for _ in items]
            if items:
                alone = [early_first] + [False] * (len(items) - 1)
                self._jobs[next(self._job_ids)] = deque(map(_Waiting, items, keys, futures, alone))
            self._wakeup.notify()
        return futures

    def results(self, items: Sequence[WorkItem], early_first: bool = False) -> Iterator[np.ndarray]:
        """Submit a job's items now (or raise :class:`QueueFull`), then yield each item's wave in
        order, each as soon as it and those before it are done. An item's error is raised in its
        turn; leaving the loop early (an error, ``close()`` on the iterator) cancels the items not
        yet started. ``early_first``: as for :meth:`submit`."""
        return _in_order(self.submit(items, early_first))

    @property
    def waiting(self) -> int:
        """Items queued and not yet started."""
        with self._wakeup:
            self._drop_cancelled()
            return self._count()

    def close(self) -> None:
        """Take no more work, fail the items not yet started (:class:`SchedulerClosed`), let the
        running batch finish, and stop the thread."""
        with self._wakeup:
            self._closed = True
            left, self._jobs = self._jobs, {}
            self._wakeup.notify_all()
        for entry in itertools.chain.from_iterable(left.values()):
            if entry.future.set_running_or_notify_cancel():
                entry.future.set_exception(SchedulerClosed("the synthesis scheduler closed before this item started"))
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _count(self) -> int:
        return sum(map(len, self._jobs.values()))

    def _drop_cancelled(self) -> None:
        for job, queue in list(self._jobs.items()):
            if any(entry.future.cancelled() for entry in queue):
                kept = deque(entry for entry in queue if not entry.future.cancelled())
                if kept:
                    self._jobs[job] = kept  # an existing key: the job keeps its turn
                else:
                    del self._jobs[job]

    def _loop(self) -> None:
        while batch := self._next_batch():
            self._run(batch)

    def _next_batch(self) -> list[_Waiting]:
        """Blocks until there is work; ``[]`` once closed."""
        with self._wakeup:
            while True:
                self._wakeup.wait_for(lambda: self._jobs or self._closed)
                if self._closed:
                    return []
                if batch := self._take():
                    return batch

    def _take(self) -> list[_Waiting]:
        """The next batch (module docstring), marked running (an item cancelled meanwhile is
        dropped); the jobs served move to the back of the turn, keeping their order."""
        self._drop_cancelled()
        if not self._jobs:
            return []
        key = next(iter(self._jobs.values()))[0].key
        fitting = (itertools.islice((entry for entry in queue if entry.key == key), 1 if queue[0].alone else None)
                   for queue in self._jobs.values())
        rounds = itertools.zip_longest(*fitting)  # round r: each job's r-th item with the key, jobs in turn
        chosen = list(itertools.islice((entry for row in rounds for entry in row if entry is not None), self.max_batch))
        taken = set(chosen)
        for job in [job for job, queue in self._jobs.items() if not taken.isdisjoint(queue)]:
            queue = self._jobs.pop(job)
            if rest := deque(entry for entry in queue if entry not in taken):
                self._jobs[job] = rest
        return [entry for entry in chosen if entry.future.set_running_or_notify_cancel()]

    def _run(self, batch: list[_Waiting]) -> None:
        """One sampling call for ``batch``; out of memory: each half again, down to one item."""
        outcome = self._call([entry.item for entry in batch])
        if isinstance(outcome, list):
            for entry, wave in zip(batch, outcome, strict=True):
                entry.future.set_result(wave)
            return
        if isinstance(outcome, OUT_OF_MEMORY):
            # the traceback's frames hold the failed call's tensors: drop it before freeing memory
            outcome = outcome.with_traceback(None)
            release_memory()
            if len(batch) > 1:
                log.warning("out of memory on a batch of %d items: retrying it in halves", len(batch))
                half = (len(batch) + 1) // 2
                self._run(batch[:half])
                self._run(batch[half:])
                return
            log.warning("out of memory on one item alone: it fails")
        for entry in batch:
            entry.future.set_exception(outcome)

    def _call(self, items: list[WorkItem]) -> list[np.ndarray] | Exception:
        """The sampling function's waves for ``items``, or what it raised."""
        try:
            waves = list(self._sample(items))
        except Exception as err:  # the batch's items get the error; the thread goes on
            if not isinstance(err, OUT_OF_MEMORY):
                log.exception("a batch of %d items failed", len(items))
            return err
        if len(waves) != len(items):
            return RuntimeError(f"the sampling function returned {len(waves)} waves for {len(items)} items")
        return waves


def _in_order(futures: list[Future[np.ndarray]]) -> Iterator[np.ndarray]:
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()  # a no-op on items done or running


def max_concurrency(env_value: str | None, device: str) -> int:
    """How many jobs one worker takes at once (RunPod's ``concurrency_modifier``), from ``MAX_CONCURRENCY``.

    Unset or empty: ``DEFAULT_GPU_CONCURRENCY`` on a GPU, where concurrent jobs' chunks share a
    batched forward pass; 1 on CPU, where batching buys nothing and jobs would only share cores.
    """
    if env_value is None or not env_value.strip():
        return DEFAULT_GPU_CONCURRENCY if device.startswith("cuda") else 1
    text = env_value.strip()
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= CONCURRENCY_LIMIT:
        raise ValueError(f"MAX_CONCURRENCY={env_value!r}: must be a whole number from 1 to {CONCURRENCY_LIMIT}")
    return value
