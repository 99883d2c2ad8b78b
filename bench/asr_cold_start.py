"""Cold start of the worker with speech recognition off and on, and what the first job that needs
Whisper pays instead.

    .venv/bin/python bench/asr_cold_start.py [--runs 5] [--hf-home DIR]

Each run starts ``runpod_handler.py --rp_serve_api`` as a fresh process and times process start ->
worker ready (the local API answering, which it does only after ``Worker.from_settings``), with
``ASR_ENABLED=0`` and ``ASR_ENABLED=1`` alternately. Whisper loads lazily, on the first job that
needs it, so with ASR on the bench then sends two jobs with ``return_word_timings`` and reports
the first one's ``load_asr`` stage (the one-off cost moved out of the cold start) and both jobs'
``word_timings``. Without ``--hf-home`` it runs on the tiny random-weight models the tests build
(no weights can be downloaded here); with real weights in ``DIR/hub`` it measures those.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.net import free_port, stop_process  # noqa: E402

JOB = {"text": "Cold start of the worker, measured.", "nfe_step": 4, "seed": 1, "return_word_timings": True}


def start_and_time(env: dict[str, str], log: Path, root: Path = ROOT) -> tuple[subprocess.Popen, str, float]:
    """Start the worker of the checkout at ``root``; seconds until its local API answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "runpod_handler.py", "--rp_serve_api",
         "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    while True:
        if proc.poll() is not None:
            sys.exit(f"worker exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            requests.get(f"{url}/docs", timeout=1)
            return proc, url, time.perf_counter() - started
        except requests.ConnectionError:
            time.sleep(0.02)


def timed_job(url: str) -> dict[str, float]:
    started = time.perf_counter()
    answer = requests.post(f"{url}/runsync", json={"input": JOB}, timeout=600).json()
    if answer.get("status") != "COMPLETED":
        sys.exit(f"job failed: {answer}")
    return {"wall_ms": (time.perf_counter() - started) * 1000, **answer["output"]["timings_ms"]}


def summary(values: list[float], unit: str = "s") -> str:
    if not values:
        return "-"
    fmt = "{:.2f}" if unit == "s" else "{:.0f}"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))}) {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hf-home", type=Path, help="a Hugging Face home whose hub/ holds the real models")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "ASR_"))}
    if args.hf_home is None:
        from tests.support.tiny_models import build_tiny_cache

        hf_home = work / "hf"
        env.update(build_tiny_cache(hf_home / "hub"))
        models = "tiny random-weight F5-TTS + Whisper (tests/support/tiny_models.py)"
    else:
        hf_home = args.hf_home
        models = f"the models in {hf_home}"
    env.update({"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
                "TMPDIR": str(work), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"})

    ready: dict[str, list[float]] = {"0": [], "1": []}
    first_jobs: list[dict[str, float]] = []
    second_jobs: list[dict[str, float]] = []
    try:
        for run in range(args.runs):
            for enabled in ("0", "1"):
                proc, url, seconds = start_and_time({**env, "ASR_ENABLED": enabled},
                                                    work / f"worker-{run}-{enabled}.log")
                try:
                    ready[enabled].append(seconds)
                    if enabled == "1":
                        first_jobs.append(timed_job(url))
                        second_jobs.append(timed_job(url))
                finally:
                    stop_process(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stage(jobs: list[dict[str, float]], name: str) -> list[float]:
        return [job[name] for job in jobs if name in job]

    rows = [
        ("process start -> worker ready", summary(ready["0"]), summary(ready["1"])),
        ("1st word-timings job: load_asr (one-off)", "n/a", summary(stage(first_jobs, "load_asr"), "ms")),
        ("1st word-timings job: word_timings (incl. load)", "n/a", summary(stage(first_jobs, "word_timings"), "ms")),
        ("2nd word-timings job: word_timings", "n/a", summary(stage(second_jobs, "word_timings"), "ms")),
        ("1st word-timings job: wall", "n/a", summary(stage(first_jobs, "wall_ms"), "ms")),
        ("2nd word-timings job: wall", "n/a", summary(stage(second_jobs, "wall_ms"), "ms")),
    ]
    print(f"models: {models}; device: cpu; {args.runs} runs each, median (min-max)\n")
    print(f"| {'measure':48} | {'ASR_ENABLED=0':24} | {'ASR_ENABLED=1':24} |")
    print(f"|{'-' * 50}|{'-' * 26}|{'-' * 26}|")
    for name, off, on in rows:
        print(f"| {name:48} | {off:24} | {on:24} |")


if __name__ == "__main__":
    main()
