"""The fast loading path against upstream's own ``load_model``/``load_vocoder``, the fp16 copy,
the prefetch thread and the warm-up, on the tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from f5worker import tts_model
from f5worker.contract import SynthesisParams
from f5worker.model_files import ModelFilesCorrupt, ModelLoadFailed, ModelSources
from f5worker.tts_model import (
    Prefetch,
    TTSModel,
    empty_parameters,
    half_precision_path,
    load_error,
    load_f5,
    weights_file,
    write_half_precision_copy,
)
from tests.support.bucket import ALICE_TEXT
from tests.support.paths import ROOT
from tests.support.tiny_models import TINY_ENV


def upstream_load(checkpoint: Path, tiny_model: TTSModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    from f5_tts import model as f5_models
    from f5_tts.infer.utils_infer import load_model, load_vocoder

    resolved = tiny_model.resolved
    model = load_model(getattr(f5_models, resolved.backbone), resolved.arch, str(checkpoint),
                       mel_spec_type="vocos", vocab_file=str(resolved.vocab), device="cpu")
    vocoder = load_vocoder("vocos", is_local=True, local_path=str(resolved.vocoder_dir), device="cpu")
    return model, vocoder


def assert_same_module(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Same parameters and buffers (non-persistent ones too), dtypes, devices and mode."""
    assert ours.training == theirs.training
    for kind in ("named_parameters", "named_buffers"):
        a, b = dict(getattr(ours, kind)()), dict(getattr(theirs, kind)())
        assert a.keys() == b.keys(), kind
        for name in a:
            assert a[name].device.type != "meta", name
            assert a[name].dtype == b[name].dtype and a[name].device == b[name].device, name
            assert torch.equal(a[name], b[name]), name


def test_load_equals_upstream_load_model_and_load_vocoder(tiny_model: TTSModel):
    from f5worker.model_files import ModelSources

    fresh = TTSModel.load(ModelSources.from_env(TINY_ENV), Path(TINY_ENV["HF_HUB_CACHE"]), allow_download=False,
                          device="cpu")
    model, vocoder = upstream_load(tiny_model.resolved.checkpoint, tiny_model)
    assert_same_module(fresh.model, model)
    assert_same_module(fresh.vocoder, vocoder)


def test_synthesis_is_bit_identical_to_upstream_loaded_model(tiny_model: TTSModel, tmp_path: Path):
    from f5worker.voices import prepare_reference
    from tests.support.audio_bytes import reference_wav_bytes

    model, vocoder = upstream_load(tiny_model.resolved.checkpoint, tiny_model)
    theirs = TTSModel(model, vocoder, "cpu", tiny_model.resolved)
    path = tmp_path / "ref.wav"
    path.write_bytes(reference_wav_bytes())
    ref = prepare_reference(path, ALICE_TEXT)
    params = SynthesisParams(nfe_step=4, seed=3)
    chunks = tiny_model.plan(ref.duration_s, ref.text, "Loading must not change a sample.", params.speed)
    a = tiny_model.synthesize(ref.audio, ref.text, chunks, params)
    b = theirs.synthesize(ref.audio, ref.text, chunks, params)
    theirs.close()
    assert a.shape == b.shape and np.array_equal(a, b)


def test_load_reports_where_start_up_went(tiny_model: TTSModel):
    assert {"resolve", "import", "wait_prefetch", "vocoder", "model", "prefetch", "total"} <= set(tiny_model.load_ms)


def test_load_rejects_a_checkpoint_missing_keys(tiny_model: TTSModel, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_model.resolved.checkpoint))
    state.pop(next(k for k in state if k.endswith(".weight")))
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    from f5_tts import model as f5_models

    with pytest.raises(RuntimeError, match="Missing key"):
        load_f5(f5_models.DiT, tiny_model.resolved.arch, broken, tiny_model.resolved.vocab, "cpu")


# What a sound model file meets on a machine that cannot load it: none of it is the file's fault.
MACHINE_FAILURES = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("The NVIDIA driver on your system is too old (found version 11040)."),
    MemoryError(),
    PermissionError(13, "Permission denied"),
]


@pytest.mark.parametrize("loader", ["load_f5", "load_vocos"])
@pytest.mark.parametrize("err", MACHINE_FAILURES, ids=lambda e: type(e).__name__)
def test_a_machine_that_cannot_load_sound_files_does_not_call_them_corrupt(loader: str, err: Exception,
                                                                           monkeypatch: pytest.MonkeyPatch):
    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(tts_model, loader, fail)
    with pytest.raises(ModelLoadFailed) as caught:
        TTSModel.load(ModelSources.from_env(TINY_ENV), Path(TINY_ENV["HF_HUB_CACHE"]), allow_download=False,
                      device="cpu")
    what = "the vocoder" if loader == "load_vocos" else "the tiny model"
    message = str(caught.value)
    assert message.startswith(f"cannot load {what} on cpu: {type(err).__name__}"), message
    assert not any(word in message for word in ("corrupt", "truncated", "delete", "provision")), message


