"""Every environment variable the worker reads, parsed once, at start, into one frozen :class:`Settings`.

The entry points (``runpod_handler.main``, ``provision.py``, ``validate_storage_config.py``,
``s3_utils.py``) build it first thing (``load_settings(os.environ)``, which also pins the model caches
into the environment, or ``Settings.from_env``, which only reads) and hand its parts on:
``JobLimits`` to ``contract.parse_job`` and ``voices.VoiceLibrary``, ``S3Limits`` to
``s3.make_client``, the rest to the worker. No module reads the environment at import, so a bad
value (not a number, out of range, not one of the choices, a malformed model reference) is one
:class:`SettingsError` naming the variable, which the worker reports as ``cannot start: VARIABLE:
why`` instead of a traceback. An empty number or choice counts as unset (its default), as RunPod
templates pass blank optional fields.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TypeVar

from f5worker.contract import JobLimits
from f5worker.model_files import AsrSettings, ModelConfigError, ModelSources
from f5worker.storage import TRUE_WORDS, BucketSettings, CachePaths, S3Limits, apply_cache_env, is_true

# The RunPod SDK's levels (``runpod.serverless.modules.rp_logger.LOG_LEVELS``, a test keeps them
# equal): it raises at import on any other, so a bad value is caught here instead, before the SDK
# is imported (importing it to ask would cost ~1 s of start-up).
RUNPOD_LOG_LEVELS = ("NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR")
FALSE_WORDS = ("0", "false", "no", "off")
PRESIGN_MAX_S = 7 * 24 * 3600  # S3 refuses a SigV4 presigned URL valid for longer than a week
CONCURRENCY_LIMIT = 64  # most jobs one worker takes at once (MAX_CONCURRENCY)
WORKER_MODES = ("QUEUE", "HTTP")
PORT_MAX = 65535

Number = TypeVar("Number", int, float)


class SettingsError(ValueError):
    """An environment variable's value is unusable; ``str()`` is ``"VARIABLE: why"``."""

    def __init__(self, variable: str, why: str):
        super().__init__(f"{variable}: {why}")
        self.variable = variable
        self.why = why


@dataclass(frozen=True)
class EngineLimits:
    """The synthesis engine's limits (``f5worker.engine.scheduler``): items per batched forward
    pass, items waiting before a job is refused as busy, and jobs one worker takes at once."""

    # ENGINE_MAX_BATCH; None: sized for the device (EngineLimits.batch_for): 8 on CUDA, 1 on CPU, where a
    # padded, masked batch measured slower than the same chunks one by one (BENCHMARKS.md section 7)
    max_batch: int | None = None
    max_queue: int = 256  # ENGINE_MAX_QUEUE
    max_concurrency: int | None = None  # MAX_CONCURRENCY; None: sized for the device (scheduler.max_concurrency)

    def batch_for(self, device: str) -> int:
        """The batch limit on ``device``: ``max_batch`` when set, else 8 on CUDA and 1 on CPU."""
        return self.max_batch or (8 if device.startswith("cuda") else 1)


DEFAULT_ENGINE = EngineLimits()


@dataclass(frozen=True)
class HttpSettings:
    """The server of ``WORKER_MODE=http`` (RunPod's load-balancing endpoints): ``PORT``, ``PORT_HEALTH``
    (``/ping``; unset: the same port), ``HTTP_HOST`` and ``HTTP_API_KEY``, which the repr leaves out."""

    port: int = 80
    health_port: int | None = None
    host: str = "0.0.0.0"
    api_key: str | None = field(default=None, repr=False)

    @property
    def ping_port(self) -> int:
        return self.health_port or self.port


