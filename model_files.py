"""Which files the configured model needs and where they are in the Hugging Face cache.

Torch-free on purpose: the worker, the provisioning entry point and the validator all use it,
and the validator must answer in seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "F5TTS_v1_Base"
VOCODER_REPO = "charactr/vocos-mel-24khz"
VOCODER_FILES = ("config.yaml", "pytorch_model.bin")
BUILTIN_CHECKPOINTS = {
    "F5TTS_v1_Base": "hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors",
    "F5TTS_Base": "hf://SWivid/F5-TTS/F5TTS_Base/model_1200000.safetensors",
    "E2TTS_Base": "hf://SWivid/E2-TTS/E2TTS_Base/model_1200000.safetensors",
}
BACKBONES = ("DiT", "UNetT", "MMDiT")


class ModelFilesMissing(RuntimeError):
    """A model file is neither in the cache nor obtainable; the message says which and where."""


class ModelConfigError(ValueError):
    """The model settings (F5TTS_* variables or the config file) are unusable."""


class ModelFilesCorrupt(RuntimeError):
    """A model file is present but cannot be loaded (truncated download, disk error, wrong file)."""

    def __init__(self, what: str, paths: list[Path], err: BaseException):
        # A Hugging Face snapshot entry is a symlink to a blob: deleting only the link would let
        # the hub client relink the same bad blob, so the message names the blob too.
        named = ", ".join(f"{p} (blob {p.resolve()})" if p.is_symlink() else str(p) for p in paths)
        super().__init__(
            f"{what} cannot be loaded from {named}: {type(err).__name__}: {_first_line(err)}. "
            "The file is truncated or corrupt: delete it and provision the volume again"
        )


@dataclass(frozen=True)
class HubFile:
    """``hf://owner/repo/path/in/repo`` split into repo id and filename."""

    repo_id: str
    filename: str

    @classmethod
    def parse(cls, ref: str) -> HubFile:
        parts = ref.removeprefix("hf://").split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ModelConfigError(f"{ref!r} is not of the form hf://owner/repo/path")
        return cls(repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2])

    def __str__(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}"


def is_hub_ref(ref: str) -> bool:
    return ref.startswith("hf://")


def resolve_file(ref: str, cache_dir: Path, allow_download: bool) -> Path:
    """A local path for ``ref`` (a path or ``hf://owner/repo/file``).

    The cache is consulted with ``local_files_only=True`` first, so a warm cache costs no
    network call; only a miss, when ``allow_download``, goes to the hub.
    """
    if not is_hub_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelFilesMissing(f"model file {path} does not exist")
        return path
    from huggingface_hub import hf_hub_download

    hub = HubFile.parse(ref)
    try:
        return Path(hf_hub_download(hub.repo_id, hub.filename, cache_dir=cache_dir, local_files_only=True))
    except Exception as cached_err:  # noqa: BLE001 - any miss means "not cached"
        if not allow_download:
            raise ModelFilesMissing(
                f"{hub} is not in the Hugging Face cache at {cache_dir} and downloads are off "
                f"(HF_HUB_OFFLINE): provision the volume first"
            ) from cached_err
    try:
        return Path(hf_hub_download(hub.repo_id, hub.filename, cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - network, auth, 404: all mean the same to the operator
        raise ModelFilesMissing(
            f"{hub} is not in the Hugging Face cache at {cache_dir} and could not be downloaded "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err


@dataclass(frozen=True)
class ModelSources:
    """Where the configured model's files come from (paths or ``hf://`` refs); no I/O."""

    name: str
    checkpoint: str
    config: str | None  # None: the upstream YAML packaged with f5-tts for ``name``
    vocab: str | None  # None: the vocab.txt packaged with f5-tts, as upstream does
    vocoder: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ModelSources:
        name = env.get("F5TTS_MODEL", DEFAULT_MODEL)
        config = env.get("F5TTS_MODEL_CONFIG") or None
        checkpoint = env.get("F5TTS_CKPT_FILE") or BUILTIN_CHECKPOINTS.get(name)
        if checkpoint is None or (config is None and name not in BUILTIN_CHECKPOINTS):
            raise ModelConfigError(
                f"F5TTS_MODEL={name!r} is not one of {sorted(BUILTIN_CHECKPOINTS)}; "
                "a custom model needs F5TTS_CKPT_FILE and F5TTS_MODEL_CONFIG"
            )
        return cls(
            name=name,
            checkpoint=checkpoint,
            config=config,
            vocab=env.get("F5TTS_VOCAB_FILE") or None,
            vocoder=tuple(f"hf://{VOCODER_REPO}/{f}" for f in VOCODER_FILES),
        )

    def file_refs(self) -> list[str]:
        """Every file the model is loaded from, in load order."""
        return [r for r in (self.config, self.vocab, self.checkpoint, *self.vocoder) if r]


@dataclass(frozen=True)
class ResolvedModel:
    """The model's architecture and the local paths of its files."""

    name: str
    backbone: str
    arch: dict[str, Any]
    checkpoint: Path
    vocab: Path | None
    vocoder_dir: Path


def resolve_model(sources: ModelSources, cache_dir: Path, allow_download: bool) -> ResolvedModel:
    """Find (or, when allowed, fetch) every file of ``sources``; parse the architecture."""

    def local(ref: str) -> Path:
        return resolve_file(ref, cache_dir, allow_download)

    if sources.config is None:
        source = f"f5_tts/configs/{sources.name}.yaml"
        text = files("f5_tts").joinpath(f"configs/{sources.name}.yaml").read_text()
    else:
        source = sources.config
        text = local(sources.config).read_text()
    backbone, arch = parse_model_config(text, source)
    vocoder = [local(ref) for ref in sources.vocoder]
    if len({p.parent for p in vocoder}) != 1:
        raise ModelFilesMissing(f"vocoder files {vocoder} are not in one directory")
    return ResolvedModel(
        name=sources.name,
        backbone=backbone,
        arch=arch,
        checkpoint=local(sources.checkpoint),
        vocab=local(sources.vocab) if sources.vocab else None,
        vocoder_dir=vocoder[0].parent,
    )


def parse_model_config(text: str, source: str) -> tuple[str, dict[str, Any]]:
    """``(backbone, arch)`` from YAML/JSON text: upstream's ``model: {backbone, arch}`` or flat."""
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ModelConfigError(f"model config {source} is not valid YAML/JSON: {err}") from err
    model = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("arch"), dict):
        raise ModelConfigError(f"model config {source} has no 'arch' mapping")
    backbone = model.get("backbone", "DiT")
    if backbone not in BACKBONES:
        raise ModelConfigError(f"model config {source}: backbone {backbone!r} is not one of {BACKBONES}")
    mel_type = model.get("mel_spec", {}).get("mel_spec_type", "vocos")
    if mel_type != "vocos":
        raise ModelConfigError(f"model config {source}: only the vocos vocoder is supported, not {mel_type!r}")
    return backbone, dict(model["arch"])


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
