"""Whisper on the tiny random-weight model: settings, files, lazy loading, word timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f5worker.asr import SpeechRecognizer
from f5worker.model_files import (
    ASR_FILES,
    DEFAULT_ASR_MODEL,
    AsrSettings,
    ModelConfigError,
    ModelFilesMissing,
    asr_file_refs,
)
from f5worker.timings import Timings
from tests.support.audio_bytes import decode, reference_wav_bytes
from tests.support.paths import ROOT
from tests.support.tiny_models import TINY_ENV, TINY_WHISPER_REPO

HUB = Path(TINY_ENV["HF_HUB_CACHE"])


def recognizer(repo: str = TINY_WHISPER_REPO) -> SpeechRecognizer:
    settings = AsrSettings(enabled=True, repo_id=repo, language=None)
    return SpeechRecognizer(settings, HUB, allow_download=False, device="cpu")


def test_file_refs_only_when_enabled():
    def refs(env: dict[str, str]) -> list[str]:
        return asr_file_refs(AsrSettings.from_env(env))

    assert refs({}) == [] and refs({"ASR_ENABLED": "0"}) == []
    enabled = refs({"ASR_ENABLED": "1"})
    assert enabled == [f"hf://{DEFAULT_ASR_MODEL}/{name}" for name in ASR_FILES]
    assert f"hf://{DEFAULT_ASR_MODEL}/model.safetensors" in enabled
    assert refs({"ASR_ENABLED": "true", "ASR_MODEL": "hf://me/whisper-ft/"})[0] == "hf://me/whisper-ft/config.json"


@pytest.mark.parametrize("bad", ["whisper", "a/b/c", "/x"])
def test_bad_model_name_is_a_config_error(bad):
    with pytest.raises(ModelConfigError, match="ASR_MODEL"):
        AsrSettings.from_env({"ASR_MODEL": bad})


def test_missing_files_name_the_file_and_the_cache():
    with pytest.raises(ModelFilesMissing, match=f"hf://tiny-random/absent/config.json.*{HUB}"):
        recognizer("tiny-random/absent").words(np.zeros(24_000, np.float32), 24_000, Timings())


def test_loads_on_first_use_only_and_word_timings_hold_their_invariants():
    asr = recognizer()
    assert not asr.loaded
    wave, sr = decode(reference_wav_bytes())
    first, second = Timings(), Timings()
    words = asr.words(wave, sr, first)
    again = asr.words(wave, sr, second)
    assert asr.loaded and "load_asr" in first.ms and "load_asr" not in second.ms
    assert words == again and len(words) >= 1
    previous_end, duration = 0.0, len(wave) / sr
    for w in words:
        assert w.word.strip() == w.word != ""
        assert previous_end <= w.start <= w.end <= duration
        previous_end = w.end


def test_half_precision_runs_the_same_pipeline():
    """float16 is what a GPU worker runs; the pipeline casts the features and the word-timestamp
    alignment runs on half-precision attentions. CPU float16 exercises the same code."""
    import torch

    half = SpeechRecognizer(AsrSettings(True, TINY_WHISPER_REPO, None), HUB, allow_download=False, device="cpu",
                            dtype=torch.float16)
    wave, sr = decode(reference_wav_bytes())
    words = half.words(wave, sr, Timings())
    assert half._pipe.model.dtype == torch.float16
    assert len(words) >= 1 and all(0 <= w.start <= w.end <= len(wave) / sr for w in words)
    default = recognizer()
    default.words(wave[:sr], sr, Timings())
    assert default._pipe.model.dtype == torch.float32


def test_long_form_audio_over_30_seconds():
    wave = np.random.default_rng(0).standard_normal(24_000 * 41).astype(np.float32) * 0.1
    words = recognizer().words(wave, 24_000, Timings())
    assert len(words) >= 1 and all(0 <= w.start <= w.end <= 41 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)


COLD_START = """
import json, os, sys
from f5worker.pipeline import Worker
from f5worker.settings import Settings

def whisper_modules():
    return sorted(m for m in sys.modules if m.startswith(("transformers.models.whisper", "whisper")))

report = {}
for enabled in ("0", "1"):
    os.environ["ASR_ENABLED"] = enabled
    worker = Worker.from_settings(Settings.from_env(os.environ))
    report[enabled] = {"asr": worker.asr is not None, "whisper_modules": whisper_modules(),
                       "loaded": bool(worker.asr and worker.asr.loaded)}
result = worker.run({"id": "w", "input": {"text": "Hello.", "nfe_step": 4, "seed": 1, "return_word_timings": True}})
report["after_job"] = {"whisper_modules": whisper_modules(), "loaded": worker.asr.loaded,
                       "stages": sorted(result["timings_ms"]), "words": len(result["words"])}
print(json.dumps(report))
"""


@pytest.mark.process
def test_cold_start_imports_no_whisper_and_the_first_job_loads_it(tmp_path):
    """In a fresh process: ``Worker.from_settings`` imports nothing of Whisper, ASR off or on; the
    first job asking for word timings loads it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "ASR_ENABLED"))}
    out = subprocess.run([sys.executable, "-c", COLD_START], cwd=ROOT, env={**env, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["0"] == {"asr": False, "whisper_modules": [], "loaded": False}
    assert report["1"] == {"asr": True, "whisper_modules": [], "loaded": False}
    assert "transformers.models.whisper.modeling_whisper" in report["after_job"]["whisper_modules"]
    assert report["after_job"]["loaded"] is True and report["after_job"]["words"] >= 1
    assert {"load_asr", "word_timings"} <= set(report["after_job"]["stages"])
