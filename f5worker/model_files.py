"""Which files the worker loads: the F5-TTS checkpoint, vocab and config, the Vocos vocoder and,
when ASR is on, Whisper's; ``hf://`` references and the model's architecture. No I/O beyond
parsing a config.

The first of three layers read top-down: this one says *which* files, :mod:`f5worker.model_cache`
*where* they are (or fetches them), :mod:`f5worker.tts_model` *loads* them. Torch-free on purpose:
the worker, the provisioning entry point and the validator all use it, and the validator must
answer in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from f5worker.storage import is_true

DEFAULT_MODEL = "F5TTS_v1_Base"
VOCODER_REPO = "charactr/vocos-mel-24khz"
VOCODER_FILES = ("config.yaml", "pytorch_model.bin")
BUILTIN_CHECKPOINTS = {
    "F5TTS_v1_Base": "hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors",
    "F5TTS_Base": "hf://SWivid/F5-TTS/F5TTS_Base/model_1200000.safetensors",
    "E2TTS_Base": "hf://SWivid/E2-TTS/E2TTS_Base/model_1200000.safetensors",
}
BACKBONES = ("DiT", "UNetT", "MMDiT")
# Bytes of the published files, rounded up from the sizes the hub lists (checkpoints 1.35 GB for
# F5TTS_v1_Base and F5TTS_Base, 1.33 GB for E2TTS_Base; Vocos 54.4 MB). Estimates, used only for
# the free-space check of files not yet in the cache; once cached, the real sizes count.
PUBLISHED_FILE_BYTES = {
    **dict.fromkeys(BUILTIN_CHECKPOINTS.values(), 1400000000),
    f"hf://{VOCODER_REPO}/pytorch_model.bin": 55_000_000,
    f"hf://{VOCODER_REPO}/config.yaml": 1_000,
}


class ModelFilesMissing(RuntimeError):
    """A model file is neither in the cache nor obtainable; the message says which and where."""


class ModelConfigError(ValueError):
    """The model settings (F5TTS_*/ASR_* variables or the config file) are unusable; ``variable``
    names the environment variable whose value is at fault, when one is."""

    def __init__(self, why: str, variable: str | None = None):
        super().__init__(f"{variable}: {why}" if variable else why)
        self.why = why
        self.variable = variable


class ModelFilesCorrupt(RuntimeError):
    """A model file is present but cannot be loaded (truncated download, disk error, wrong file)."""

    def __init__(self, what: str, paths: list[Path], err: BaseException):
        # A Hugging Face snapshot entry is a symlink to a blob: deleting only the link would let
        # the hub client relink the same bad blob, so the message names the blob too.
        named = ", ".join(f"{p} (blob {p.resolve()})" if p.is_symlink() else str(p) for p in paths)
        super().__init__(
            f"{what} cannot be loaded from {named}: {type(err).__name__}: {first_line(err)}. "
            "The file is truncated or corrupt: delete it and provision the volume again"
        )


class ModelLoadFailed(RuntimeError):
    """The model's files are sound but this machine could not load them (GPU memory, CUDA, driver, permissions)."""

    def __init__(self, what: str, device: str, err: BaseException):
        super().__init__(f"cannot load {what} on {device}: {type(err).__name__}: {first_line(err)}")


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

    @property
    def repo_folder(self) -> str:
        """The repo's directory in a Hugging Face cache: ``models--owner--repo``."""
        return f"models--{self.repo_id.replace('/', '--')}"


def is_hub_ref(ref: str) -> bool:
    return ref.startswith("hf://")


@dataclass(frozen=True)
class ModelSources:
    """Where the configured model's files come from (paths or ``hf://`` refs); no I/O."""

    name: str
    checkpoint: str
    config: str | None  # None: the upstream YAML packaged with f5-tts for ``name``
    vocab: str | None  # None: the vocab.txt packaged with f5-tts, as upstream does
    vocoder: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelSources:
        name = env.get("F5TTS_MODEL", DEFAULT_MODEL)
        config = _file_ref(env, "F5TTS_MODEL_CONFIG")
        checkpoint = _file_ref(env, "F5TTS_CKPT_FILE") or BUILTIN_CHECKPOINTS.get(name)
        if checkpoint is None or (config is None and name not in BUILTIN_CHECKPOINTS):
            raise ModelConfigError(
                f"{name!r} is not one of {sorted(BUILTIN_CHECKPOINTS)}; "
                "a custom model needs F5TTS_CKPT_FILE and F5TTS_MODEL_CONFIG", "F5TTS_MODEL"
            )
        return cls(
            name=name,
            checkpoint=checkpoint,
            config=config,
            vocab=_file_ref(env, "F5TTS_VOCAB_FILE"),
            vocoder=tuple(f"hf://{VOCODER_REPO}/{f}" for f in VOCODER_FILES),
        )

    def file_refs(self) -> list[str]:
        """Every file the model is loaded from, in load order."""
        return [r for r in (self.config, self.vocab, self.checkpoint, *self.vocoder) if r]


def _file_ref(env: Mapping[str, str], variable: str) -> str | None:
    """``variable``'s path or ``hf://`` ref (None when unset or empty); a malformed ref names the variable."""
    ref = env.get(variable) or None
    if ref is not None and is_hub_ref(ref):
        try:
            HubFile.parse(ref)
        except ModelConfigError as err:
            raise ModelConfigError(err.why, variable) from None
    return ref


@dataclass(frozen=True)
class ResolvedModel:
    """The model's architecture and the local paths of its files."""

    name: str
    backbone: str
    arch: dict[str, Any]
    checkpoint: Path
    vocab: Path | None
    vocoder_dir: Path


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




DEFAULT_ASR_MODEL = "openai/whisper-large-v3-turbo"  # upstream F5-TTS's transcription model
# The published repo's files that transformers reads to build the pipeline (everything but the README).
ASR_FILES = (
    "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
    "normalizer.json", "model.safetensors",
)


@dataclass(frozen=True)
class AsrSettings:
    """What ``ASR_*`` asks for; no I/O."""

    enabled: bool
    repo_id: str
    language: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AsrSettings:
        repo_id = (env.get("ASR_MODEL") or DEFAULT_ASR_MODEL).removeprefix("hf://").strip("/")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ModelConfigError(f"{repo_id!r} is not a Hugging Face repo id of the form owner/name", "ASR_MODEL")
        return cls(
            enabled=is_true(env.get("ASR_ENABLED")),
            repo_id=repo_id,
            language=env.get("ASR_LANGUAGE") or None,
        )

    def file_refs(self) -> list[str]:
        return [f"hf://{self.repo_id}/{name}" for name in ASR_FILES]


def asr_file_refs(asr: AsrSettings) -> list[str]:
    """``hf://`` refs of every Whisper file the worker loads, or ``[]`` when ASR is off: what
    provisioning must download and the validator must find in the cache."""
    return asr.file_refs() if asr.enabled else []


def worker_file_refs(sources: ModelSources, asr: AsrSettings) -> list[str]:
    """Every file the worker loads: the TTS model's and, when ASR is on, Whisper's."""
    return [*sources.file_refs(), *asr_file_refs(asr)]


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
