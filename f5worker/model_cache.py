"""Where the model's files are, and how they get there: the Hugging Face cache layer.

Read top-down: :mod:`f5worker.model_files` says which files; this module finds them in the caches
(no network), verifies them, and fetches the missing ones, safely for many workers at once;
:mod:`f5worker.tts_model` loads them.

The files are those the worker loads: the checkpoint, vocab and config chosen by F5TTS_MODEL /
F5TTS_CKPT_FILE / F5TTS_VOCAB_FILE / F5TTS_MODEL_CONFIG (see :mod:`f5worker.model_files`) and the Vocos
vocoder's config and weights. The worker calls ``fetch`` itself when a file is in none of the model
caches, so a first start on an empty volume takes exactly this path.

What ``huggingface_hub`` 1.33 already guarantees, and what this module adds to it:

* Never a torn file: ``hf_hub_download`` writes each download to its own
  ``blobs/<etag>.<random>.incomplete`` and renames it to ``blobs/<etag>`` only once the byte count
  matches the hub's size. We keep that, and also check the bytes against the ETag (sha256 for LFS
  files, the git blob sha1 otherwise).
* No resume across processes: a killed download leaves its temp file behind, never reused and still
  taking space, and the next attempt starts again from byte 0. We delete the leftovers of the files
  about to be downloaded (under the lease, before measuring free space).
* Its lock is a per-file ``flock``. Some network filesystems grant an ``flock`` to every caller
  (huggingface_hub's own comment names Lustre, GPFS and some NFS mounts); then N workers download N
  copies into N temp files, N times the space. We hold one lease on the cache for the whole fetch,
  so the free-space check and the downloads of all files happen under it, and workers that waited
  find the files without a single request: ``filelock.SoftFileLease``, an ``O_EXCL`` marker file
  (any filesystem with exclusive create) refreshed by a heartbeat thread. A holder that died on this
  host is taken over at once; one on another host, or a hung one, once its marker has gone
  ``LEASE_S`` seconds without a heartbeat.
* Its free-space check only warns. We add up the sizes of the files still to download (from the hub's
  metadata) and stop before the first byte when they do not fit, naming needed and available bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from f5worker.model_files import (
    HubFile,
    ModelFilesMissing,
    ModelSources,
    ResolvedModel,
    first_line,
    is_hub_ref,
    parse_model_config,
)
from f5worker.storage import human_bytes, nearest_existing

log = logging.getLogger("f5tts.provision")

LEASE_S = 60.0  # every contender for one cache must use the same value (filelock refuses a mismatch)
LOCK_TIMEOUT_S = 1800.0  # how long a worker waits for another one's download before giving up
LEASE_FILE = ".locks/f5tts-provision.lease"


class VolumeTooSmall(ModelFilesMissing):
    """The cache's filesystem has less free space than the files still to be downloaded."""


@dataclass(frozen=True)
class FetchedFile:
    ref: str
    path: Path
    size: int
    downloaded: bool


@dataclass(frozen=True)
class _Download:
    hub: HubFile
    size: int | None  # None: the hub sent no size
    blob: Path  # where hf_hub_download will put it: <cache>/<repo folder>/blobs/<etag>


def disk_free(path: Path) -> int:
    """Free bytes on the filesystem holding ``path``, or that will hold it (nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free


@contextmanager
def cache_lease(cache_dir: Path, timeout_s: float = LOCK_TIMEOUT_S, lease_s: float = LEASE_S) -> Iterator[Path]:
    """Hold the provisioning lease of ``cache_dir``; yields the marker's path."""
    from filelock import SoftFileLease, Timeout

    marker = cache_dir / LEASE_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)
    lease = SoftFileLease(marker, lease_duration=lease_s, timeout=timeout_s)
    try:
        try:
            lease.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another worker that is provisioning %s (lease %s)", cache_dir, marker)
            lease.acquire()
    except Timeout as err:
        raise ModelFilesMissing(
            f"another worker has been provisioning {cache_dir} for over {timeout_s:.0f}s (its lease {marker} "
            "is still refreshed): let it finish, or stop it"
        ) from err
    try:
        yield marker
    finally:
        lease.release()


@dataclass(frozen=True)
class LeaseHolder:
    """The holder of a cache's provisioning lease, as its marker on disk tells it."""

    marker: Path
    owner: str  # "pid 12 on host-a", or that the marker is unreadable
    heartbeat_age_s: float  # since the holder last refreshed the marker (every LEASE_S / 3 while it runs)
    gone: bool  # it ran on this host and has exited

    @property
    def stale(self) -> bool:
        """Whether the next contender takes the lease over at once (``SoftFileLease``'s rules)."""
        return self.gone or self.heartbeat_age_s >= LEASE_S


