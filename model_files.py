"""Which files the configured model needs and where they are in the Hugging Face cache.

Torch-free on purpose: the worker, the provisioning entry point and the validator all use it,
and the validator must answer in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
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
# Bytes of the published files, rounded up from the sizes the hub lists (checkpoints 1.35 GB for
# F5TTS_v1_Base and F5TTS_Base, 1.33 GB for E2TTS_Base; Vocos 54.4 MB). Estimates, used only for
# the free-space check of files not yet in the cache; once cached, the real sizes count.
PUBLISHED_FILE_BYTES = {
    **{ref: 1_400_000_000 for ref in BUILTIN_CHECKPOINTS.values()},
    f"hf://{VOCODER_REPO}/pytorch_model.bin": 55_000_000,
    f"hf://{VOCODER_REPO}/config.yaml": 1_000,
}


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
            f"{what} cannot be loaded from {named}: {type(err).__name__}: {first_line(err)}. "
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

    @property
    def repo_folder(self) -> str:
        """The repo's directory in a Hugging Face cache: ``models--owner--repo``."""
        return f"models--{self.repo_id.replace('/', '--')}"


def is_hub_ref(ref: str) -> bool:
    return ref.startswith("hf://")


def find_cached(hub: HubFile, caches: Sequence[Path]) -> Path | None:
    """The first copy of ``hub`` in ``caches`` (Hugging Face cache layout), without any network call.

    Per cache: the snapshot ``refs/main`` names, else the newest snapshot holding the file (RunPod's
    cached-models mount has snapshots; nothing promises it a ``refs/main``).
    """
    from huggingface_hub import try_to_load_from_cache

    for cache in caches:
        found = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
        snapshots = cache / hub.repo_folder / "snapshots"
        candidates = [d / hub.filename for d in snapshots.iterdir()] if snapshots.is_dir() else []
        if found_files := [p for p in candidates if p.is_file()]:
            return max(found_files, key=lambda p: p.parent.stat().st_mtime)
    return None


def resolve_file(ref: str, cache_dir: Path, allow_download: bool, fallbacks: Sequence[Path] = ()) -> Path:
    """A local path for ``ref`` (a path or ``hf://owner/repo/file``).

    Looked up in ``cache_dir`` and then ``fallbacks`` without any network call; only when all miss,
    and ``allow_download``, is it fetched into ``cache_dir`` through ``provision.fetch`` (locked,
    space-checked, verified).
    """
    if not is_hub_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelFilesMissing(f"model file {path} does not exist")
        return path
    hub = HubFile.parse(ref)
    caches = (cache_dir, *fallbacks)
    found = find_cached(hub, caches)
    if found is not None:
        return found
    if not allow_download:
        raise ModelFilesMissing(
            f"{hub} is in none of the model caches ({', '.join(map(str, caches))}) and downloads are off "
            f"(HF_HUB_OFFLINE): provision the volume first"
        )
    from provision import fetch  # the one download path; provision imports this module

    return fetch([ref], cache_dir)[0].path


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


def resolve_model(
    sources: ModelSources, cache_dir: Path, allow_download: bool, fallbacks: Sequence[Path] = ()
) -> ResolvedModel:
    """Find every file of ``sources`` in ``cache_dir`` then ``fallbacks``; parse the architecture.

    When allowed, the files found nowhere are fetched into ``cache_dir`` in one ``provision.fetch``,
    so the free-space check covers all of them before the first byte is downloaded.
    """
    caches = (cache_dir, *fallbacks)
    missing = [r for r in sources.file_refs() if is_hub_ref(r) and find_cached(HubFile.parse(r), caches) is None]
    if missing and allow_download:
        from provision import fetch

        fetch(missing, cache_dir)

    def local(ref: str) -> Path:
        return resolve_file(ref, cache_dir, allow_download=False, fallbacks=fallbacks)

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


class IncompleteFile(ValueError):
    """A cached model file is truncated or corrupt; the message says how it was found out."""


def verify_complete(path: Path, deep: bool = False) -> str:
    """Check without the network that ``path`` is whole; return how it was checked.

    safetensors: the JSON header parses and ``8 + header + last tensor end`` equals the file
    size. torch zip checkpoints (``torch.save``'s format): the zip central directory, stored at the
    very end, reads. ``deep`` also re-reads every byte: zip member CRCs, and, for a hub blob (the
    file a snapshot links to), the blob's name, which is its sha256 (LFS files) or git sha1.
    """
    size = path.stat().st_size
    if size == 0:
        raise IncompleteFile(f"{path} is empty")
    with path.open("rb") as f:
        magic = f.read(4)
    if path.suffix == ".safetensors":
        how = _verify_safetensors(path, size)
    elif magic == b"PK\x03\x04":
        how = _verify_zip(path, deep)
    else:
        how = "non-empty (no internal size to compare)"
    if deep:
        how += "; " + _verify_blob_hash(path)
    return how


def _verify_safetensors(path: Path, size: int) -> str:
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if 8 + header_len > size:
            raise IncompleteFile(f"{path} is truncated: {size} bytes, shorter than its {header_len}-byte header")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise IncompleteFile(f"{path}: the safetensors header is not valid JSON ({err})") from err
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise IncompleteFile(f"{path}: the safetensors header has no valid data_offsets ({err!r})") from err
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        state = "truncated" if size < expected else "longer than its header says"
        raise IncompleteFile(f"{path} is {state}: {size} bytes, the header says {expected}")
    return f"safetensors header matches the size ({len(ends)} tensors)"


def _verify_zip(path: Path, deep: bool) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            bad = archive.testzip() if deep else None
    except (zipfile.BadZipFile, OSError) as err:
        raise IncompleteFile(f"{path} is truncated or corrupt: {err}") from err
    if bad is not None:
        raise IncompleteFile(f"{path}: member {bad} fails its CRC check")
    return f"zip directory reads ({len(members)} members{', CRCs ok' if deep else ''})"


def _verify_blob_hash(path: Path) -> str:
    blob = path.resolve()
    name = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest, kind = hashlib.sha256(), "sha256"
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest, kind = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode()), "git sha1"
    else:
        return "no content hash to compare (not a hub blob)"
    with blob.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != name:
        raise IncompleteFile(
            f"{path}: content {kind} {digest.hexdigest()[:12]}... differs from the blob name {name[:12]}..."
        )
    return f"{kind} matches the blob name"



def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
