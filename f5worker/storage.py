"""The three storage tiers and their environment defaults.

One definition, read by the worker, the provisioning code and the validator, so they can never
disagree about where models, scratch files and voices live:

| tier              | default path / location         | holds                                   |
|-------------------|---------------------------------|-----------------------------------------|
| network volume    | ``/runpod-volume/models``       | model weights, Hugging Face/torch caches |
| container scratch | ``$TMPDIR`` (``/tmp``)          | per-job files, removed after every job   |
| S3 bucket         | ``s3://$BUCKET_NAME/...``       | reference voices + transcripts, outputs  |

Model files are looked up, in this order, in: the volume's Hugging Face cache (``$HF_HUB_CACHE``),
RunPod's cached-models mount (``<volume>/huggingface-cache/hub``, present only when the endpoint
selects a cached model), and weights baked into the image (``$F5TTS_IMAGE_CACHE``, outside
``/runpod-volume`` because the volume mount would hide anything the image put there). Only when all
three miss is a file downloaded, once, into the volume cache (see ``provision.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VOLUME = "/runpod-volume"
DEFAULT_IMAGE_CACHE = "/opt/f5tts/hub"
RUNPOD_CACHED_MODELS = "huggingface-cache/hub"  # RunPod's cached-models mount, relative to the volume
JOB_DIR_PREFIX = "f5tts-job-"
# Older cache variables. The worker ignores them (it sets HF_HUB_CACHE, which wins), so one that
# points elsewhere means models land where the operator did not intend.
LEGACY_CACHE_VARS = ("TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE", "PYTORCH_TRANSFORMERS_CACHE")


@dataclass(frozen=True)
class CachePaths:
    """Network-volume tier: where every model cache lives."""

    volume: Path
    hf_home: Path
    hub_cache: Path
    torch_home: Path
    runpod_cache: Path  # read-only to us: RunPod fills it when the endpoint selects a cached model
    image_cache: Path  # read-only at run time: filled by ``docker build --build-arg BAKE_MODEL=...``

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CachePaths:
        volume = Path(env.get("RUNPOD_VOLUME_PATH", DEFAULT_VOLUME))
        hf_home = Path(env.get("HF_HOME", str(volume / "models")))
        return cls(
            volume=volume,
            hf_home=hf_home,
            hub_cache=Path(env.get("HF_HUB_CACHE", str(hf_home / "hub"))),
            torch_home=Path(env.get("TORCH_HOME", str(hf_home / "torch"))),
            runpod_cache=volume / RUNPOD_CACHED_MODELS,
            image_cache=Path(env.get("F5TTS_IMAGE_CACHE", DEFAULT_IMAGE_CACHE)),
        )

    @property
    def fallback_caches(self) -> tuple[Path, ...]:
        """The read-only caches consulted after ``hub_cache``, in order, without repeats."""
        return tuple(p for p in dict.fromkeys((self.runpod_cache, self.image_cache)) if p != self.hub_cache)

    @property
    def half_weights(self) -> Path:
        """fp16 copies of checkpoints, written once at provisioning (``tts_model.write_half_precision_copy``)."""
        return self.hf_home / "f5tts-fp16"


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists: where a directory not yet created will live."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_bytes(n: float) -> str:
    """A byte count for people, in decimal units as volume and disk sizes are sold (``1.40 GB``)."""
    if n == 0:
        return "0 bytes"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


TRUE_WORDS = ("1", "true", "yes", "on")


def is_true(value: str | None) -> bool:
    """An on/off environment variable: ``1``, ``true``, ``yes``, ``on`` (any case) are on."""
    return (value or "").strip().lower() in TRUE_WORDS


def apply_cache_env(paths: CachePaths, env: MutableMapping[str, str]) -> None:
    """Pin the Hugging Face and torch caches to ``paths`` (``CachePaths.from_env(env)``: the
    volume unless the operator set them) by writing them into ``env``, the process environment.

    Must run before ``huggingface_hub``/``transformers`` are imported: they read these
    variables once, at import time. The entry points run it first thing, through
    ``settings.load_settings``.
    """
    env.setdefault("HF_HOME", str(paths.hf_home))
    env.setdefault("HF_HUB_CACHE", str(paths.hub_cache))
    env.setdefault("TORCH_HOME", str(paths.torch_home))
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def scratch_root() -> Path:
    """Container-scratch tier: the system temp dir (``TMPDIR``, default ``/tmp``)."""
    return Path(tempfile.gettempdir())


def safe_job_id(job_id: str) -> str:
    """The job id reduced to ``[A-Za-z0-9_-]``, at most 128 characters: the job's scratch directory
    and its output keys derive from it and nothing else."""
    return "".join(c for c in job_id if (c.isascii() and c.isalnum()) or c in "-_")[:128] or "job"


def make_job_dir(job_id: str) -> Path:
    """A fresh per-job directory under the scratch tier; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{safe_job_id(job_id)}-", dir=scratch_root()))


@dataclass(frozen=True)
class BucketSettings:
    """S3 tier: the bucket for voices and outputs (never models)."""

    name: str | None
    endpoint_url: str | None
    access_key_id: str | None
    secret_access_key: str | None
    region: str | None
    voices_prefix: str
    outputs_prefix: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BucketSettings:
        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            name=get("BUCKET_NAME"),
            endpoint_url=get("BUCKET_ENDPOINT_URL"),
            access_key_id=get("BUCKET_ACCESS_KEY_ID"),
            secret_access_key=get("BUCKET_SECRET_ACCESS_KEY"),
            region=get("BUCKET_REGION"),
            voices_prefix=_as_prefix(env.get("VOICES_PREFIX", "voices/")),
            outputs_prefix=_as_prefix(env.get("OUTPUTS_PREFIX", "outputs/")),
        )

    @property
    def configured(self) -> bool:
        return self.name is not None

    def __repr__(self) -> str:  # never print the secret, even by accident
        return (
            f"BucketSettings(name={self.name!r}, endpoint_url={self.endpoint_url!r}, "
            f"access_key_id={'set' if self.access_key_id else None}, "
            f"secret_access_key={'set' if self.secret_access_key else None}, region={self.region!r}, "
            f"voices_prefix={self.voices_prefix!r}, outputs_prefix={self.outputs_prefix!r})"
        )


@dataclass(frozen=True)
class S3Limits:
    """Bounds on every S3 call, so a dead endpoint fails a job in seconds instead of hanging it."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 4  # the first try included (boto3's standard retry mode)
    presign_expires_s: int = 86400  # lifetime of an output's presigned URL


def _as_prefix(value: str) -> str:
    value = value.strip("/")
    return f"{value}/" if value else ""
