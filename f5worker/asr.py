"""Speech recognition with Whisper: word timings of generated audio, and transcripts of reference
voices uploaded without one.

| variable       | default                          | meaning                                        |
|----------------|----------------------------------|------------------------------------------------|
| `ASR_ENABLED`  | `0`                              | `1` turns recognition on for this endpoint     |
| `ASR_MODEL`    | `openai/whisper-large-v3-turbo`  | Hugging Face repo id (`hf://` prefix optional) |
| `ASR_LANGUAGE` | (detected per clip)              | Whisper language code, e.g. `en`               |

The model's files live in the same Hugging Face cache on the network volume as F5-TTS's and are
resolved the same way (``model_cache.resolve_file``: cache first, download only when allowed).
Nothing of Whisper is imported or loaded when the worker starts, enabled or not: the first job that
needs recognition loads it (its ``timings_ms`` shows ``load_asr``), so a worker that never asks for
word timings or transcripts starts exactly as fast as one without this module's features. This
module itself imports neither torch nor ``transformers`` at import time: the provisioning code and
the validator use :func:`f5worker.model_files.asr_file_refs` cheaply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from f5worker.model_cache import resolve_file
from f5worker.model_files import AsrSettings, ModelFilesMissing
from f5worker.timings import Timings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float


def clean_words(chunks: Iterable[Mapping[str, Any]], duration_s: float) -> list[Word]:
    """The pipeline's word chunks made safe to hand out: text stripped, empty words dropped, every
    time inside ``[0, duration_s]``, ``start <= end``, and each word starting no earlier than the
    previous one ended.

    A model can emit odd timestamps (an ``end`` of ``None`` for the last word, times past the end
    of the clip, overlaps after long-form stitching). Words are never re-sorted: their order is the
    order they were spoken, so a time that goes backwards is moved forward instead.
    """
    words: list[Word] = []
    previous_end = 0.0
    for chunk in chunks:
        text = str(chunk.get("text") or "").strip()
        if not text:
            continue
        start, end = (*(chunk.get("timestamp") or ()), None, None)[:2]
        start = _clamp(start if start is not None else previous_end, previous_end, duration_s)
        end = _clamp(end if end is not None else duration_s, start, duration_s)
        words.append(Word(text, round(start, 3), round(end, 3)))
        previous_end = words[-1].end
    return words


def _clamp(value: float, low: float, high: float) -> float:
    value = float(value)
    if value != value:  # NaN
        return low
    return min(max(value, low), high)


class SpeechRecognizer:
    """Whisper through ``transformers``' ASR pipeline, loaded on first use. Calls are serialised:
    one model instance serves every job of the worker."""

    def __init__(self, settings: AsrSettings, cache_dir: Path, allow_download: bool, device: str | None = None,
                 dtype: Any = None, fallbacks: Sequence[Path] = ()):
        """``device``: None picks CUDA when available; ``dtype`` (a torch dtype): None is float16
        on CUDA, float32 on CPU; ``fallbacks``: read-only caches after ``cache_dir``, as for the model."""
        self.settings = settings
        self.cache_dir = cache_dir
        self.allow_download = allow_download
        self.fallbacks = tuple(fallbacks)
        self.device = device
        self.dtype = dtype
        self._pipe: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def _pipeline(self, timings: Timings) -> Any:
        """The pipeline, built on the first call (measured as ``load_asr``); the caller holds the lock."""
        if self._pipe is None:
            with timings.measure("load_asr"):
                self._pipe = self._load()
        return self._pipe

    def _load(self) -> Any:
        import torch
        from transformers import pipeline

        from f5worker.tts_model import pick_device

        started = time.perf_counter()
        paths = [resolve_file(ref, self.cache_dir, self.allow_download, self.fallbacks)
                 for ref in self.settings.file_refs()]
        if len({p.parent for p in paths}) != 1:
            raise ModelFilesMissing(f"the files of {self.settings.repo_id} are not in one snapshot: {paths}")
        device = self.device or pick_device()
        dtype = self.dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
        pipe = pipeline("automatic-speech-recognition", model=str(paths[0].parent), dtype=dtype, device=device)
        log.info("loaded ASR model %s on %s (%s) in %.2fs", self.settings.repo_id, device, dtype,
                 time.perf_counter() - started)
        return pipe

    def _recognise(self, wave: np.ndarray, sample_rate: int, timings: Timings, **kwargs: Any) -> dict[str, Any]:
        generate_kwargs = {"task": "transcribe"}
        if self.settings.language:
            generate_kwargs["language"] = self.settings.language
        with self._lock:
            pipe = self._pipeline(timings)
            # the pipeline resamples to Whisper's 16 kHz itself (torchaudio, as audio.resample does)
            clip = {"raw": np.asarray(wave, dtype=np.float32), "sampling_rate": sample_rate}
            return pipe(clip, generate_kwargs=generate_kwargs, **kwargs)

    def words(self, wave: np.ndarray, sample_rate: int, timings: Timings) -> list[Word]:
        """Every recognised word of ``wave`` with its start and end in seconds (see ``clean_words``).
        Clips over 30 s go through Whisper's sequential long-form decoding."""
        result = self._recognise(wave, sample_rate, timings, return_timestamps="word")
        return clean_words(result.get("chunks", ()), len(wave) / sample_rate)

    def transcribe(self, wave: np.ndarray, sample_rate: int, timings: Timings) -> str:
        """The text spoken in ``wave`` (a reference clip: at most 12 s). Decoded with segment
        timestamps, as openai-whisper's own ``transcribe`` does by default, under the same
        decoding rules as the word-timings path."""
        return str(self._recognise(wave, sample_rate, timings, return_timestamps=True)["text"]).strip()
