"""Load run: jobs through the worker's local API, every output checked in S3, leaks looked for.

The worker runs as a real process (``runpod_handler.py --rp_serve_api``) on the tiny random-weight
model, with moto S3 as its own process on 127.0.0.1. Jobs cycle through the voices alice (wav),
bob (flac), carol (mp3) and default, the four output formats, nfe_step 2-4, three speeds, texts
of one to eight sentences (the longest several chunks; one in Chinese) and now and then
``remove_silence``, so the tensors and buffers of each job have sizes of their own; half go
through ``/runsync``, half through ``/run`` then ``/status`` (which is where the local API runs
them); every fifth overrides ``ref_text`` with a text of its own, so the voice cache sees far more
distinct references than it may keep. The first 10 jobs run one by one and set the RSS baseline,
the rest come from ``--clients`` threads at once. Then every output object is fetched, decoded
and its duration compared with the job's answer, duplicates and stray objects are counted, and
the worker's scratch dir is checked for per-job dirs left behind.

    .venv/bin/python -m bench.load [--jobs 200] [--clients 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOICES = ("alice", "bob", "carol", "default")
FORMATS = ("wav", "flac", "mp3", "ogg")
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Reliability is the jobs you do not drop.",
    "One, two, three, four, five.",
    "Serverless workers come and go; the outputs stay.",
    "今天天气很好，我们去公园散步。",
)
SENTENCES = (1, 2, 4, 1, 8)  # a text is its sentence this many times over, in turn
SPEEDS = (1.0, 0.8, 1.25)
BASELINE_JOBS = 10
RSS_EVERY = 50  # jobs between RSS samples
# The stated bounds. Measured (500 jobs, 3 clients; BENCHMARKS.md section 10): RSS climbs ~50 MiB
# over the first ~50 jobs (the caches filling) and then stays flat, +14 MiB over the next 440, the
# C heap's free pages handed back after each job (f5worker/heap.py); without that, +152 MiB.
# A leak of even 0.1 MiB a job breaks the second bound.
MAX_RSS_GROWTH_MIB = 100.0  # RSS at the end over RSS after the first 10 jobs
MAX_LATE_GROWTH_MIB = 25.0  # RSS at the end over RSS at the sample nearest the run's midpoint


@dataclass
class LoadReport:
    sent: int = 0
    via_run_status: int = 0
    via_runsync: int = 0
    completed: int = 0
    failed: list[str] = field(default_factory=list)
    verified: int = 0
    bad_outputs: list[str] = field(default_factory=list)
    duplicate_keys: int = 0
    stray_objects: int = 0
    job_dirs_left: int = 0
    scratch_unchanged: bool = False
    rss_after_baseline_mib: float = 0.0
    rss_end_mib: float = 0.0
    seconds: float = 0.0
    combos: Counter = field(default_factory=Counter)
    rss_samples: dict[int, float] = field(default_factory=dict)  # jobs done -> RSS MiB

    @property
    def answered(self) -> int:
        return self.completed + len(self.failed)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_after_baseline_mib

    @property
    def late_rss_growth_mib(self) -> float:
        """Growth over the second half of the run, where a steady leak shows and warm-up does not."""
        middle = min(self.rss_samples, key=lambda n: abs(n - self.sent / 2))
        return self.rss_end_mib - self.rss_samples[middle]

    @property
    def ok(self) -> bool:
        return (self.verified == self.sent and not self.duplicate_keys and not self.stray_objects
                and not self.job_dirs_left and self.scratch_unchanged
                and self.rss_growth_mib <= MAX_RSS_GROWTH_MIB and self.late_rss_growth_mib <= MAX_LATE_GROWTH_MIB)

    def table(self) -> str:
        rows = [
            ("jobs sent", f"{self.sent} ({self.via_run_status} /run+/status, {self.via_runsync} /runsync)"),
            ("jobs answered (COMPLETED / FAILED)", f"{self.answered} ({self.completed} / {len(self.failed)})"),
            ("outputs in S3, decoded, duration matches", f"{self.verified} of {self.completed}"),
            ("duplicate output keys / stray objects", f"{self.duplicate_keys} / {self.stray_objects}"),
            ("per-job temp dirs left / scratch as at start", f"{self.job_dirs_left} / {self.scratch_unchanged}"),
            (f"RSS after {BASELINE_JOBS} jobs -> at end (growth)",
             f"{self.rss_after_baseline_mib:.1f} MiB -> {self.rss_end_mib:.1f} MiB ({self.rss_growth_mib:+.1f} MiB)"),
            ("RSS growth over the second half of the run",
             f"{self.late_rss_growth_mib:+.1f} MiB "
             f"(bounds: {MAX_RSS_GROWTH_MIB:g} total, {MAX_LATE_GROWTH_MIB:g} late)"),
            ("RSS (MiB) after n jobs", ", ".join(f"{n}: {mib:.0f}" for n, mib in self.rss_samples.items())),
            ("voice x format combinations",
             f"{len(self.combos)} (each {min(self.combos.values())}-{max(self.combos.values())} jobs)"),
            ("wall time / throughput", f"{self.seconds:.1f} s / {self.sent / self.seconds:.2f} jobs/s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'metric'.ljust(width)} | value", f"|{'-' * (width + 2)}|------"]
        lines += [f"| {name.ljust(width)} | {value}" for name, value in rows]
        lines += [f"| failed: {error}" for error in self.failed[:5]]
        lines += [f"| bad output: {b}" for b in self.bad_outputs[:5]]
        return "\n".join(lines)


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def job_input(i: int) -> dict[str, Any]:
    voice, fmt = VOICES[i % len(VOICES)], FORMATS[(i // len(VOICES)) % len(FORMATS)]
    text = " ".join([TEXTS[i % len(TEXTS)]] * SENTENCES[(i // len(TEXTS)) % len(SENTENCES)])
    payload: dict[str, Any] = {"text": text, "voice": voice, "output_format": fmt, "nfe_step": 2 + i % 3,
                               "speed": SPEEDS[(i // 3) % len(SPEEDS)], "remove_silence": i % 7 == 3, "seed": i}
    if i % 5 == 0:
        payload["ref_text"] = f"Some call me nature, others call me mother nature, take {i}."
    return payload


def run_one(worker, i: int) -> tuple[int, dict[str, Any], dict[str, Any]]:
    payload = job_input(i)
    if i % 2:
        answer = worker.post("/runsync", {"input": payload})
    else:
        queued = worker.post("/run", {"input": payload})
        answer = worker.post(f"/status/{queued['id']}")
    return i, payload, answer


def run_load(worker, s3, bucket: str, jobs: int, clients: int = 3) -> LoadReport:
    """Send ``jobs`` jobs to ``worker`` (a ``tests.support.worker_process.WorkerProcess``), then verify."""
    from f5worker.storage import JOB_DIR_PREFIX
    from tests.support.audio_bytes import decode

    report = LoadReport(sent=jobs)
    at_start = set(worker.tmpdir.iterdir())
    started = time.monotonic()
    answers = [run_one(worker, i) for i in range(min(BASELINE_JOBS, jobs))]
    report.rss_after_baseline_mib = rss_mib(worker.proc.pid)
    report.rss_samples[len(answers)] = report.rss_after_baseline_mib
    with ThreadPoolExecutor(clients) as pool:
        for first in range(BASELINE_JOBS, jobs, RSS_EVERY):
            answers += pool.map(lambda i: run_one(worker, i), range(first, min(first + RSS_EVERY, jobs)))
            report.rss_samples[len(answers)] = rss_mib(worker.proc.pid)
    report.seconds = time.monotonic() - started
    report.rss_end_mib = rss_mib(worker.proc.pid)

    keys = []
    for i, payload, answer in answers:
        report.via_runsync += i % 2
        report.via_run_status += 1 - i % 2
        report.combos[payload["voice"], payload["output_format"]] += 1
        if answer.get("status") != "COMPLETED":
            report.failed.append(f"job {i}: {answer.get('status')}: {answer.get('error')}")
            continue
        report.completed += 1
        output = answer["output"]
        keys.append(output["audio_key"])
        expected_key = f"outputs/{answer['id']}.{payload['output_format']}"
        try:
            wave, sr = decode(s3.get_object(Bucket=bucket, Key=output["audio_key"])["Body"].read())
        except Exception as err:  # noqa: BLE001 - a missing or undecodable object is the finding
            report.bad_outputs.append(f"job {i}: {output['audio_key']}: {type(err).__name__}: {err}")
            continue
        # lossy codecs pad a little at the edges
        if output["audio_key"] == expected_key and sr == 24_000 and abs(len(wave) / sr - output["duration_s"]) < 0.1:
            report.verified += 1
        else:
            report.bad_outputs.append(f"job {i}: {output['audio_key']} sr={sr} len={len(wave) / sr:.3f}s "
                                      f"answered {output['duration_s']}s")
    report.duplicate_keys = len(keys) - len(set(keys))
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="outputs/")
              for o in page.get("Contents", [])}
    report.stray_objects = len(stored - set(keys))
    report.job_dirs_left = sum(1 for p in worker.tmpdir.iterdir() if p.name.startswith(JOB_DIR_PREFIX))
    report.scratch_unchanged = set(worker.tmpdir.iterdir()) == at_start
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=3, help="concurrent HTTP clients after the baseline jobs")
    args = parser.parse_args()

    import s3_utils
    from f5worker.storage import BucketSettings
    from tests.support.bucket import populate_bucket
    from tests.support.net import free_port
    from tests.support.s3_servers import MotoProcess
    from tests.support.tiny_models import build_tiny_cache, tiny_cache_env
    from tests.support.worker_process import WorkerProcess

    work = Path(tempfile.mkdtemp(prefix="f5tts-load-"))
    moto = worker = None
    try:
        build_tiny_cache(work / "hub")
        moto = MotoProcess(free_port(), work / "moto.log")
        env = {"BUCKET_NAME": "load-bench", "BUCKET_ENDPOINT_URL": moto.url, "BUCKET_REGION": "us-east-1",
               "BUCKET_ACCESS_KEY_ID": "bench", "BUCKET_SECRET_ACCESS_KEY": "bench"}
        s3 = s3_utils.make_client(BucketSettings.from_env(env))
        populate_bucket(s3, env["BUCKET_NAME"])
        (work / "tmp").mkdir()
        worker = WorkerProcess({**tiny_cache_env(work), **env}, work / "tmp", work / "worker.log")
        worker.wait_ready()
        print(f"worker pid {worker.proc.pid} ready; {args.jobs} jobs, {args.clients} clients", flush=True)
        report = run_load(worker, s3, env["BUCKET_NAME"], args.jobs, args.clients)
        print(report.table())
        worker.stop()
        left = list((work / "tmp").iterdir())
        print(f"| scratch dir after the worker stopped: {len(left)} entries")
        print(f"| verdict: {'PASS' if report.ok and not left else 'FAIL'}")
        sys.exit(0 if report.ok and not left else 1)
    finally:
        if worker is not None:
            worker.stop()
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
