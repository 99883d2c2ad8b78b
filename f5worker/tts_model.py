"""The F5-TTS model and Vocos vocoder, loaded once per worker process, and synthesis.

Loading and the maths are upstream's (``f5_tts.infer.utils_infer``); this module decides the
device, where the files come from, and holds the one instance the worker uses. Loading imports
neither ``utils_infer`` (transformers, matplotlib) nor ``f5_tts.model``'s package (its trainer:
wandb, datasets): the model's modules come from ``engine.upstream.f5_model``. Synthesis goes
through the engine: one ``Scheduler`` per model batches every job's chunks into ``Sampler`` calls.

Cold start (``bench/cold_start.py``, BENCHMARKS.md) is cut without changing a weight: the
weight files are read into the page cache by a thread while the main thread spends seconds
importing f5-tts (``Prefetch``); ``load_f5``/``load_vocos`` do what upstream's
``load_model``/``load_vocoder`` do minus the random initialisation of the 337 M parameters and
the copy into them (checked against upstream's functions in ``tests/test_tts_model.py``); and
where upstream computes in fp16 (CUDA), a half-precision copy written once at provisioning
(``write_half_precision_copy``) halves the bytes read from the network volume.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from torch.overrides import TorchFunctionMode

from f5worker import chunking
from f5worker.contract import SynthesisParams
from f5worker.engine.sampler import Sampler, WorkItem
from f5worker.engine.scheduler import Scheduler
from f5worker.engine.upstream import f5_model
from f5worker.formats import SAMPLE_RATE
from f5worker.model_cache import IncompleteFile, resolve_model, verify_complete
from f5worker.model_files import ModelFilesCorrupt, ModelLoadFailed, ModelSources, ResolvedModel
from f5worker.settings import DEFAULT_ENGINE, EngineLimits
from f5worker.ssml import Pause
from f5worker.timings import Timings

log = logging.getLogger(__name__)

# upstream's inference settings (utils_infer's constants), which its load_model builds the model with
MEL_SPEC = {"n_fft": 1024, "hop_length": 256, "win_length": 1024, "n_mel_channels": 100,
            "target_sample_rate": SAMPLE_RATE, "mel_spec_type": "vocos"}
ODE_METHOD = "euler"
# What the loaders raise when a file's bytes are not a model file: a damaged safetensors header, pickle
# stream, zip archive, YAML config or vocab; an empty file. Not what they raise when the machine fails them.
DESERIALISATION_ERRORS = (SafetensorError, pickle.UnpicklingError, EOFError, yaml.YAMLError, UnicodeDecodeError)
# torch raises plain RuntimeErrors for a damaged zip checkpoint and for a strict load of the wrong tensors
# (missing or unexpected keys, size mismatch), as it does for CUDA errors: told apart by their message.
DESERIALISATION_MESSAGES = ("PytorchStreamReader failed", "Error(s) in loading state_dict")

# on_chunk(chunk number from 1, chunk count, the audio that chunk made final)
ChunkCallback = Callable[[int, int, np.ndarray], None]
# keep(item, wave): the wave to use for a chunk, given the one the engine made (retakes.Retakes.keep)
KeepFn = Callable[[WorkItem, np.ndarray], np.ndarray]
PAUSE_FADE_S = 0.01  # speech fades out into a pause and in after it over this long


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """The dtype upstream's ``load_checkpoint`` casts the model to: fp16 on CUDA from compute
    capability 7 (not ZLUDA), fp32 elsewhere. Mirrored here to know when an fp16 copy of the
    weights is exact (the cast would round them to fp16 anyway)."""
    if "cuda" in device and torch.cuda.get_device_properties(device).major >= 7:
        return torch.float32 if torch.cuda.get_device_name().endswith("[ZLUDA]") else torch.float16
    return torch.float32


HALF_SUFFIX = ".fp16.safetensors"


def half_precision_path(checkpoint: Path, half_dir: Path) -> Path:
    """Where the fp16 copy of ``checkpoint`` lives, keyed by the source file's identity.

    The key is the resolved file's name (a Hugging Face blob is named by its content hash),
    size and modification time, not its directory: the volume is mounted at ``/workspace`` on
    a pod and at ``/runpod-volume`` on serverless. A new checkpoint gets a new key, so a stale
    copy is never used.
    """
    real = checkpoint.resolve()
    stat = real.stat()
    return half_dir / f"{real.name}.{stat.st_size}.{stat.st_mtime_ns}{HALF_SUFFIX}"


def write_half_precision_copy(checkpoint: Path, half_dir: Path) -> Path:
    """Write (once) an fp16 copy of a ``.safetensors`` checkpoint next to the cache; return its path.

    Floating tensors are rounded to fp16 exactly as upstream's ``model.to(float16)`` +
    ``load_state_dict`` would on a GPU; other tensors are kept. Written to a temp file and
    renamed, so a reader never sees half a file.
    """
    from safetensors.torch import load_file, save_file

    if checkpoint.suffix != ".safetensors":
        raise ValueError(f"{checkpoint} is not a .safetensors checkpoint")
    target = half_precision_path(checkpoint, half_dir)
    if target.is_file():
        return target
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(checkpoint)).items()}
    half_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        save_file(state, str(partial), metadata={"format": "pt", "source": checkpoint.resolve().name})
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def weights_file(checkpoint: Path, device: str, half_dir: Path | None) -> Path:
    """The fp16 copy when there is one and the model computes in fp16 anyway, else ``checkpoint``."""
    if half_dir is None or compute_dtype(device) != torch.float16:
        return checkpoint
    half = half_precision_path(checkpoint, half_dir)
    return half if half.is_file() else checkpoint


class Prefetch(threading.Thread):
    """Reads files once, sequentially, so they are in the page cache when torch opens them.

    ``readinto`` releases the GIL: the read runs on its own core while the main thread imports.
    """

    def __init__(self, paths: Sequence[Path], block_bytes: int = 16 * 1024 * 1024):
        super().__init__(name="weights-prefetch", daemon=True)
        self.paths = list(paths)
        self.block_bytes = block_bytes
        self.bytes_read = 0
        self.seconds = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        buffer = bytearray(self.block_bytes)
        for path in self.paths:
            try:
                with open(path, "rb", buffering=0) as handle:
                    while n := handle.readinto(buffer):
                        self.bytes_read += n
            except OSError as err:  # the loader reads the file again and reports the real error
                log.warning("prefetch of %s failed: %s", path, err)
        self.seconds = time.perf_counter() - started


class _SkipMetaWrites(TorchFunctionMode):
    """In-place operations on ``meta`` tensors (an init function's ``normal_``, ``uniform_``,
    ``erfinv_``, ``zero_``...) return their tensor without running: a meta tensor holds no data
    to write. Everything else runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes its tensor by keyword
        if name.endswith("_") and not name.endswith("__") and getattr(target, "is_meta", False):
            return target
        return func(*args, **kwargs)


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built inside get their parameters on the ``meta`` device, uninitialised; buffers
    such as the mel filterbank and the text position table stay real. A
    ``load_state_dict(..., assign=True)`` then fills the parameters.

    This is what accelerate's ``init_empty_weights(include_buffers=False)`` does (wrap
    ``Module.register_parameter`` while the modules are built), in a few lines of our own: importing
    accelerate costs 0.3-0.5 s of every start, and nothing else at ready needs it (BENCHMARKS.md
    section 1). Not thread-safe, like accelerate's: only model loading builds modules.

    The init functions' writes are skipped, not run on the meta tensors: there torch runs its
    Python references of ``normal_``/``erfinv_``, whose first call imports torch._dynamo, about a
    second of every start that nothing else needs."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        with _SkipMetaWrites():
            yield
    finally:
        torch.nn.Module.register_parameter = register


