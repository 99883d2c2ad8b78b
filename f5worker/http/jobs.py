"""A job run in a worker thread, its output crossing to the event loop as it is made.

Synthesis blocks (the scheduler's futures), so each request's job runs in a thread of its own; what
it emits (audio bytes, stream items) goes through an ``asyncio.Queue`` to the response. When the
client goes away the response calls :meth:`JobStream.cancel`, and the job's next emission raises
:class:`~f5worker.delivery.JobCancelled`, which stops it and drops its chunks not yet started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from f5worker.audio import StreamEncoder
from f5worker.delivery import JobCancelled
from f5worker.formats import SAMPLE_RATE
from f5worker.pipeline import Failure

Outcome = dict[str, Any] | Failure


@dataclass(frozen=True)
class Done:
    """The last thing a job stream carries: the job's result or failure."""

    outcome: Outcome


class JobStream:
    """One job in ``executor``; iterate it for what the job puts, then its :class:`Done`."""

    def __init__(self, executor: Executor):
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._first: Any = None

    def start(self, work: Callable[[], Outcome]) -> JobStream:
        def run() -> None:
            outcome: Outcome | None = None
            try:
                outcome = work()
            finally:  # an exception here is a bug in the caller's work; the thread logs it
                self._loop.call_soon_threadsafe(self._queue.put_nowait, Done(outcome or Failure(
                    "internal error: the job ended without an outcome", RuntimeError)))

        self._loop.run_in_executor(self._executor, run)
        return self

    def put(self, item: Any) -> None:
        """From the job's thread: send ``item`` to the response, or raise JobCancelled once it is gone."""
        if self._cancelled.is_set():
            raise JobCancelled("the client went away")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        self._cancelled.set()

    async def first(self) -> Any:
        """The first thing worth answering with (empty bytes are skipped): output, or the :class:`Done`
        of a job that ended without any. :meth:`items` starts with it again."""
        while not (item := await self._queue.get()):
            pass
        self._first = item
        return item

    async def items(self) -> AsyncIterator[Any]:
        """What the job puts, from :meth:`first`'s item on, up to and including its :class:`Done`."""
        item, self._first = self._first, None
        while True:
            if item is None:
                item = await self._queue.get()
            yield item
            if isinstance(item, Done):
                return
            item = None


class ByteSink:
    """A synthesis sink (``delivery.AudioSink``) that encodes each part as it comes and puts its bytes
    on the job stream; :meth:`finish` puts the encoder's last bytes (all of them for flac)."""

    def __init__(self, fmt: str, stream: JobStream):
        self.encoder = StreamEncoder(fmt, SAMPLE_RATE)
        self.stream = stream
        self.count = 0

    def send(self, wave: np.ndarray) -> None:
        data = self.encoder.encode(wave)
        self.count += 1
        self.stream.put(data)  # even empty: a client that went away is noticed at every chunk

    def finish(self) -> None:
        self.stream.put(self.encoder.finish())
