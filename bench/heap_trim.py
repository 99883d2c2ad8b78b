"""What ``malloc_trim`` after each job (``f5worker/heap.py``) costs a job, on the tiny model.

In one process: ``Worker.from_settings`` as the handler builds it, moto S3 as its own process on
127.0.0.1, the jobs of ``bench/load.py`` (its mixed load) one at a time in a job thread. Jobs go
in blocks of ``--block``: in each pair of blocks one runs with the trim and one without, on the
same jobs in the same order (which goes first alternates), so each job is timed both ways a few
seconds apart and their difference is the trim's cost: the call itself and the page faults of
the next job, which gets fresh pages where the freed ones were handed back. The first job of
each block, the one after a switch, is left out.

    .venv/bin/python -m bench.heap_trim [--pairs 12] [--block 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=12, help="pairs of blocks (with the trim, without)")
    parser.add_argument("--block", type=int, default=10, help="jobs in a block")
    args = parser.parse_args()

    from tests.support.net import free_port
    from tests.support.s3_servers import MotoProcess
    from tests.support.tiny_models import build_tiny_cache, tiny_cache_env

    home = Path(tempfile.mkdtemp(prefix="f5tts-bench-trim-"))
    moto = MotoProcess(free_port(), home / "moto.log")
    try:
        build_tiny_cache(home / "hub")
        (home / "scratch").mkdir()
        os.environ.update({**tiny_cache_env(home), "TMPDIR": str(home / "scratch"), "CUDA_VISIBLE_DEVICES": "",
                           "BUCKET_NAME": "bench", "BUCKET_ENDPOINT_URL": moto.url, "BUCKET_REGION": "us-east-1",
                           "BUCKET_ACCESS_KEY_ID": "bench", "BUCKET_SECRET_ACCESS_KEY": "bench"})
        tempfile.tempdir = None  # re-read TMPDIR
        print_table(args, *run_pairs(args.pairs, args.block))
    finally:
        moto.stop()
        shutil.rmtree(home, ignore_errors=True)


def run_pairs(pairs: int, block: int) -> tuple[dict[bool, list[float]], dict[bool, list[int]], list[float]]:
    """Job wall ms and minor page faults, with the trim (``True``) and without; the trim calls' ms."""
    from bench.load import job_input
    from f5worker import heap
    from f5worker.pipeline import Worker
    from f5worker.settings import load_settings
    from tests.support.bucket import populate_bucket

    worker = Worker.from_settings(load_settings(os.environ))
    populate_bucket(worker.s3, worker.bucket.name)
    malloc_trim = heap.MALLOC_TRIM
    assert malloc_trim is not None, "no malloc_trim here (not glibc)"
    trim_ms: list[float] = []

    def timed_trim(pad: int) -> int:
        started = time.perf_counter()
        released = malloc_trim(pad)
        trim_ms.append((time.perf_counter() - started) * 1000)
        return released

    def job(i: int) -> tuple[float, int]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        result = pool.submit(worker.run, {"id": f"trim-{i}", "input": job_input(i)}).result()
        wall = (time.perf_counter() - started) * 1000
        assert "error" not in result, result
        return wall, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    times: dict[bool, list[float]] = {True: [], False: []}
    faults: dict[bool, list[int]] = {True: [], False: []}
    with ThreadPoolExecutor(1, thread_name_prefix="job") as pool:
        for i in range(block):  # warm-up: every kind of job once, the caches filled
            job(i)
        for pair in range(pairs):
            jobs = range(block * (pair + 1), block * (pair + 2))
            for trim in (pair % 2 == 0, pair % 2 == 1):
                heap.MALLOC_TRIM = timed_trim if trim else None
                for n, i in enumerate(jobs):
                    wall, minflt = job(i)
                    if n:
                        times[trim].append(wall)
                        faults[trim].append(minflt)
    heap.MALLOC_TRIM = malloc_trim
    return times, faults, trim_ms


def print_table(args: argparse.Namespace, times: dict[bool, list[float]], faults: dict[bool, list[int]],
                trim_ms: list[float]) -> None:
    diffs = [with_trim - without for with_trim, without in zip(times[True], times[False], strict=True)]
    print(f"tiny model, CPU, bench.load's mixed jobs one at a time; {args.pairs} pairs of {args.block}-job blocks, "
          f"{len(diffs)} jobs timed each way; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| measure | median | p10 | p90 |")
    print("|---|---:|---:|---:|")
    rows = {"job wall ms, malloc_trim after each job": times[True], "job wall ms, without": times[False],
            "paired difference ms (with - without)": diffs, "malloc_trim call ms": trim_ms,
            "minor page faults a job, with": faults[True], "minor page faults a job, without": faults[False]}
    for label, values in rows.items():
        print(f"| {label} | {statistics.median(values):.1f} | {percentile(values, 10):.1f} "
              f"| {percentile(values, 90):.1f} |")
    print(f"mean paired difference {statistics.fmean(diffs):+.1f} ms "
          f"= {100 * statistics.fmean(diffs) / statistics.fmean(times[False]):+.1f} % of the mean job")


if __name__ == "__main__":
    main()