def load_f5(model_cls: type, arch: dict, checkpoint: Path, vocab: Path | None, device: str) -> torch.nn.Module:
    """Upstream's ``utils_infer.load_model`` + ``load_checkpoint`` (EMA weights), minus the two
    costs they add on top of reading the file:

    - the random initialisation of every parameter (``empty_parameters``), then the checkpoint's
      tensors are *assigned* by a strict ``load_state_dict``, which fails on any missing or
      unexpected key;
    - the copy into those parameters: on CPU, safetensors maps the file and the parameters are
      views of the page cache (no second 1.3 GB in memory); on CUDA the tensors land on the GPU.

    The module, dtype (``compute_dtype``) and values equal upstream's; ``tests/test_tts_model.py``
    checks it against ``load_model`` itself.
    """
    f5 = f5_model()
    vocab_file = str(vocab or files("f5_tts").joinpath("infer/examples/vocab.txt"))
    vocab_char_map, vocab_size = f5.utils.get_tokenizer(vocab_file, "custom")
    with empty_parameters():
        model = f5.CFM(
            transformer=model_cls(**arch, text_num_embeds=vocab_size, mel_dim=MEL_SPEC["n_mel_channels"]),
            mel_spec_kwargs=MEL_SPEC,
            odeint_kwargs={"method": ODE_METHOD},
            vocab_char_map=vocab_char_map,
        )
    model.load_state_dict(ema_state_dict(checkpoint, device), assign=True)
    return model.to(device=device, dtype=compute_dtype(device))


