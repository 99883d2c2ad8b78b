"""The F5-TTS model and Vocos vocoder, loaded once per worker process, and synthesis.

Loading and the maths are upstream's (``f5_tts.infer.utils_infer``); this module decides the
device, where the files come from, and holds the one instance the worker uses.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_files import ModelFilesCorrupt, ModelSources, ResolvedModel, resolve_model

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000  # F5-TTS and Vocos both work at 24 kHz
MAX_CONTEXT_S = 22.0  # upstream's budget of reference + generated seconds per chunk
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)

# on_chunk(chunk number from 1, chunk count, the audio that chunk made final)
ChunkCallback = Callable[[int, int, np.ndarray], None]


@dataclass(frozen=True)
class SynthesisParams:
    nfe_step: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float = -1.0
    speed: float = 1.0
    cross_fade_duration: float = 0.15
    seed: int = 0


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def chunk_budget(ref_audio_s: float, ref_text: str, speed: float) -> int:
    """Upstream's per-chunk text budget: the reference's bytes-per-second rate over what is
    left of the context window (same formula as ``utils_infer.infer_process``)."""
    rate = len(ref_text.encode("utf-8")) / ref_audio_s
    return max(1, int(rate * (MAX_CONTEXT_S - ref_audio_s) * speed))


class TTSModel:
    """One loaded F5-TTS + vocoder. ``synthesize`` is serialised: the model is not re-entrant,
    and the seed is global RNG state."""

    def __init__(self, model: torch.nn.Module, vocoder: torch.nn.Module, device: str, resolved: ResolvedModel):
        self.model = model
        self.vocoder = vocoder
        self.device = device
        self.resolved = resolved
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, sources: ModelSources, cache_dir: Path, allow_download: bool, device: str | None = None,
        fallbacks: Sequence[Path] = (),
    ) -> TTSModel:
        from f5_tts import model as f5_models
        from f5_tts.infer.utils_infer import load_model, load_vocoder

        device = device or pick_device()
        started = time.perf_counter()
        resolved = resolve_model(sources, cache_dir, allow_download, fallbacks)
        try:
            vocoder = load_vocoder("vocos", is_local=True, local_path=str(resolved.vocoder_dir), device=device)
        except Exception as err:  # noqa: BLE001 - whatever the loader trips on, the file is the cause
            raise ModelFilesCorrupt("the vocoder", sorted(resolved.vocoder_dir.iterdir()), err) from err
        try:
            model = load_model(
                getattr(f5_models, resolved.backbone),
                resolved.arch,
                str(resolved.checkpoint),
                mel_spec_type="vocos",
                vocab_file=str(resolved.vocab or ""),
                device=device,
            )
        except Exception as err:  # noqa: BLE001
            files = [resolved.checkpoint, *([resolved.vocab] if resolved.vocab else [])]
            raise ModelFilesCorrupt(f"the {resolved.name} model", files, err) from err
        log.info(
            "loaded %s (%s) from %s on %s in %.2fs",
            resolved.name, resolved.backbone, resolved.checkpoint, device, time.perf_counter() - started,
        )
        return cls(model, vocoder, device, resolved)

    def plan(self, reference_s: float, ref_text: str, text: str, speed: float) -> list[str]:
        """``text`` split into the chunks upstream would synthesize one at a time."""
        from f5_tts.infer.utils_infer import chunk_text

        return chunk_text(text, max_chars=chunk_budget(reference_s, ref_text, speed))

    def synthesize(self, ref_audio: torch.Tensor, ref_text: str, chunks: list[str], params: SynthesisParams,
                   on_chunk: ChunkCallback | None = None) -> np.ndarray:
        """Speech for ``chunks`` (from :meth:`plan`) in the voice of ``ref_audio`` (mono, 24 kHz,
        shape ``(1, n)``), joined with upstream's cross-fade.

        Chunks run one after another (upstream runs them in a thread pool), so ``on_chunk(i, n,
        audio)`` can report each as soon as it is done, with the part of the audio that no later
        cross-fade can change, and the seed fixes the whole job's noise whatever the chunk count.
        The returned wave is those parts concatenated.
        """
        from f5_tts.infer.utils_infer import infer_batch_process
        from f5_tts.model.utils import seed_everything

        fader = CrossFader(int(params.cross_fade_duration * SAMPLE_RATE))
        parts: list[np.ndarray] = []
        with self._lock:
            seed_everything(params.seed)
            for index, chunk in enumerate(chunks, start=1):
                wave, _, _ = next(
                    infer_batch_process(
                        (ref_audio, SAMPLE_RATE),
                        ref_text,
                        [chunk],
                        self.model,
                        self.vocoder,
                        mel_spec_type="vocos",
                        progress=None,
                        nfe_step=params.nfe_step,
                        cfg_strength=params.cfg_strength,
                        sway_sampling_coef=params.sway_sampling_coef,
                        speed=params.speed,
                        device=self.device,
                    )
                )
                ready = fader.push(wave)
                if index == len(chunks):
                    ready = np.concatenate([ready, fader.finish()])
                part = np.asarray(ready, dtype=np.float32)
                parts.append(part)
                if on_chunk is not None:
                    on_chunk(index, len(chunks), part)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def cross_fade(prev: np.ndarray, nxt: np.ndarray, samples: int) -> np.ndarray:
    """Upstream's join of two chunks (``infer_batch_process``): a linear fade over
    ``min(samples, len(prev), len(nxt))`` samples, plain concatenation when that is 0."""
    overlap = min(samples, len(prev), len(nxt))
    if overlap <= 0:
        return np.concatenate([prev, nxt])
    faded = prev[-overlap:] * np.linspace(1, 0, overlap) + nxt[:overlap] * np.linspace(0, 1, overlap)
    return np.concatenate([prev[:-overlap], faded, nxt[overlap:]])


class CrossFader:
    """Upstream's cross-fade applied incrementally: :meth:`push` returns the audio that later
    chunks can no longer change and holds back the last ``samples`` for the next fade, so the
    concatenation of everything returned, then :meth:`finish`, is upstream's joined wave."""

    def __init__(self, samples: int):
        self.samples = max(0, samples)
        self._held: np.ndarray | None = None

    def push(self, wave: np.ndarray) -> np.ndarray:
        joined = wave if self._held is None else cross_fade(self._held, wave, self.samples)
        cut = len(joined) - min(self.samples, len(joined))
        self._held = joined[cut:]
        return joined[:cut]

    def finish(self) -> np.ndarray:
        held, self._held = self._held, None
        return held if held is not None else np.zeros(0, dtype=np.float32)


def release_memory() -> None:
    """After an out-of-memory error: collect what the failed job left (tensors held by reference
    cycles) and hand the CUDA allocator's cached blocks back, so the next job starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