def test_only_a_damaged_file_is_called_corrupt(own_checkpoint: Path, tmp_path: Path):
    from safetensors.torch import load_file

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(own_checkpoint.read_bytes()[:-1000])
    with pytest.raises(Exception) as unreadable:
        load_file(str(truncated))
    empty = tmp_path / "pytorch_model.bin"
    empty.write_bytes(b"")
    with pytest.raises(Exception) as nothing:
        torch.load(str(empty), weights_only=True)
    cuda_error = RuntimeError("CUDA error: an illegal memory access was encountered")
    mismatch = RuntimeError("Error(s) in loading state_dict for CFM:\n\tsize mismatch for transformer.proj.weight")
    cases = [
        (truncated, unreadable.value, ModelFilesCorrupt),  # the loader's own deserialisation error
        (empty, nothing.value, ModelFilesCorrupt),
        (own_checkpoint, mismatch, ModelFilesCorrupt),  # a strict load of the wrong tensors
        (truncated, cuda_error, ModelFilesCorrupt),  # whatever the error, the file fails verify_complete
        (own_checkpoint, cuda_error, ModelLoadFailed),
        (own_checkpoint, torch.OutOfMemoryError("Error(s) in loading state_dict: out of memory"), ModelLoadFailed),
    ]
    for path, err, expected in cases:
        assert type(load_error("the model", [path], "cuda", err)) is expected, (path.name, err)


