"""Loading imports only what inference needs: not upstream's inference script (transformers,
matplotlib), not ``f5_tts.model``'s package (its trainer: wandb, datasets, accelerate, ema_pytorch), not
einx or sympy (x-transformers after 1.40 imports them; requirements.txt) nor torch._dynamo (torch's
Python references of in-place writes on meta tensors import it: ``tts_model.empty_parameters`` skips
those writes); and the model loaded that way equals upstream's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.paths import ROOT
from tests.support.tiny_models import TINY_ENV
from tests.test_tts_model import assert_same_module, upstream_load

NOT_AT_READY = (
    "f5_tts.infer.utils_infer", "f5_tts.model", "f5_tts.model.trainer", "f5_tts.model.dataset",
    "transformers", "matplotlib", "wandb", "datasets", "ema_pytorch", "accelerate", "einx", "sympy",
    "torch._dynamo",
)

LOAD = """
import runpod_handler  # the worker's entry point first, its imports in their order
import json, os, sys, torch
from pathlib import Path
from f5worker.model_files import ModelSources
from f5worker.tts_model import TTSModel

loaded = TTSModel.load(ModelSources.from_env(os.environ), Path(sys.argv[1]), allow_download=False, device="cpu")
modules = sorted(sys.modules)
torch.save({"model": loaded.model, "vocoder": loaded.vocoder}, sys.argv[2])
from f5worker.contract import SynthesisParams
ref_text = "Some call me nature, others call me mother nature."
chunks = loaded.plan(1.0, ref_text, "A first job.", 1.0)
wave = loaded.synthesize(torch.randn(1, 24000) * 0.1, ref_text, chunks, SynthesisParams(nfe_step=2))
after_synthesis = sorted(sys.modules)
loaded.close()
import f5_tts.model  # the real package, its __init__ taking the modules already loaded
from f5worker.engine.upstream import f5_model
same = all(getattr(f5_tts.model, name) is getattr(f5_model(), name) for name in ("CFM", "DiT", "UNetT", "MMDiT"))
print(json.dumps({"modules": modules, "after_synthesis": after_synthesis, "samples": len(wave),
                  "package_takes_them": same}))
"""


@pytest.fixture(scope="module")
def fresh_load(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``TTSModel.load`` of the tiny model in a fresh process: what it imported, and the model it saved."""
    saved = tmp_path_factory.mktemp("diet") / "loaded.pt"
    out = subprocess.run([sys.executable, "-c", LOAD, TINY_ENV["HF_HUB_CACHE"], str(saved)], cwd=ROOT,
                         env={**os.environ, **TINY_ENV}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), saved


@pytest.mark.process
def test_loading_imports_neither_utils_infer_nor_the_trainer(fresh_load):
    report, _ = fresh_load
    assert {"torch", "vocos", "f5_tts.model.cfm", "f5_tts.model.backbones.dit"} <= set(report["modules"])
    assert [name for name in NOT_AT_READY if name in report["modules"]] == []
    assert report["package_takes_them"]


@pytest.mark.process
def test_a_synthesis_imports_neither_utils_infer_nor_the_trainer(fresh_load):
    report, _ = fresh_load
    assert report["samples"] > 0
    assert [name for name in NOT_AT_READY if name in report["after_synthesis"]] == []


@pytest.mark.process
def test_the_model_so_loaded_equals_upstreams(fresh_load, tiny_model):
    _, saved = fresh_load
    loaded = torch.load(saved, weights_only=False)  # its classes resolve to the real f5_tts.model's here
    model, vocoder = upstream_load(tiny_model.resolved.checkpoint, tiny_model)
    for ours, theirs in ((loaded["model"], model), (loaded["vocoder"], vocoder)):
        assert type(ours) is type(theirs) and repr(ours) == repr(theirs)
        assert_same_module(ours, theirs)
    assert loaded["model"].odeint_kwargs == model.odeint_kwargs
    assert loaded["model"].vocab_char_map == model.vocab_char_map
    mel_settings = ("n_fft", "hop_length", "win_length", "n_mel_channels", "target_sample_rate", "extractor")
    assert all(getattr(loaded["model"].mel_spec, k) == getattr(model.mel_spec, k) for k in mel_settings)
