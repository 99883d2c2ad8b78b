"""Model selection by environment and offline resolution from the HF cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from f5worker.model_cache import resolve_file, resolve_model
from f5worker.model_files import (
    BUILTIN_CHECKPOINTS,
    HubFile,
    ModelConfigError,
    ModelFilesMissing,
    ModelSources,
    parse_model_config,
)
from tests.support.tiny_models import TINY_ARCH, TINY_ENV

HUB = Path(TINY_ENV["HF_HUB_CACHE"])


def test_hub_ref_parsing():
    assert HubFile.parse("hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors") == HubFile(
        "SWivid/F5-TTS", "F5TTS_v1_Base/model_1250000.safetensors")
    for bad in ("hf://owner/repo", "hf://owner//file", "hf:///repo/file"):
        with pytest.raises(ModelConfigError):
            HubFile.parse(bad)


@pytest.mark.parametrize("name", sorted(BUILTIN_CHECKPOINTS))
def test_builtin_models_need_only_the_name(name):
    sources = ModelSources.from_env({"F5TTS_MODEL": name})
    assert sources.checkpoint == BUILTIN_CHECKPOINTS[name] and sources.config is None and sources.vocab is None
    assert sources.vocoder == ("hf://charactr/vocos-mel-24khz/config.yaml", "hf://charactr/vocos-mel-24khz/pytorch_model.bin")


def test_default_model_is_f5tts_v1_base():
    assert ModelSources.from_env({}).name == "F5TTS_v1_Base"


def test_unknown_model_without_files_is_a_config_error():
    with pytest.raises(ModelConfigError, match="F5TTS_CKPT_FILE and F5TTS_MODEL_CONFIG"):
        ModelSources.from_env({"F5TTS_MODEL": "F5TTS_v9"})
    with pytest.raises(ModelConfigError):
        ModelSources.from_env({"F5TTS_MODEL": "custom", "F5TTS_CKPT_FILE": "/x.safetensors"})


def test_tiny_model_resolves_offline_from_the_cache():
    resolved = resolve_model(ModelSources.from_env(TINY_ENV), HUB, allow_download=False)
    assert resolved.backbone == "DiT" and resolved.arch == TINY_ARCH
    assert resolved.checkpoint.is_file() and resolved.checkpoint.name == "model.safetensors"
    assert (resolved.vocoder_dir / "pytorch_model.bin").is_file()
    assert str(resolved.checkpoint).startswith(str(HUB))


def test_missing_file_names_repo_file_and_cache(tmp_path):
    with pytest.raises(ModelFilesMissing) as err:
        resolve_file("hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors", tmp_path, allow_download=False)
    assert "hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_local_paths_resolve_or_fail_clearly(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    assert resolve_file(str(ckpt), HUB, allow_download=False) == ckpt
    with pytest.raises(ModelFilesMissing, match="does not exist"):
        resolve_file(str(tmp_path / "nope.pt"), HUB, allow_download=False)


@pytest.mark.parametrize(("text", "source", "expected"), [
    ("model:\n  backbone: DiT\n  arch: {dim: 8}\n", "c.yaml", ("DiT", {"dim": 8})),
    ("arch: {dim: 8}\n", "c.yaml", ("DiT", {"dim": 8})),
    ('{"backbone": "UNetT", "arch": {"dim": 8}}', "c.json", ("UNetT", {"dim": 8})),
])
def test_model_config_forms(text, source, expected):
    assert parse_model_config(text, source) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("model: {arch: 3}", "no 'arch'"),
    ("[1, 2", "not valid"),
    ("backbone: Transformer\narch: {dim: 8}", "backbone"),
    ("model: {arch: {dim: 8}, mel_spec: {mel_spec_type: bigvgan}}", "vocos"),
])
def test_bad_model_configs(text, match):
    with pytest.raises(ModelConfigError, match=match):
        parse_model_config(text, "c.yaml")
