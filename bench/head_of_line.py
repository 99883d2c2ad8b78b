"""Head-of-line blocking, and what taking turns costs: two jobs submitted together to the scheduler.

Through one :class:`~f5worker.engine.scheduler.Scheduler` with the worker's batch limit on the
device (1 on CPU), two pairs of jobs, each pair submitted at once, the first job first:

- a long job (``LONG``, cut into chunks by ``TTSModel.plan``), then a one-chunk job (``SHORT``):
  each job's latency until its last chunk's audio, and its ratio to the same job run alone by
  direct calls of the sampling function. Before the scheduler took jobs in turn, the short job
  waited for all of the long job's chunks;
- two long jobs of equal length: when the first is done, when the second's first audio comes
  and when it is done. Taking turns brings the second job's first audio forward and the first
  job's end back: the price of the turns, shown rather than assumed.

``--baseline CHECKOUT`` measures an earlier commit's scheduler as well (a ``git worktree``; it
needs that commit's ``bench/throughput.py``): each case runs in a process of its own, cases
alternating, ``--rounds`` processes per case; the table shows medians over them.

    python -m bench.head_of_line --tiny [--baseline CHECKOUT] [--rounds 3] [--repeats 5] [--nfe 32]
    python -m bench.head_of_line [--dir DIR] [--device cuda]   # full-size random weights
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "HEAD-OF-LINE "

LONG = " ".join([
    "The old lighthouse keeper climbed the spiral stairs every evening, one hundred and twelve of them.",
    "He trimmed the wick, polished the great lens, and watched the ships slip safely past the rocks below.",
    "Storms came and went, and some nights the waves broke over the gallery rail and hissed on the glass.",
    "Each morning he wrote the weather in a worn leather book, a habit he had kept for forty years.",
    "When the lamp was finally automated, he moved to a cottage by the harbour and kept writing anyway.",
    "The fishermen said his notes were better than the forecast, and on most days they were right.",
])
SHORT = "Storms came and went."


def measure(args: argparse.Namespace) -> dict:
    """In this process: the two jobs alone (direct), then together through a scheduler, ``--repeats`` times."""
    from bench.throughput import engine_sampling, selected_model
    from f5worker.contract import SynthesisParams
    from f5worker.engine.sampler import WorkItem
    from f5worker.engine.scheduler import Scheduler
    from f5worker.model_files import ModelSources
    from f5worker.settings import EngineLimits
    from f5worker.tts_model import TTSModel, pick_device
    from f5worker.voices import builtin_voice, prepare_reference

    with selected_model(args):
        device = args.device or pick_device()
        model = TTSModel.load(ModelSources.from_env(os.environ), Path(os.environ["HF_HUB_CACHE"]),
                              allow_download=False, device=device)
        sample = engine_sampling(model)
        reference = prepare_reference(*builtin_voice())

        def job(text: str, seed: int) -> list[WorkItem]:
            params = SynthesisParams(nfe_step=args.nfe, seed=seed)
            chunks = model.plan(reference.duration_s, reference.text, text, params.speed)
            return [WorkItem(reference.audio, reference.text, chunk, params, i) for i, chunk in enumerate(chunks)]

        long, other, short = job(LONG, 1), job(LONG, 3), job(SHORT, 2)

        def alone(items: list[WorkItem]) -> float:
            started = time.perf_counter()
            for item in items:
                sample([item])
            return time.perf_counter() - started

        def together(first: list[WorkItem], second: list[WorkItem]) -> list[list[float]]:
            """Both submitted at once, ``first`` first: when each of their items was done."""
            started = time.perf_counter()
            jobs = [scheduler.submit(first), scheduler.submit(second)]
            stamps = [[0.0] * len(futures) for futures in jobs]
            for futures, done in zip(jobs, stamps, strict=True):
                for i, future in enumerate(futures):
                    future.add_done_callback(lambda _, d=done, i=i: d.__setitem__(i, time.perf_counter() - started))
            for future in jobs[0] + jobs[1]:
                future.result()
            return stamps

        alone(long + short)  # untimed: every shape once
        times: dict[str, list[float]] = {}
        max_batch = args.max_batch or EngineLimits().batch_for(device)
        with Scheduler(sample, max_batch=max_batch) as scheduler:
            for _ in range(args.repeats):
                measured = {"long alone": alone(long), "short alone": alone(short)}
                long_done, short_done = together(long, short)
                measured.update({"long": max(long_done), "short": max(short_done)})
                first_done, second_done = together(long, other)
                measured.update({"first": max(first_done), "second first audio": second_done[0],
                                 "second": max(second_done)})
                for name, value in measured.items():
                    times.setdefault(name, []).append(value)
    return {"chunks": [len(long), len(short)], "max_batch": max_batch, "device": device,
            "model": "tiny" if args.tiny else "full-size F5TTS_v1_Base",
            **{name: statistics.median(values) for name, values in times.items()}}


def run_case(checkout: Path, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process that imports ``f5worker`` (and ``bench.throughput``) from ``checkout``."""
    flags = ["--repeats", str(args.repeats), "--nfe", str(args.nfe), "--dir", str(args.dir)]
    if args.tiny:
        flags.append("--tiny")
    if args.device:
        flags += ["--device", args.device]
    if args.max_batch:
        flags += ["--max-batch", str(args.max_batch)]
    proc = subprocess.run([sys.executable, __file__, "--child", *flags], cwd=checkout, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(checkout)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight model")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"),
                        help="HF_HOME holding the full-size model (built there once, then reused)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=None, help="default: the worker's (8 on CUDA, 1 on CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="the scenario's repetitions in each process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per case")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit (git worktree add)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(MARK + json.dumps(measure(args)), flush=True)
        return
    cases = {"this scheduler": ROOT, **({f"baseline ({args.baseline.name})": args.baseline} if args.baseline else {})}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, checkout in cases.items():
            results[name].append(run_case(checkout, args))
    report(results)


def report(results: dict[str, list[dict]]) -> None:
    runs = next(iter(results.values()))
    first = runs[0]
    print(f"{first['device']}; {first['model']} model; long job {first['chunks'][0]} chunks, short job "
          f"{first['chunks'][1]}; max_batch {first['max_batch']}; medians over {len(runs)} processes "
          "of each process's median")
    print("| scheduler | short behind long: short s | x alone | long s | x alone "
          "| two equal long jobs: first done s | second's first audio s | second done s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0] if isinstance(runs[0][key], float)}
        print(f"| {name} | {med['short']:.3f} | {med['short'] / med['short alone']:.2f} "
              f"| {med['long']:.3f} | {med['long'] / med['long alone']:.2f} "
              f"| {med['first']:.3f} | {med['second first audio']:.3f} | {med['second']:.3f} |")


if __name__ == "__main__":
    main()