@pytest.fixture
def own_checkpoint(tiny_model: TTSModel, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint, so tests can rewrite it."""
    path = tmp_path / "src" / "model.safetensors"
    path.parent.mkdir()
    shutil.copyfile(tiny_model.resolved.checkpoint, path)
    return path


def test_half_copy_is_fp16_atomic_and_written_once(own_checkpoint: Path, tmp_path: Path):
    from safetensors.torch import load_file

    half_dir = tmp_path / "half"
    copy = write_half_precision_copy(own_checkpoint, half_dir)
    assert copy == half_precision_path(own_checkpoint, half_dir) and copy.name.endswith(".fp16.safetensors")
    assert [p.name for p in half_dir.iterdir()] == [copy.name]  # no partial file left behind
    source, half = load_file(str(own_checkpoint)), load_file(str(copy))
    assert source.keys() == half.keys()
    for key, value in source.items():
        assert half[key].dtype == (torch.float16 if value.is_floating_point() else value.dtype)
        if value.is_floating_point():
            # upstream on CUDA: model.to(float16), then load_state_dict copy_()s the fp32 tensors in
            upstream_cast = torch.empty_like(value, dtype=torch.float16).copy_(value)
            assert torch.equal(half[key], upstream_cast)
        else:
            assert torch.equal(half[key], value)
    assert copy.stat().st_size < 0.6 * own_checkpoint.stat().st_size
    written = copy.stat().st_mtime_ns
    assert write_half_precision_copy(own_checkpoint, half_dir) == copy and copy.stat().st_mtime_ns == written


def test_a_new_checkpoint_gets_a_new_half_copy(own_checkpoint: Path, tmp_path: Path):
    half_dir = tmp_path / "half"
    first = write_half_precision_copy(own_checkpoint, half_dir)
    own_checkpoint.write_bytes(own_checkpoint.read_bytes())  # same name, new file: new mtime
    os.utime(own_checkpoint, ns=(first.stat().st_mtime_ns + 10**9,) * 2)
    assert half_precision_path(own_checkpoint, half_dir) != first
    assert weights_file(own_checkpoint, "cpu", half_dir) == own_checkpoint


def test_half_copy_is_used_only_where_upstream_computes_in_fp16(own_checkpoint: Path, tmp_path: Path,
                                                               tiny_model: TTSModel, monkeypatch):
    from f5worker import tts_model

    half_dir = tmp_path / "half"
    copy = write_half_precision_copy(own_checkpoint, half_dir)
    assert weights_file(own_checkpoint, "cpu", half_dir) == own_checkpoint  # CPU computes in fp32
    assert weights_file(own_checkpoint, "cpu", None) == own_checkpoint
    monkeypatch.setattr(tts_model, "compute_dtype", lambda device: torch.float16)
    assert weights_file(own_checkpoint, "cuda", half_dir) == copy


def test_half_copy_loads_like_upstream_loads_it(own_checkpoint: Path, tmp_path: Path, tiny_model: TTSModel):
    """Where the copy is loaded, the result equals upstream's load of the same file (its cast)."""
    from f5_tts import model as f5_models

    copy = write_half_precision_copy(own_checkpoint, tmp_path / "half")
    resolved = tiny_model.resolved
    ours = load_f5(getattr(f5_models, resolved.backbone), resolved.arch, copy, resolved.vocab, "cpu")
    theirs, _ = upstream_load(copy, tiny_model)
    assert_same_module(ours, theirs)


@pytest.mark.process
def test_half_copy_cli_writes_the_configured_models_copy(tmp_path: Path):
    env = {**os.environ, **TINY_ENV}
    out = subprocess.run([sys.executable, "provision.py", "half-copy"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == Path(TINY_ENV["HF_HOME"]) / "f5tts-fp16"
    path.unlink()


def test_prefetch_reads_every_byte_and_survives_a_missing_file(own_checkpoint: Path, tmp_path: Path):
    prefetch = Prefetch([own_checkpoint, tmp_path / "missing.bin"], block_bytes=4096)
    prefetch.start()
    prefetch.join(timeout=30)
    assert not prefetch.is_alive()
    assert prefetch.bytes_read == own_checkpoint.stat().st_size


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cuda", True), ("auto", "cuda:0", True), ("auto", "cpu", False),
    ("1", "cpu", True), ("0", "cuda", False), (" ON ", "cpu", True), ("off", "cuda", False),
])
def test_warm_up_setting(setting: str, device: str, expected: bool):
    from f5worker.pipeline import wants_warm_up

    assert wants_warm_up(setting, device) is expected


def test_warm_up_synthesizes_and_leaves_the_default_voice_and_the_normaliser_ready(make_worker):
    worker = make_worker({})
    assert {"load_normalizer", "synthesize"} <= set(worker.warm_up())
    result = worker.run({"id": "first", "input": {"text": "Hello, it is 5 pm.", "nfe_step": 4}})
    assert result["voice_cached"] is True and "normalize" in result["timings_ms"]
    assert not {"prepare_reference", "load_normalizer"} & set(result["timings_ms"])


def test_a_callback_that_raises_cancels_the_chunks_not_yet_started_at_once():
    """The HTTP server's stream raises from on_chunk when its client went away: the job's chunks still
    waiting are dropped then, not whenever the exception (which a caller may keep) is freed."""
    import threading

    from f5worker.engine.scheduler import Scheduler

    gate, sampled = threading.Event(), []

    def sample(items):
        sampled.extend(item.chunk_index for item in items)
        if items[0].chunk_index > 0:
            gate.wait(10)
        return [np.full(2400, 0.1, np.float32) for _ in items]

    model = TTSModel(model=None, vocoder=None, device="cpu", resolved=None)
    model._scheduler = Scheduler(sample, max_batch=1, max_queue=16, key=lambda _item: 0)

    def gone(index: int, count: int, part: np.ndarray) -> None:
        raise ConnectionError("the client went away")

    with pytest.raises(ConnectionError) as kept:
        model.synthesize(torch.zeros(1, 2400), "Ref. ", ["a", "b", "c", "d", "e"], SynthesisParams(), gone)
    assert model.scheduler.waiting == 0  # while the exception is still held
    gate.set()
    model.close()
    assert sampled == [0, 1] and kept.value is not None


def test_empty_parameters_skips_writes_to_meta_tensors_only():
    """Parameters come out on meta, unwritten; real tensors (buffers, others) are written as usual."""
    with empty_parameters():
        linear = torch.nn.Linear(4, 3)
        embedding = torch.nn.Embedding(5, 2, padding_idx=0)
        norm = torch.nn.BatchNorm1d(3)  # its running stats are buffers: zero_() and fill_(1) on real tensors
        other = torch.zeros(3)
        other.add_(2)
    assert all(p.is_meta for m in (linear, embedding, norm) for p in m.parameters())
    assert not norm.running_var.is_meta and torch.equal(norm.running_var, torch.ones(3))
    assert torch.equal(other, torch.full((3,), 2.0))
    assert all(type(p) is torch.nn.Parameter and p.requires_grad for p in linear.parameters())
    after = torch.nn.Linear(4, 3)  # the block is over: parameters are real and initialised again
    assert not after.weight.is_meta and after.weight.abs().sum() > 0
