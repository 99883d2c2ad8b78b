"""What text normalisation costs: cold start, the first job and later jobs, and the image.

    .venv/bin/python bench/normalize_cost.py [--runs 3] [--baseline DIR]

Each run starts ``runpod_handler.py --rp_serve_api`` as a fresh process on the tiny random-weight
model (tests/support/tiny_models.py; normalisation does not depend on the model) and times process
start -> worker ready, then sends: a short job with numbers (the first job loads the grammars:
``load_normalizer``), the same job again, the same with ``"normalize": false``, and a 5000-character
text dense with numbers, the worst case for the grammars (``normalize`` in ``timings_ms``).
``--baseline DIR``: a checkout without normalisation (``git archive <commit> | tar -x -C DIR``)
whose worker start is timed in the same runs, alternating. The image's extra size is the installed
size of the distributions requirements.txt adds for this (from their RECORD files).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.asr_cold_start import start_and_time, summary  # noqa: E402
from tests.support.net import stop_process  # noqa: E402

SHORT = {"text": "It costs $5.50 at 10:30 on 3/4/2025, 42% off.", "nfe_step": 2, "seed": 1}
LONG = {"text": ("On 3/4/2025 at 10:30 I paid $1,234.56 for 42 kg, 7% more than the 1st time. " * 66)[:5000],
        "nfe_step": 2, "seed": 1, "output_format": "ogg"}
DISTRIBUTIONS = ("wetext", "kaldifst", "contractions", "textsearch", "anyascii", "pyahocorasick", "jiwer", "rapidfuzz")


def job(url: str, fields: dict) -> dict[str, float]:
    answer = requests.post(f"{url}/runsync", json={"input": fields}, timeout=1200).json()
    if answer.get("status") != "COMPLETED" or "error" in answer.get("output", {}):
        sys.exit(f"job failed: {answer}")
    return answer["output"]["timings_ms"]


def installed_mb(names: tuple[str, ...]) -> float:
    total = 0
    for name in names:
        dist = importlib.metadata.distribution(name)
        total += sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or ())
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout without normalisation, for the start time")
    args = parser.parse_args()

    from tests.support.tiny_models import build_tiny_cache, tiny_cache_env

    work = Path(tempfile.mkdtemp(prefix="normalize-bench-"))
    build_tiny_cache(work / "hf" / "hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "ASR_"))}
    env.update({**tiny_cache_env(work / "hf"), "TMPDIR": str(work), "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    ready: dict[str, list[float]] = {"this": [], "baseline": []}
    stages: dict[str, list[float]] = {}
    try:
        for run in range(args.runs):
            if args.baseline is not None:
                proc, _, seconds = start_and_time({**env, "PYTHONPATH": str(args.baseline)},
                                                  work / f"base-{run}.log", root=args.baseline)
                stop_process(proc)
                ready["baseline"].append(seconds)
            proc, url, seconds = start_and_time(env, work / f"worker-{run}.log")
            ready["this"].append(seconds)
            try:
                for name, fields in (("1st job", SHORT), ("2nd job", SHORT), ("normalize off", {**SHORT,
                                     "normalize": False}), ("5000 chars", LONG)):
                    timings = job(url, fields)
                    for stage in ("load_normalizer", "normalize", "total"):
                        if stage in timings:
                            stages.setdefault(f"{name}: {stage}", []).append(timings[stage])
            finally:
                stop_process(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"tiny model, cpu, {args.runs} runs, median (min-max)\n")
    print("| measure | value |\n|---|---|")
    print(f"| process start -> worker ready | {summary(ready['this'])} |")
    if ready["baseline"]:
        print(f"| process start -> worker ready, baseline {args.baseline} | {summary(ready['baseline'])} |")
    for name, values in stages.items():
        print(f"| {name} | {summary(values, 'ms')} |")
    print(f"| installed size of {', '.join(DISTRIBUTIONS)} | {installed_mb(DISTRIBUTIONS):.1f} MB |")


if __name__ == "__main__":
    main()
