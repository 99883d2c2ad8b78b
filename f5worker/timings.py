"""Per-job stage timings, reported in milliseconds in every job's output."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = round(self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000, 2)

    def mark(self, stage: str) -> None:
        """Record, once, the milliseconds from the job's start to now (e.g. its first audio)."""
        self.ms.setdefault(stage, round((time.perf_counter() - self._started) * 1000, 2))

    def report(self) -> dict[str, float]:
        return {**self.ms, "total": round((time.perf_counter() - self._started) * 1000, 2)}
