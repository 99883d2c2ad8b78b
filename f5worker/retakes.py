"""Retakes (``"verify": true``): F5-TTS sometimes skips, repeats or slurs words in a chunk, and
sampling again with other noise is upstream's own advice. Each chunk's audio is recognised
(Whisper) and scored against the chunk's text, both normalised the same way (``wer``); while the
word error rate is over ``max_wer`` the chunk is synthesized again, through the engine's
scheduler like any other work, with the noise of its next attempt (``WorkItem.attempt``: the
same job gives the same retakes), up to ``max_attempts`` syntheses. The best take is kept (the
earliest of equal scores).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from f5worker import wer
from f5worker.engine.sampler import WorkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    score: wer.Score  # of the take kept
    attempts: int  # syntheses made


class Retakes:
    """One output's chunks, checked in order (``keep`` is ``TTSModel.synthesize``'s ``keep``).

    ``hear(wave)``: what the recogniser heard, normalised; ``spoken(text)``: a chunk's text
    normalised the same way; ``sample(item)``: a retake's wave from the engine.
    """

    def __init__(self, hear: Callable[[np.ndarray], str], spoken: Callable[[str], str],
                 sample: Callable[[WorkItem], np.ndarray], max_attempts: int, max_wer: float):
        self.hear, self.spoken, self.sample = hear, spoken, sample
        self.max_attempts, self.max_wer = max_attempts, max_wer
        self.checks: list[Check] = []

    def keep(self, item: WorkItem, wave: np.ndarray) -> np.ndarray:
        reference = self.spoken(item.text)
        best, best_score = wave, wer.score(reference, self.hear(wave))
        attempts = 1
        while best_score.wer > self.max_wer and attempts < self.max_attempts:
            retake = self.sample(dataclasses.replace(item, attempt=attempts))
            attempts += 1
            score = wer.score(reference, self.hear(retake))
            log.info("chunk %d: take %d has WER %.3f (best so far %.3f)", item.chunk_index, attempts, score.wer,
                     best_score.wer)
            if score.wer < best_score.wer:
                best, best_score = retake, score
        self.checks.append(Check(best_score, attempts))
        return best

    def report(self) -> dict[str, Any]:
        """The output's WER over the kept takes, the syntheses made, and both per chunk."""
        return {
            "wer": round(wer.total([c.score for c in self.checks]).wer, 4),
            "attempts": sum(c.attempts for c in self.checks),
            "chunks": [{"wer": round(c.score.wer, 4), "attempts": c.attempts} for c in self.checks],
        }