def ema_state_dict(checkpoint: Path, device: str) -> dict[str, torch.Tensor]:
    """The EMA weights of an upstream checkpoint, keyed as the model's (``load_checkpoint``'s rules)."""
    if checkpoint.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        ema = load_file(str(checkpoint), device=device)
    else:
        ema = torch.load(str(checkpoint), map_location=device, weights_only=True)["ema_model_state_dict"]
    state = {k.replace("ema_model.", ""): v for k, v in ema.items() if k not in ("initted", "step")}
    for key in ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window"):  # upstream's 305e3ea patch
        state.pop(key, None)
    return state


def load_vocos(vocoder_dir: Path, device: str) -> torch.nn.Module:
    """Upstream's ``load_vocoder("vocos", is_local=True, ...)`` without the random init of the
    parameters the strict ``load_state_dict`` then replaces (``empty_parameters``)."""
    from vocos import Vocos

    with empty_parameters():
        vocoder = Vocos.from_hparams(str(vocoder_dir / "config.yaml"))
    state = torch.load(str(vocoder_dir / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    vocoder.load_state_dict(state, assign=True)
    return vocoder.eval().to(device)


def load_error(what: str, paths: list[Path], device: str, err: Exception) -> ModelFilesCorrupt | ModelLoadFailed:
    """What to raise when loading ``what`` from ``paths`` failed with ``err``: ``ModelFilesCorrupt`` (delete
    and provision again) only when a file is to blame, because the loader could not deserialise it or it
    fails :func:`~f5worker.model_cache.verify_complete`; else ``ModelLoadFailed``, which tells the operator
    what this machine ran into (out of GPU memory, a CUDA or driver error) and not to delete good files."""
    damaged = isinstance(err, DESERIALISATION_ERRORS) or (
        type(err) is RuntimeError and any(m in str(err) for m in DESERIALISATION_MESSAGES)
    )
    if damaged or any(map(_incomplete, paths)):
        return ModelFilesCorrupt(what, paths, err)
    return ModelLoadFailed(what, device, err)


def _incomplete(path: Path) -> bool:
    try:
        verify_complete(path)
    except IncompleteFile:
        return True
    except OSError:  # unreadable now: the loader's error says why
        return False
    return False


class TTSModel:
    """One loaded F5-TTS + vocoder. ``synthesize`` may be called from several threads (jobs) at
    once: their chunks go through one :class:`Scheduler`, whose one thread runs the model."""

    def __init__(self, model: torch.nn.Module, vocoder: torch.nn.Module, device: str, resolved: ResolvedModel,
                 engine: EngineLimits = DEFAULT_ENGINE):
        self.model = model
        self.vocoder = vocoder
        self.device = device
        self.resolved = resolved
        self.engine = engine
        self.load_ms: dict[str, float] = {}  # where the start-up went, for logs and bench/
        self._scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        sources: ModelSources,
        cache_dir: Path,
        allow_download: bool,
        device: str | None = None,
        fallbacks: Sequence[Path] = (),
        half_dir: Path | None = None,
        engine: EngineLimits = DEFAULT_ENGINE,
    ) -> TTSModel:
        """Load the model and vocoder (``load_f5``/``load_vocos``), reading the weights while
        f5-tts is imported.

        ``half_dir``: where ``write_half_precision_copy`` stores fp16 copies; one is used only
        where upstream computes in fp16 (see ``weights_file``). ``engine``: the scheduler's limits.
        """
        timings = Timings()
        device = device or pick_device()
        with timings.measure("resolve"):
            resolved = resolve_model(sources, cache_dir, allow_download, fallbacks)
            checkpoint = weights_file(resolved.checkpoint, device, half_dir)
        prefetch = Prefetch([checkpoint, resolved.vocoder_dir / "pytorch_model.bin"])
        prefetch.start()
        with timings.measure("import"):  # the bulk of the imports, overlapping the read
            f5 = f5_model()
            import vocos  # noqa: F401
        with timings.measure("wait_prefetch"):
            prefetch.join()
        with timings.measure("vocoder"):
            try:
                vocoder = load_vocos(resolved.vocoder_dir, device)
            except Exception as err:  # classified: corrupt files or a machine that cannot load them
                raise load_error("the vocoder", sorted(resolved.vocoder_dir.iterdir()), device, err) from err
        with timings.measure("model"):
            try:
                model = load_f5(getattr(f5, resolved.backbone), resolved.arch, checkpoint, resolved.vocab, device)
            except Exception as err:
                files = [checkpoint, *([resolved.vocab] if resolved.vocab else [])]
                raise load_error(f"the {resolved.name} model", files, device, err) from err
        instance = cls(model, vocoder, device, resolved, engine)
        instance.load_ms = {**timings.report(), "prefetch": round(prefetch.seconds * 1000, 2)}
        log.info(
            "loaded %s (%s) from %s with the vocoder from %s on %s in %.2fs (%s)",
            resolved.name, resolved.backbone, checkpoint, resolved.vocoder_dir, device,
            instance.load_ms["total"] / 1000, instance.load_ms,
        )
        return instance

    def plan(self, reference_s: float, ref_text: str, text: str, speed: float) -> list[str]:
        """``text`` in the chunks to synthesize one at a time: upstream's, cut finer where one would
        not fit the model (``chunking.plan``; raises InputError where nothing fits)."""
        positions = getattr(self.model.transformer.text_embed, "precompute_max_pos", None)
        return chunking.plan(text, chunking.Budget(reference_s, ref_text, speed, positions))

    @property
    def scheduler(self) -> Scheduler:
        """The one scheduler every job's chunks go through, started on first use."""
        with self._scheduler_lock:
            if self._scheduler is None:
                sampler = Sampler(self.model, self.vocoder, self.device)
                self._scheduler = Scheduler(sampler.sample, self.engine.batch_for(self.device), self.engine.max_queue)
            return self._scheduler

    def close(self) -> None:
        """Stop the scheduler: the running batch finishes, items not started fail."""
        with self._scheduler_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    def sample(self, item: WorkItem) -> np.ndarray:
        """One item's wave, made by the scheduler like any other work (a retake)."""
        return next(self.scheduler.results([item]))

    def synthesize(self, ref_audio: torch.Tensor, ref_text: str, chunks: Sequence[str | Pause],
                   params: SynthesisParams, on_chunk: ChunkCallback | None = None,
                   keep: KeepFn | None = None, early_first: bool = False) -> np.ndarray:
        """Speech for ``chunks`` (from :meth:`plan`) in the voice of ``ref_audio`` (mono, 24 kHz,
        shape ``(1, n)``), joined with upstream's cross-fade; a :class:`~f5worker.ssml.Pause`
        among them is that much silence, the speech around it faded out and in (``PAUSE_FADE_S``).

        All the chunks go to the scheduler at once (raising ``QueueFull`` if they do not fit), to
        be batched with each other and with other jobs' chunks; each chunk's noise comes from
        ``(seed, its position)``, so the audio does not depend on what it was batched with.
        ``on_chunk(i, n, audio)`` reports each in order as soon as it and those before it are
        done, with the part of the audio that no later cross-fade can change (and the silence
        before it). The returned wave is those parts concatenated. ``keep`` (retakes) is given
        each chunk's wave in order and returns the one to use. ``early_first`` (audio that goes out
        as it is made): the first chunk is not batched with this job's others, so its audio comes
        sooner (``Scheduler.submit``).
        """
        if isinstance(chunks, str):  # a str is a sequence too: one chunk per character
            raise TypeError("synthesize takes the chunks from plan(), not the text")
        texts, silences = split_pauses(chunks)
        items = [WorkItem(ref_audio, ref_text, chunk, params, index) for index, chunk in enumerate(texts)]
        fader = CrossFader(int(params.cross_fade_duration * SAMPLE_RATE), int(PAUSE_FADE_S * SAMPLE_RATE))
        parts: list[np.ndarray] = []
        # closed on the way out, error or not: the chunks not yet started are dropped at once,
        # not when a caller lets go of the exception (whose traceback holds this frame)
        with closing(self.scheduler.results(items, early_first)) as waves:
            for index, (item, wave) in enumerate(zip(items, waves, strict=True), start=1):
                ready = fader.push(wave if keep is None else keep(item, wave), silences[index - 1])
                if index == len(items):
                    ready = np.concatenate([ready, fader.finish(silences[index])])
                part = np.asarray(ready, dtype=np.float32)
                parts.append(part)
                if on_chunk is not None:
                    on_chunk(index, len(items), part)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def split_pauses(chunks: Sequence[str | Pause]) -> tuple[list[str], list[int]]:
    """The text chunks, and the samples of silence before each of them and after the last."""
    texts: list[str] = []
    silences = [0]
    for chunk in chunks:
        if isinstance(chunk, Pause):
            silences[-1] += round(chunk.seconds * SAMPLE_RATE)
        else:
            texts.append(chunk)
            silences.append(0)
    return texts, silences


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
    chunks can no longer change and holds back the last ``samples`` (at least ``fade``) for the
    next join, so the concatenation of everything returned, then :meth:`finish`, is upstream's
    joined wave. A join with ``silence`` samples between is no cross-fade: the held audio fades
    out over ``fade`` samples, then the silence, then the new wave fades in."""

    def __init__(self, samples: int, fade: int = 0):
        self.samples = max(0, samples)
        self.fade = max(0, fade)
        self._held: np.ndarray | None = None

    def push(self, wave: np.ndarray, silence: int = 0) -> np.ndarray:
        if silence:
            joined = np.concatenate([self.finish(silence), fade_in(wave, self.fade)])
        elif self._held is None:
            joined = wave
        else:
            joined = cross_fade(self._held, wave, self.samples)
        cut = len(joined) - min(max(self.samples, self.fade), len(joined))
        self._held = joined[cut:]
        return joined[:cut]

    def finish(self, silence: int = 0) -> np.ndarray:
        """What is held (faded out before a ``silence``), then the silence."""
        held, self._held = self._held, None
        held = np.zeros(0, dtype=np.float32) if held is None else held
        if not silence:
            return held
        return np.concatenate([fade_out(held, self.fade), np.zeros(silence, dtype=np.float32)])


def fade_in(wave: np.ndarray, samples: int) -> np.ndarray:
    n = min(samples, len(wave))
    return np.concatenate([wave[:n] * np.linspace(0, 1, n + 1, dtype=np.float32)[1:], wave[n:]])


def fade_out(wave: np.ndarray, samples: int) -> np.ndarray:
    return fade_in(wave[::-1], samples)[::-1]