def lease_holder(cache_dir: Path) -> LeaseHolder | None:
    """Who holds the provisioning lease of ``cache_dir``, or ``None``; only reads the marker."""
    from filelock import SoftFileLease

    marker = cache_dir / LEASE_FILE
    try:
        heartbeat = marker.stat().st_mtime
    except FileNotFoundError:
        return None
    record = SoftFileLease(marker, lease_duration=LEASE_S).owner
    if record is None:
        owner, gone = "an unreadable owner record", False
    else:
        owner = f"pid {record.pid} on {record.hostname}"
        gone = record.hostname == socket.gethostname() and not _process_exists(record.pid)
    return LeaseHolder(marker, owner, max(0.0, time.time() - heartbeat), gone)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def fetch(
    refs: Sequence[str],
    cache_dir: Path,
    *,
    free_bytes: Callable[[Path], int] = disk_free,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    lease_s: float = LEASE_S,
) -> list[FetchedFile]:
    """Make every ``hf://`` ref of ``refs`` present in ``cache_dir``; local paths must exist.

    Files already in ``cache_dir`` cost no network call and no lock. Raises ``ModelFilesMissing``
    (``VolumeTooSmall`` when they cannot fit) with the reason; nothing half-written is left in place.
    """
    for ref in refs:
        if not is_hub_ref(ref) and not Path(ref).expanduser().is_file():
            raise ModelFilesMissing(f"model file {ref} does not exist")
    hubs = [HubFile.parse(ref) for ref in refs if is_hub_ref(ref)]
    downloaded: set[HubFile] = set()
    if any(find_cached(hub, [cache_dir]) is None for hub in hubs):
        with cache_lease(cache_dir, lock_timeout_s, lease_s):
            # Whatever another worker fetched while we waited is not fetched again.
            plan = [_plan(hub, cache_dir) for hub in hubs if find_cached(hub, [cache_dir]) is None]
            _remove_leftovers(plan)
            _check_space(plan, cache_dir, free_bytes)
            for item in plan:
                _download(item, cache_dir)
                downloaded.add(item.hub)
    results = []
    for ref in refs:
        hub = HubFile.parse(ref) if is_hub_ref(ref) else None
        path = Path(ref).expanduser() if hub is None else find_cached(hub, [cache_dir])
        if path is None:  # only if something removed it under our feet
            raise ModelFilesMissing(f"{ref} vanished from {cache_dir} right after being fetched")
        results.append(FetchedFile(ref, path, path.stat().st_size, hub in downloaded))
    return results


def _plan(hub: HubFile, cache_dir: Path) -> _Download:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(hub.repo_id, hub.filename))
    except Exception as err:
        raise ModelFilesMissing(
            f"{hub} is not in {cache_dir} and its metadata could not be fetched "
            f"({type(err).__name__}: {first_line(err)})"
        ) from err
    if not meta.etag:
        raise ModelFilesMissing(f"{hub}: the hub sent no ETag, so the download could not be verified")
    return _Download(hub=hub, size=meta.size, blob=cache_dir / hub.repo_folder / "blobs" / meta.etag)


def _remove_leftovers(plan: Sequence[_Download]) -> None:
    """Delete the temp files of interrupted downloads of these very blobs (under the lease, every
    writer of them is gone: huggingface_hub never resumes from them)."""
    for item in plan:
        if not item.blob.parent.is_dir():
            continue
        for leftover in item.blob.parent.glob(f"{item.blob.name}*.incomplete"):
            size = leftover.stat().st_size
            leftover.unlink(missing_ok=True)
            log.info("removed %s (%d bytes) left by an interrupted download", leftover, size)


def _check_space(plan: Sequence[_Download], cache_dir: Path, free_bytes: Callable[[Path], int]) -> None:
    pending = [item for item in plan if not item.blob.exists()]
    if not pending:
        return
    for item in pending:
        if item.size is None:
            log.warning("%s: the hub sent no size; the free-space check cannot count it", item.hub)
    needed = sum(item.size or 0 for item in pending)
    available = free_bytes(cache_dir)
    if needed > available:
        raise VolumeTooSmall(
            f"{cache_dir} needs {needed:,} bytes ({human_bytes(needed)}) for {len(pending)} model file(s) "
            f"but its filesystem has {available:,} bytes ({human_bytes(available)}) free: "
            "enlarge the network volume or free space on it"
        )


def _download(item: _Download, cache_dir: Path) -> None:
    from huggingface_hub import hf_hub_download

    started = time.perf_counter()
    try:
        pointer = Path(hf_hub_download(item.hub.repo_id, item.hub.filename, cache_dir=cache_dir))
    except Exception as err:
        raise ModelFilesMissing(
            f"{item.hub} could not be downloaded into {cache_dir} ({type(err).__name__}: {first_line(err)})"
        ) from err
    blob = pointer.resolve()
    if etag_matches(blob, blob.name) is False:
        pointer.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ModelFilesMissing(f"{item.hub}: the downloaded bytes do not match the hub's ETag {blob.name}; removed")
    log.info("downloaded %s (%d bytes) in %.1fs", item.hub, blob.stat().st_size, time.perf_counter() - started)


def etag_matches(path: Path, etag: str) -> bool | None:
    """Whether ``path`` holds the bytes the hub's ETag names: the sha256 of an LFS file or the git
    blob sha1 of a regular one. ``None`` when the ETag is neither (nothing to check against)."""
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        digest = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        return None
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == etag


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
    and ``allow_download``, is it fetched into ``cache_dir`` through :func:`fetch` (locked,
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
    return fetch([ref], cache_dir)[0].path


def resolve_model(
    sources: ModelSources, cache_dir: Path, allow_download: bool, fallbacks: Sequence[Path] = ()
) -> ResolvedModel:
    """Find every file of ``sources`` in ``cache_dir`` then ``fallbacks``; parse the architecture.

    When allowed, the files found nowhere are fetched into ``cache_dir`` in one :func:`fetch`,
    so the free-space check covers all of them before the first byte is downloaded.
    """
    caches = (cache_dir, *fallbacks)
    missing = [r for r in sources.file_refs() if is_hub_ref(r) and find_cached(HubFile.parse(r), caches) is None]
    if missing and allow_download:
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
    matches = etag_matches(blob, blob.name)
    if matches is None:
        return "no content hash to compare (not a hub blob)"
    kind = "sha256" if len(blob.name) == 64 else "git sha1"
    if not matches:
        raise IncompleteFile(f"{path}: content {kind} differs from the blob name {blob.name[:12]}...")
    return f"{kind} matches the blob name"
