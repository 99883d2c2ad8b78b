#!/usr/bin/env python
"""In-pod check of the three storage tiers: will this worker load its model, run jobs and reach
its bucket, and if not, what exactly to fix. Run it inside the deployed pod before sending traffic:

    python validate_storage_config.py                    # a table, one line per check
    python validate_storage_config.py --json             # one JSON document on stdout
    python validate_storage_config.py --skip s3,imports  # leave checks out
    python validate_storage_config.py --deep             # also hash every cached model file

Checks, each PASS / WARN / FAIL with a one-line reason and a fix:
  env        HF_HOME, HF_HUB_CACHE, TORCH_HOME set and inside the volume; legacy cache variables;
             every variable's value one the worker accepts (a bad one: FAIL, the worker would not start)
  volume     the network volume (RUNPOD_VOLUME_PATH, /runpod-volume) exists on its own filesystem
  dirs       each cache directory exists and takes a probe file (create, fsync, delete)
  space      free space where models go >= the model files still to download + headroom
  tmp        the scratch dir (TMPDIR, /tmp) takes a probe file and has free space for job files
  model      the configured model's files are in the cache and complete, so the cold start is offline
  imports    torch, torchaudio, f5_tts, runpod, boto3, soundfile and the worker import (in a
             subprocess, the one slow check: seconds); CUDA and GPU memory (CPU only: WARN)
  s3         credentials, endpoint, bucket, a probe object written/read/deleted under _validate/,
             the voices prefix listable (no bucket configured: WARN, results go back inline)
  leftovers  stale per-job dirs in scratch, partial downloads and held or stale locks in the cache, the
             provisioning lease (a worker fetching model files now, or a stale one left by a dead worker)

Exit status: 0 every check passed (or was skipped), 1 at least one FAIL, 2 warnings but no FAIL,
64 a bad command line.

Paths and defaults come from ``storage.py`` and the model's files from ``model_files.py``, the
modules the worker itself uses, so the two cannot disagree. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import enum
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from f5worker.model_cache import (
    LEASE_S,
    IncompleteFile,
    LeaseHolder,
    disk_free,
    lease_holder,
    resolve_file,
    verify_complete,
)
from f5worker.model_files import (
    PUBLISHED_FILE_BYTES,
    AsrSettings,
    HubFile,
    ModelConfigError,
    ModelFilesMissing,
    ModelSources,
    is_hub_ref,
    parse_model_config,
    worker_file_refs,
)
from f5worker.settings import Settings as WorkerSettings
from f5worker.settings import SettingsError
from f5worker.storage import (
    JOB_DIR_PREFIX,
    LEGACY_CACHE_VARS,
    BucketSettings,
    CachePaths,
    S3Limits,
    human_bytes,
    nearest_existing,
    scratch_root,
)

ROOT = Path(__file__).resolve().parent
PROBE_PREFIX = "_validate/"  # S3 scratch prefix for the probe object, deleted again at once
GB = 1_000_000_000
CONTAINER_ROOT = Path("/")  # the container disk: the volume must be another filesystem
MOUNT_FIX = ("attach a network volume to the endpoint (RunPod mounts it at /runpod-volume), "
             "or set RUNPOD_VOLUME_PATH to where it is mounted")
# What the imports check imports, in the worker's own order; ``runpod_handler`` last, so a
# failure there that is not one of the libraries points at the worker's code.
IMPORTS = ("torch", "torchaudio", "soundfile", "boto3", "runpod", "f5_tts.model", "f5_tts.infer.utils_infer",
           "runpod_handler")
IMPORTS_TIMEOUT_S = 300


class Status(str, enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


SEVERITY = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass
class Result:
    name: str
    status: Status
    reason: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Settings:
    """What the checks look at: the worker's tiers from ``env``, plus the validator's thresholds.
    The tiers are parsed alone (a bad value elsewhere, which ``check_env`` reports, must not hide them)."""

    env: Mapping[str, str]
    cache: CachePaths
    bucket: BucketSettings
    scratch: Path
    headroom_bytes: int = 2 * GB
    min_scratch_free_bytes: int = 1 * GB
    stale_after_s: float = 30 * 60
    deep: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], scratch: Path | None = None, **thresholds: Any) -> Settings:
        return cls(env=env, cache=CachePaths.from_env(env), bucket=BucketSettings.from_env(env),
                   scratch=scratch or scratch_root(), **thresholds)


def _pass(name: str, reason: str, **details: Any) -> Result:
    return Result(name, Status.PASS, reason, details=details)


def _worst(problems: list[tuple[Status, str, str]], name: str, ok: str, details: dict[str, Any]) -> Result:
    """One result from ``(status, reason, fix)`` problems: the worst one leads, the rest are counted."""
    if not problems:
        return Result(name, Status.PASS, ok, details=details)
    problems.sort(key=lambda p: -SEVERITY[p[0]])
    status, reason, fix = problems[0]
    if len(problems) > 1:
        reason += f" (+{len(problems) - 1} more, see details)"
    details["problems"] = [f"{s.value}: {r}" for s, r, _ in problems]
    return Result(name, status, reason, fix, details)


# ---------------------------------------------------------------------------- filesystem helpers

def _within(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _same_fs(a: Path, b: Path) -> bool:
    return nearest_existing(a).stat().st_dev == nearest_existing(b).stat().st_dev


def probe_write(directory: Path) -> str | None:
    """None when a file can be created, fsynced and deleted in ``directory``; else why not.

    A real write, not ``os.access``: root passes every access check, and a read-only mount or an
    immutable directory only shows itself when written to.
    """
    probe = directory / f".validate-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


# ---------------------------------------------------------------------------- the checks

def check_env(s: Settings) -> Result:
    volume = s.cache.volume
    problems: list[tuple[Status, str, str]] = []
    details: dict[str, Any] = {"volume": str(volume)}
    cache_vars = {"HF_HOME": s.cache.hf_home, "HF_HUB_CACHE": s.cache.hub_cache, "TORCH_HOME": s.cache.torch_home}
    for var, path in cache_vars.items():
        where = ("volume" if _within(path, volume) else "scratch" if _within(path, s.scratch)
                 else "container disk" if _same_fs(path, CONTAINER_ROOT) else "other filesystem")
        details[var] = {"set": var in s.env, "path": str(path), "location": where}
        if var not in s.env:
            problems.append((Status.WARN, f"{var} is not set (the worker defaults it to {path})",
                             f"set {var}={path} in the endpoint's environment, so every tool in the pod agrees"))
        if where == "scratch":
            problems.append((Status.WARN, f"{var}={path} is in the scratch dir {s.scratch}: lost with every container",
                             f"point {var} inside the volume {volume}"))
        elif where != "volume":
            problems.append((Status.WARN, f"{var}={path} is outside the volume {volume} ({where})",
                             f"point {var} inside the volume {volume}"))
    hf_set = any(v in s.env for v in ("HF_HOME", "HF_HUB_CACHE"))
    for var in LEGACY_CACHE_VARS:
        value = s.env.get(var)
        if value and os.path.realpath(value) != os.path.realpath(s.cache.hub_cache):
            what = "only the legacy" if not hf_set else "the legacy"
            problems.append((Status.WARN, f"{what} {var}={value} is set; the worker ignores it and uses "
                             f"{s.cache.hub_cache}",
                             f"set HF_HUB_CACHE (or HF_HOME) instead and unset {var}"))
    try:
        WorkerSettings.from_env(s.env)
    except SettingsError as err:
        problems.append((Status.FAIL, f"{err}: the worker would not start",
                         f"correct {err.variable} (STORAGE-DEPLOYMENT-GUIDE.md, environment reference)"))
    return _worst(problems, "env", f"HF_HOME, HF_HUB_CACHE, TORCH_HOME set, all inside the volume {volume}", details)


def check_volume(s: Settings) -> Result:
    volume = s.cache.volume
    fix = MOUNT_FIX
    if not volume.is_dir():
        state = "does not exist" if not volume.exists() else "is not a directory"
        return Result("volume", Status.FAIL, f"volume {volume} {state}", fix)
    if _same_fs(volume, CONTAINER_ROOT):
        return Result("volume", Status.FAIL,
                      f"{volume} is on the same filesystem as {CONTAINER_ROOT}: no volume is mounted there, "
                      "and caches would fill the container disk", fix)
    usage = shutil.disk_usage(volume)
    return _pass("volume", f"{volume} is its own filesystem ({human_bytes(usage.total)}, "
                 f"{human_bytes(usage.free)} free)", total_bytes=usage.total, free_bytes=usage.free)


def check_dirs(s: Settings) -> Result:
    problems: list[tuple[Status, str, str]] = []
    details: dict[str, Any] = {}
    dirs = {"volume": s.cache.volume, "HF_HOME": s.cache.hf_home, "HF_HUB_CACHE": s.cache.hub_cache,
            "TORCH_HOME": s.cache.torch_home}
    for label, path in dirs.items():
        if path.is_dir():
            error = probe_write(path)
            details[label] = {"path": str(path), "writable": error is None}
            if error:
                problems.append((Status.FAIL, f"{label} {path} is not writable ({error})",
                                 f"make {path} writable by this user (check the volume is mounted read-write)"))
            continue
        ancestor = nearest_existing(path)
        if label == "volume":  # created on the container disk it would hide exactly what is wrong
            error, fix = "the volume is not mounted", MOUNT_FIX
        else:
            error = probe_write(ancestor) if ancestor.is_dir() else f"{ancestor} is not a directory"
            fix = f"fix {ancestor} or point {label} elsewhere"
        details[label] = {"path": str(path), "exists": False, "creatable": error is None}
        if error:
            problems.append((Status.FAIL, f"{label} {path} does not exist and cannot be created ({error})", fix))
        else:
            problems.append((Status.WARN, f"{label} {path} does not exist yet (it is created on first use)",
                             f"mkdir -p {path}"))
    ok = "every cache directory exists and takes a probe file (create, fsync, delete)"
    return _worst(problems, "dirs", ok, details)


@dataclass(frozen=True)
class _ModelFile:
    ref: str
    path: Path | None  # None: not in the cache
    error: str = ""


def _model_files(s: Settings, sources: ModelSources) -> list[_ModelFile]:
    found = []
    for ref in worker_file_refs(sources, AsrSettings.from_env(s.env)):
        try:
            found.append(_ModelFile(ref, resolve_file(ref, s.cache.hub_cache, False, s.cache.fallback_caches)))
        except ModelFilesMissing as err:
            found.append(_ModelFile(ref, None, str(err)))
    return found


def check_space(s: Settings) -> Result:
    target = nearest_existing(s.cache.hub_cache)
    free = disk_free(target)
    try:
        files = _model_files(s, ModelSources.from_env(s.env))
    except ModelConfigError as err:
        files, config_error = [], str(err)
    else:
        config_error = ""
    cached = sum(f.path.stat().st_size for f in files if f.path)
    missing = [f.ref for f in files if f.path is None]
    unknown = [ref for ref in missing if ref not in PUBLISHED_FILE_BYTES]
    pending = sum(PUBLISHED_FILE_BYTES.get(ref, 0) for ref in missing)
    need = pending + s.headroom_bytes
    details = {"path": str(target), "free_bytes": free, "cached_bytes": cached, "to_download_bytes": pending,
               "headroom_bytes": s.headroom_bytes, "unknown_size": unknown}
    summary = (f"{human_bytes(free)} free at {target}; model {human_bytes(cached)} cached, "
               f"{human_bytes(pending)} to download, {human_bytes(s.headroom_bytes)} headroom")
    if free < need:
        return Result("space", Status.FAIL, f"only {summary}", f"free at least {human_bytes(need - free)} on {target} "
                      "or attach a larger volume", details)
    if config_error or unknown:
        why = config_error or f"size of {', '.join(unknown)} unknown until downloaded"
        return Result("space", Status.WARN, f"{summary}; {why}", "check the volume holds the custom model files",
                      details)
    return _pass("space", summary, **details)


def check_tmp(s: Settings) -> Result:
    error = probe_write(s.scratch) if s.scratch.is_dir() else "does not exist"
    if error:
        return Result("tmp", Status.FAIL, f"scratch dir {s.scratch} is not writable ({error})",
                      "point TMPDIR at a writable directory on the container disk")
    free = shutil.disk_usage(s.scratch).free
    details = {"path": str(s.scratch), "free_bytes": free, "min_free_bytes": s.min_scratch_free_bytes}
    if free < s.min_scratch_free_bytes:
        return Result("tmp", Status.FAIL, f"scratch dir {s.scratch} has {human_bytes(free)} free, below "
                      f"{human_bytes(s.min_scratch_free_bytes)}",
                      "raise the container disk size or clean the scratch dir", details)
    return _pass("tmp", f"scratch dir {s.scratch} writable, {human_bytes(free)} free", **details)


def check_model(s: Settings) -> Result:
    try:
        sources = ModelSources.from_env(s.env)
        files = _model_files(s, sources)
    except ModelConfigError as err:
        return Result("model", Status.FAIL, str(err),
                      "fix F5TTS_MODEL / F5TTS_CKPT_FILE / F5TTS_MODEL_CONFIG / ASR_MODEL")
    details: dict[str, Any] = {"model": sources.name, "files": {}}
    if sources.config is None:
        details["files"]["config"] = "packaged with f5-tts"
    if sources.vocab is None:
        details["files"]["vocab"] = "packaged with f5-tts"
    problems: list[tuple[Status, str, str]] = []
    total = 0
    for f in files:
        if f.path is None:
            hint = (f"download it with network access: hf download {HubFile.parse(f.ref).repo_id} "
                    f"{HubFile.parse(f.ref).filename} --cache-dir {s.cache.hub_cache}" if is_hub_ref(f.ref)
                    else f"copy the file to {f.ref}")
            problems.append((Status.FAIL, f"{f.ref} is not in the cache", hint))
            details["files"][f.ref] = {"present": False, "error": f.error}
            continue
        size = f.path.stat().st_size
        total += size
        try:
            how = verify_complete(f.path, deep=s.deep)
        except IncompleteFile as err:
            problems.append((Status.FAIL, str(err), f"delete {f.path.resolve()} and download {f.ref} again"))
            details["files"][f.ref] = {"present": True, "path": str(f.path), "bytes": size, "complete": False}
            continue
        details["files"][f.ref] = {"present": True, "path": str(f.path), "bytes": size, "complete": True,
                                   "checked": how}
    config = next((f for f in files if f.ref == sources.config and f.path), None)
    if config is not None:
        try:
            parse_model_config(config.path.read_text(), sources.config)
        except ModelConfigError as err:
            problems.append((Status.FAIL, str(err), "fix the model config file"))
    ok = (f"{sources.name}: {len(files)} files cached and complete ({human_bytes(total)})"
          + (", content hashes verified" if s.deep else "") + ": the cold start needs no network")
    return _worst(problems, "model", ok, details)


def import_probe() -> None:
    """Runs in a subprocess (see ``check_imports``): import each module, report CUDA; JSON on stdout."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    report: dict[str, Any] = {"modules": {}, "errors": {}}
    for name in IMPORTS:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure to import is the finding
            report["errors"][name] = f"{type(err).__name__}: {err}"[:300]
            continue
        try:
            dist = version(name.split(".")[0].replace("_", "-"))
        except PackageNotFoundError:
            dist = None
        report["modules"][name] = {"version": dist, "seconds": round(time.perf_counter() - start, 3)}
    if "torch" in report["modules"]:
        import torch

        report["cuda"] = torch.cuda.is_available()
        report["gpus"] = []
        for i in range(torch.cuda.device_count() if report["cuda"] else 0):
            free, total = torch.cuda.mem_get_info(i)
            report["gpus"].append({"name": torch.cuda.get_device_name(i), "total_bytes": total, "free_bytes": free})
    print(json.dumps(report))