@dataclass(frozen=True)
class Settings:
    """The worker's whole configuration; ``BucketSettings``' repr keeps the secret out of logs."""

    cache: CachePaths
    bucket: BucketSettings
    s3: S3Limits
    jobs: JobLimits
    model: ModelSources
    asr: AsrSettings
    offline: bool  # HF_HUB_OFFLINE: start only from files already in a cache, never download
    warm_up: str  # F5TTS_WARMUP: "auto", "1" or "0" (pipeline.wants_warm_up)
    streaming: bool  # STREAMING: the generator handler
    log_level: str  # LOG_LEVEL, a ``logging`` level name
    runpod_log_level: str  # RUNPOD_LOG_LEVEL, the SDK's; INFO, not the SDK's DEBUG, which logs every job's output
    engine: EngineLimits
    mode: str = "queue"  # WORKER_MODE: "queue" (RunPod's job queue) or "http" (a load-balancing endpoint's server)
    http: HttpSettings = HttpSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        try:
            model, asr = ModelSources.from_env(env), AsrSettings.from_env(env)
        except ModelConfigError as err:  # every one from_env raises names its variable
            raise SettingsError(err.variable, err.why) from err
        return cls(
            cache=CachePaths.from_env(env),
            bucket=BucketSettings.from_env(env),
            s3=S3Limits(
                connect_timeout_s=_positive(env, "S3_CONNECT_TIMEOUT_S", S3Limits.connect_timeout_s),
                read_timeout_s=_positive(env, "S3_READ_TIMEOUT_S", S3Limits.read_timeout_s),
                max_attempts=_positive(env, "S3_MAX_ATTEMPTS", S3Limits.max_attempts),
                presign_expires_s=_positive(env, "S3_PRESIGN_EXPIRES_S", S3Limits.presign_expires_s, PRESIGN_MAX_S),
            ),
            jobs=JobLimits(
                max_text_chars=_positive(env, "MAX_TEXT_CHARS", JobLimits.max_text_chars),
                max_texts=_positive(env, "MAX_TEXTS", JobLimits.max_texts),
                voice_max_bytes=_positive(env, "VOICE_MAX_BYTES", JobLimits.voice_max_bytes),
                voice_max_seconds=_positive(env, "VOICE_MAX_SECONDS", JobLimits.voice_max_seconds),
            ),
            model=model,
            asr=asr,
            offline=is_true(env.get("HF_HUB_OFFLINE")),
            warm_up=_warm_up(env),
            streaming=is_true(env.get("STREAMING")),
            log_level=_choice(env, "LOG_LEVEL", "INFO", tuple(logging.getLevelNamesMapping())),
            runpod_log_level=_choice(env, "RUNPOD_LOG_LEVEL", "INFO", RUNPOD_LOG_LEVELS),
            engine=EngineLimits(
                max_batch=_positive(env, "ENGINE_MAX_BATCH", 0) or None,
                max_queue=_positive(env, "ENGINE_MAX_QUEUE", EngineLimits.max_queue),
                max_concurrency=_positive(env, "MAX_CONCURRENCY", 0, CONCURRENCY_LIMIT) or None,
            ),
            mode=_choice(env, "WORKER_MODE", "QUEUE", WORKER_MODES).lower(),
            http=HttpSettings(
                port=_positive(env, "PORT", HttpSettings.port, PORT_MAX),
                health_port=_positive(env, "PORT_HEALTH", 0, PORT_MAX) or None,
                host=_value(env, "HTTP_HOST") or HttpSettings.host,
                api_key=_value(env, "HTTP_API_KEY"),
            ),
        )


def load_settings(env: MutableMapping[str, str]) -> Settings:
    """``Settings.from_env(env)``, then the cache variables pinned into ``env`` (``apply_cache_env``):
    what the worker and ``provision.py`` run first thing, before anything imports huggingface_hub,
    which reads them once, at its import (no module the entry points import at their top imports
    huggingface_hub or transformers: ``tests/test_settings.py`` checks)."""
    settings = Settings.from_env(env)
    apply_cache_env(settings.cache, env)
    return settings


def _value(env: Mapping[str, str], variable: str) -> str | None:
    """The variable's value, stripped; None when unset or empty."""
    return (env.get(variable) or "").strip() or None


def _positive(env: Mapping[str, str], variable: str, default: Number, maximum: Number | None = None) -> Number:
    """A number above 0 (at most ``maximum``), of ``default``'s type: an int or a float."""
    raw = _value(env, variable)
    if raw is None:
        return default
    kind = type(default)
    try:
        value = kind(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(variable, f"must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if value <= 0:
        raise SettingsError(variable, f"must be greater than 0, not {raw!r}")
    if maximum is not None and value > maximum:
        raise SettingsError(variable, f"must be at most {maximum}, not {raw!r}")
    return value


def _choice(env: Mapping[str, str], variable: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (upper case), any case accepted."""
    raw = _value(env, variable)
    if raw is None:
        return default
    if raw.upper() not in choices:
        raise SettingsError(variable, f"must be one of {', '.join(choices)}, not {raw!r}")
    return raw.upper()


def _warm_up(env: Mapping[str, str]) -> str:
    """``F5TTS_WARMUP`` as ``auto``, ``1`` or ``0``: a three-way choice, so unlike the on/off
    variables, a value that is neither ``auto`` nor on nor off is a mistake, not "off"."""
    raw = (_value(env, "F5TTS_WARMUP") or "auto").lower()
    if raw == "auto":
        return raw
    if raw not in (*TRUE_WORDS, *FALSE_WORDS):
        raise SettingsError("F5TTS_WARMUP", f"must be auto, {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}, "
                                            f"not {raw!r}")
    return "1" if is_true(raw) else "0"
