"""Provisioning CLI: put the configured model's files into a Hugging Face cache.

    python provision.py fetch                          # into $HF_HUB_CACHE (/runpod-volume/models/hub)
    python provision.py fetch --cache /opt/f5tts/hub   # what Dockerfile.runpod runs to bake weights
    python provision.py half-copy                      # the fp16 copy of the cached checkpoint (CUDA workers)

The files are those the worker loads (:func:`f5worker.model_files.worker_file_refs`); the lease,
free-space and ETag checks are :func:`f5worker.model_cache.fetch`'s, the same path the worker takes
when a file is in none of the model caches.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from f5worker.model_cache import LOCK_TIMEOUT_S, fetch, resolve_model
from f5worker.model_files import ModelConfigError, ModelFilesMissing, worker_file_refs
from f5worker.settings import Settings, SettingsError, load_settings


def fetch_command(settings: Settings, cache: Path, lock_timeout_s: float) -> int:
    started = time.perf_counter()
    try:
        results = fetch(worker_file_refs(settings.model, settings.asr), cache, lock_timeout_s=lock_timeout_s)
    except (ModelFilesMissing, ModelConfigError) as err:
        print(f"provision: {err}", file=sys.stderr)
        return 1
    for result in results:
        print(f"{'downloaded' if result.downloaded else 'present':<10} {result.size:>14,}  {result.ref}  {result.path}")
    print(f"{len(results)} files, {sum(r.size for r in results):,} bytes in {cache}, "
          f"{sum(r.downloaded for r in results)} downloaded, {time.perf_counter() - started:.1f}s")
    return 0


def half_copy_command(settings: Settings) -> int:
    """The fp16 copy of the cached checkpoint (after ``fetch``), for workers that compute in fp16."""
    from f5worker.tts_model import write_half_precision_copy

    paths = settings.cache
    resolved = resolve_model(settings.model, paths.hub_cache, False, paths.fallback_caches)
    print(write_half_precision_copy(resolved.checkpoint, paths.half_weights))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provision.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download the configured model's files into a Hugging Face cache")
    fetch_cmd.add_argument("--cache", type=Path, help="the cache to fill (default: $HF_HUB_CACHE)")
    fetch_cmd.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT_S,
                           help="seconds to wait for another worker's download (default: %(default)s)")
    commands.add_parser("half-copy", help="write the fp16 copy of the cached checkpoint")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(os.environ)  # before huggingface_hub is imported: it reads HF_* once
    except SettingsError as err:
        print(f"provision: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per HEAD/GET otherwise
    if args.command == "half-copy":
        return half_copy_command(settings)
    return fetch_command(settings, args.cache or settings.cache.hub_cache, args.lock_timeout)


if __name__ == "__main__":
    sys.exit(main())