def check_imports(s: Settings) -> Result:
    fix = "reinstall the image's requirements (requirements.txt, then requirements-f5tts.txt with --no-deps)"
    try:
        proc = subprocess.run([sys.executable, "-c", "import validate_storage_config as v; v.import_probe()"],
                              cwd=ROOT, env=dict(s.env), capture_output=True, text=True, timeout=IMPORTS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Result("imports", Status.FAIL, f"importing the worker took over {IMPORTS_TIMEOUT_S} s", fix)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return Result("imports", Status.FAIL, f"the import probe exited {proc.returncode}: {tail}", fix)
    if report["errors"]:
        name, error = next(iter(report["errors"].items()))
        return Result("imports", Status.FAIL, f"import {name} failed: {error}", fix, report)
    seconds = sum(m["seconds"] for m in report["modules"].values())
    if not report["cuda"]:
        return Result("imports", Status.WARN, f"{len(report['modules'])} modules import ({seconds:.1f} s); "
                      "CUDA is not available: the worker would run on CPU, far slower",
                      "run on a GPU pod with a driver matching torch's CUDA build", report)
    gpus = ", ".join(f"{g['name']} {human_bytes(g['free_bytes'])} free of {human_bytes(g['total_bytes'])}"
                     for g in report["gpus"])
    return Result("imports", Status.PASS, f"{len(report['modules'])} modules import ({seconds:.1f} s); CUDA: {gpus}",
                  details=report)


def check_s3(s: Settings) -> Result:
    b = s.bucket
    if not b.configured:
        return Result("s3", Status.WARN, "no BUCKET_NAME: results come back inline (base64), only the default voice",
                      "set BUCKET_NAME, BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY")
    if bool(b.access_key_id) != bool(b.secret_access_key):
        return Result("s3", Status.FAIL, "only one of BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY is set",
                      "set both, or neither to use the AWS credential chain")
    from botocore.exceptions import BotoCoreError, ClientError

    from f5worker.s3 import list_s3_objects, make_client, read_text

    try:
        limits = WorkerSettings.from_env(s.env).s3  # the worker's timeouts
    except SettingsError:  # check_env reports it; the defaults meanwhile
        limits = S3Limits()
    client = make_client(b, replace(limits, max_attempts=1))  # one try: report what is wrong, do not retry it
    where = f"s3://{b.name} at {b.endpoint_url or 'AWS'}"
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt"
    payload = f"validate_storage_config probe {time.time()}"
    done: list[str] = []
    step, written = "head_bucket", False
    try:
        client.head_bucket(Bucket=b.name)
        done.append("bucket exists")
        step = "put_object"
        client.put_object(Bucket=b.name, Key=key, Body=payload.encode())
        written = True
        step = "get_object"
        if read_text(client, b.name, key) != payload:
            return Result("s3", Status.FAIL, f"{where}: the probe object read back differs from what was written",
                          "check the endpoint is a consistent S3 store", {"steps": done})
        step = "delete_object"
        client.delete_object(Bucket=b.name, Key=key)
        written = False
        done.append(f"probe {key} written, read back, deleted")
        step = "list_objects_v2"
        voices = list_s3_objects(client, b.name, b.voices_prefix)
        done.append(f"{len(voices)} objects under {b.voices_prefix}")
    except (BotoCoreError, ClientError) as err:
        return _s3_failure(client, b, where, step, err, done)
    finally:
        if written:  # a step after the write failed: do not leave the probe behind
            try:
                client.delete_object(Bucket=b.name, Key=key)
            except (BotoCoreError, ClientError):
                pass
    return _pass("s3", f"{where}: bucket exists, probe write/read/delete ok, {len(voices)} objects under "
                 f"{b.voices_prefix}", steps=done, voices=len(voices))


def _s3_failure(client: Any, b: BucketSettings, where: str, step: str, err: Any, done: list[str]) -> Result:
    """The failed step as a result, read by :func:`f5worker.s3.classify_error` as the worker reads job errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    from f5worker.s3 import S3Problem, classify_error, error_code

    if step == "head_bucket" and error_code(err) == "403":  # HEAD has no body: ask again with a GET for the real code
        try:
            client.list_objects_v2(Bucket=b.name, MaxKeys=1)
        except ClientError as detailed:
            err = detailed
        except BotoCoreError:
            pass
    code = error_code(err)
    details = {"steps": done, "failed_step": step, "code": code}
    problem = classify_error(err)
    reason, fix = {
        S3Problem.NO_CREDENTIALS: ("no S3 credentials: BUCKET_ACCESS_KEY_ID/BUCKET_SECRET_ACCESS_KEY unset and none "
                                   "in the AWS credential chain",
                                   "set BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"),
        S3Problem.UNREACHABLE: (f"endpoint {b.endpoint_url or 'AWS'} unreachable ({type(err).__name__})",
                                "check BUCKET_ENDPOINT_URL and that the pod can reach it"),
        S3Problem.NO_BUCKET: (f"{where}: bucket does not exist", "create the bucket or fix BUCKET_NAME"),
        S3Problem.CREDENTIALS_REJECTED: (f"{where}: credentials rejected ({code})",
                                         "fix BUCKET_ACCESS_KEY_ID / BUCKET_SECRET_ACCESS_KEY"),
        S3Problem.ACCESS_DENIED: (f"{where}: access denied at {step} ({code})",
                                  f"grant the key s3:GetObject, PutObject, DeleteObject and ListBucket on {b.name}"),
    }.get(problem) or _s3_other_failure(where, step, err, code)
    return Result("s3", Status.FAIL, reason, fix, details)


def _s3_other_failure(where: str, step: str, err: Any, code: str) -> tuple[str, str]:
    if code:
        message = err.response.get("Error", {}).get("Message", "")
        return f"{where}: {step} failed ({code}: {message})", "check the bucket settings"
    return (f"{where}: {step} failed ({type(err).__name__}: {err})",
            "check BUCKET_ENDPOINT_URL, BUCKET_NAME and the endpoint's health")


def _lock_state(path: Path) -> str:
    """``held`` (a process is downloading now), ``free`` (a harmless leftover), or ``soft`` (the
    filesystem has no flock: the file itself is the lock, as huggingface_hub then uses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "free"  # gone meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    except BlockingIOError:
        return "held"
    except OSError:
        return "soft"
    finally:
        os.close(fd)


def check_leftovers(s: Settings) -> Result:
    def old(p: Path) -> bool:
        return time.time() - p.stat().st_mtime > s.stale_after_s

    problems: list[tuple[Status, str, str]] = []
    minutes = f"{s.stale_after_s / 60:.0f} min"
    job_dirs = [p for p in s.scratch.glob(f"{JOB_DIR_PREFIX}*") if p.is_dir() and old(p)] if s.scratch.is_dir() else []
    if job_dirs:
        problems.append((Status.WARN, f"{len(job_dirs)} per-job dirs older than {minutes} in {s.scratch} "
                         "(a worker died mid-job)",
                         f"rm -r {s.scratch}/{JOB_DIR_PREFIX}*  (when no worker runs)"))
    hub = s.cache.hub_cache
    partial = sorted(hub.rglob("*.incomplete")) if hub.is_dir() else []
    if partial:
        problems.append((Status.WARN, f"{len(partial)} partial downloads (*.incomplete) in {hub}",
                         "delete them (when no download runs); a new download starts over"))
    locks = {p: _lock_state(p) for p in sorted((hub / ".locks").rglob("*.lock"))} if hub.is_dir() else {}
    held = [p for p, state in locks.items() if state == "held"]
    stale = [p for p, state in locks.items() if state == "soft" and old(p)]
    if held:
        problems.append((Status.WARN, f"{len(held)} cache locks held: a download into {hub} is running now",
                         "wait for it to finish before sending traffic"))
    if stale:
        problems.append((Status.WARN, f"{len(stale)} lock files older than {minutes} on a filesystem without flock "
                         "block downloads", f"delete them: {stale[0]} ..."))
    lease = lease_holder(hub) if hub.is_dir() else None
    if lease is not None:
        problems.append(_lease_problem(lease, hub))
    details = {"stale_job_dirs": [str(p) for p in job_dirs], "incomplete": [str(p) for p in partial],
               "locks": {str(p): state for p, state in locks.items()},
               "provisioning_lease": None if lease is None else {
                   "path": str(lease.marker), "owner": lease.owner, "stale": lease.stale,
                   "heartbeat_age_s": round(lease.heartbeat_age_s, 1)}}
    ok = f"no stale job dirs in {s.scratch}, no partial downloads, held locks or provisioning lease in {hub}"
    return _worst(problems, "leftovers", ok, details)


def _lease_problem(lease: LeaseHolder, hub: Path) -> tuple[Status, str, str]:
    """The provisioning lease (``model_cache.cache_lease``): a worker fetching model files now, or one that died."""
    heartbeat = f"last heartbeat {lease.heartbeat_age_s:.0f} s ago"
    if lease.stale:
        why = "it has exited" if lease.gone else f"no heartbeat for over {LEASE_S:.0f} s"
        return (Status.WARN, f"stale provisioning lease {lease.marker} held by {lease.owner} ({why}; {heartbeat}): "
                "a worker died while fetching model files",
                f"the next fetch takes it over by itself; with no worker running, rm {lease.marker}")
    return (Status.WARN, f"a worker is fetching model files into {hub} now: provisioning lease {lease.marker} held by "
            f"{lease.owner} ({heartbeat})", "wait for it to finish before sending traffic")


CHECKS: dict[str, Callable[[Settings], Result]] = {
    "env": check_env, "volume": check_volume, "dirs": check_dirs, "space": check_space, "tmp": check_tmp,
    "model": check_model, "imports": check_imports, "s3": check_s3, "leftovers": check_leftovers,
}


def run_checks(settings: Settings, skip: Iterable[str] = ()) -> list[Result]:
    """Every check not in ``skip``, in order; a check that crashes is a FAIL, never a crash."""
    results = []
    for name, check in CHECKS.items():
        if name in skip:
            continue
        start = time.perf_counter()
        try:
            result = check(settings)
        except Exception as err:  # noqa: BLE001 - one broken check must not hide the others
            result = Result(name, Status.FAIL, f"the check itself failed: {type(err).__name__}: {err}",
                            "report this with the output above")
        result.seconds = round(time.perf_counter() - start, 3)
        results.append(result)
    return results


def exit_code(results: list[Result]) -> int:
    worst = max((SEVERITY[r.status] for r in results), default=0)
    return {0: 0, 1: 2, 2: 1}[worst]


def render_table(results: list[Result]) -> str:
    width = max((len(r.name) for r in results), default=5)
    lines = [f"{'CHECK':<{width}}  STATUS  REASON"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status.value:<6}  {r.reason}")
        if r.status is not Status.PASS and r.fix:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {r.fix}")
        lines.extend(f"{'':<{width}}  {'':<6}  also {p}" for p in r.details.get("problems", [])[1:])
    return "\n".join(lines)


def _redact(text: str, settings: Settings) -> str:
    """Belt and braces: no check prints the secret, and none can reach the output by accident."""
    secret = settings.bucket.secret_access_key
    return text.replace(secret, "***") if secret else text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 64, not argparse's 2, which means "warnings"
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK[,CHECK]",
                        help=f"checks to leave out, of: {', '.join(CHECKS)}")
    parser.add_argument("--deep", action="store_true", help="also hash every cached model file (seconds per GB)")
    parser.add_argument("--headroom-gb", type=float, default=2.0,
                        help="free space to keep on the volume beyond the model files still to download (default 2)")
    parser.add_argument("--min-tmp-free-gb", type=float, default=1.0,
                        help="free space the scratch dir needs for per-job files (default 1)")
    parser.add_argument("--stale-minutes", type=float, default=30.0,
                        help="age after which a per-job dir or soft lock counts as left over (default 30)")
    args = parser.parse_args(argv)
    args.skip = {name.strip() for value in args.skip for name in value.split(",") if name.strip()}
    if unknown := args.skip - set(CHECKS):
        parser.error(f"unknown check(s) in --skip: {', '.join(sorted(unknown))}; choose from {', '.join(CHECKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env(
        os.environ, headroom_bytes=int(args.headroom_gb * GB), min_scratch_free_bytes=int(args.min_tmp_free_gb * GB),
        stale_after_s=args.stale_minutes * 60, deep=args.deep,
    )
    start = time.perf_counter()
    results = run_checks(settings, args.skip)
    code = exit_code(results)
    if args.json:
        overall = {0: "PASS", 1: "FAIL", 2: "WARN"}[code]
        doc = {"status": overall, "exit_code": code, "seconds": round(time.perf_counter() - start, 3),
               "skipped": sorted(args.skip), "checks": [{**asdict(r), "status": r.status.value} for r in results]}
        print(_redact(json.dumps(doc, indent=2), settings))
    else:
        print(_redact(render_table(results), settings))
        print(f"\n{len(results)} checks in {time.perf_counter() - start:.1f} s: exit {code} "
              "(0 all pass, 1 any FAIL, 2 warnings only)")
    return code


if __name__ == "__main__":
    sys.exit(main())
