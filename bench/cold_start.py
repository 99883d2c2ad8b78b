"""Cold start to ready, side by side in one run, each case in a fresh process:

- ``import torch``: the import floor;
- raw read: a sequential read of the model's weight files (checkpoint + vocoder), the I/O floor;
- upstream: ``F5TTS(model="F5TTS_v1_Base", ckpt_file=..., vocoder_local_path=..., device=...)``;
- worker: ``runpod_handler.start_up()`` (model + vocoder loaded, warm-up if it applies, the
  RunPod SDK imported), i.e. everything ``main()`` does before taking jobs; and, as an ablation,
  the same with ``import runpod`` after the load instead of in a thread meanwhile.

All on a full-size random-weight F5TTS_v1_Base (``bench/full_model.py``) in a temp HF cache.
The clock starts in the parent just before the process is spawned and stops when the child
prints that it is ready; cases are interleaved (order rotated each round) and repeated, and the
table shows medians. ``--cache cold`` drops the page cache before every run (root only), so the
weights *and* Python's libraries come from disk, as on a fresh container.

    python -m bench.cold_start [--rounds 5] [--cache cold|warm|both] [--dir DIR] [--device cpu]
        [--baseline CHECKOUT [--baseline-site DIR]]   # an earlier commit's worker, side by side
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
MARK = "BENCH-READY "

PRELUDE = "import time, json, resource\n"
REPORT = (
    "print({mark!r} + json.dumps({{'ready': time.time(), "
    "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}}), flush=True)\n"
)

CASES = {
    "import torch": "import torch\nextra = {{}}\n",
    "raw read (I/O floor)": (
        "t = time.perf_counter(); n = 0; buf = bytearray(16 << 20)\n"
        "for p in {files!r}:\n"
        "    with open(p, 'rb', buffering=0) as f:\n"
        "        while k := f.readinto(buf): n += k\n"
        "extra = {{'read_s': time.perf_counter() - t, 'bytes': n}}\n"
    ),
    "upstream F5TTS()": (
        "from f5_tts.api import F5TTS\n"
        "F5TTS(model='F5TTS_v1_Base', ckpt_file={checkpoint!r}, vocoder_local_path={vocoder_dir!r}, "
        "device={device!r}, hf_cache_dir={hub!r})\n"
        "extra = {{}}\n"
    ),
    "f5-tts imports, split": (
        "t0 = time.perf_counter()\n"
        "import torch, torchaudio, transformers.pipelines, vocos, x_transformers, "
        "librosa, pypinyin, rjieba, matplotlib.pylab, pydub, torchdiffeq\n"
        "t1 = time.perf_counter()\n"
        "import wandb, datasets, accelerate, ema_pytorch  # what f5_tts.model's trainer/dataset modules add\n"
        "t2 = time.perf_counter()\n"
        "import f5_tts.infer.utils_infer\n"
        "extra = {{'inference_deps_s': t1 - t0, 'training_only_s': t2 - t1, "
        "'f5_tts_itself_s': time.perf_counter() - t2}}\n"
    ),
    "worker, SDK imported after": (  # ablation: start_up() without its runpod-import thread
        "import os\n"
        "from f5worker.pipeline import Worker\n"
        "from f5worker.settings import load_settings\n"
        "w = Worker.from_settings(load_settings(os.environ))\n"
        "import runpod\n"
        "extra = {{}}\n"
    ),
    "this worker": (
        "import os, runpod_handler\n"
        "from f5worker.settings import load_settings\n"
        "w = runpod_handler.start_up(load_settings(os.environ))  # what main() does before taking jobs\n"
        "import runpod\n"
        "extra = {{'load_ms': w.model.load_ms}}\n"
    ),
}


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# After ready, not counted in it: the worker's parameters are views of the page cache (mmap);
# the first forward pass faults each page in. Touching one float per 4 KiB page measures that.
AFTER_READY = {
    "this worker": (
        "t = time.perf_counter()\n"
        "[float(p.detach().reshape(-1)[::1024].sum()) for p in w.model.model.parameters()]\n"
        "print({mark!r} + json.dumps({{'touch_s': time.perf_counter() - t}}), flush=True)\n"
    ),
}


def case_code(name: str, fmt: dict) -> str:
    return PRELUDE + CASES[name].format(**fmt) + REPORT.format(mark=MARK) + AFTER_READY.get(name, "").format(mark=MARK)


def run_case(code: str, env: dict[str, str], cwd: Path = ROOT) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", code],
                          cwd=cwd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[0][len(MARK):])
    for line in lines[1:]:  # measurements taken after the ready mark
        result.update(json.loads(line[len(MARK):]))
    result["ready_s"] = result.pop("ready") - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", choices=("cold", "warm", "both"), default="both")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"),
                        help="HF_HOME holding the full-size model (built there once, then reused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of an earlier commit (git worktree add): its start_up() runs as one more case")
    parser.add_argument("--baseline-site", type=Path,
                        help="put first on the baseline's PYTHONPATH: the dependencies it pinned otherwise "
                             "(pip install --no-deps --target)")
    args = parser.parse_args()

    hub = args.dir / "hub"
    marker = args.dir / "built.json"
    if not marker.is_file():
        from bench.full_model import (
            build_full_cache,  # imports torch: not before, it would inflate the children's peak RSS
        )

        paths = build_full_cache(hub)
        marker.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    paths = json.loads(marker.read_text())
    checkpoint, vocoder_dir = paths["checkpoint"], paths["vocoder_dir"]
    files = [checkpoint, f"{vocoder_dir}/pytorch_model.bin"]
    weight_bytes = sum(os.path.getsize(f) for f in files)
    fmt = {"files": files, "checkpoint": checkpoint, "vocoder_dir": vocoder_dir, "device": args.device, "hub": str(hub)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("F5TTS_", "BUCKET_", "HF_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HOME": str(args.dir), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
                "F5TTS_MODEL": "F5TTS_v1_Base"})
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the worker picks its device itself

    regimes = ["cold", "warm"] if args.cache == "both" else [args.cache]
    names = list(CASES)
    where = dict.fromkeys(names, (env, ROOT))
    if args.baseline:
        name = f"baseline worker ({args.baseline.name})"
        CASES[name] = CASES["this worker"]
        site = [str(args.baseline_site)] if args.baseline_site else []
        where[name] = ({**env, "PYTHONPATH": os.pathsep.join([*site, str(args.baseline)])}, args.baseline)
        names.append(name)
    print(f"weights: {weight_bytes / 1e9:.3f} GB ({checkpoint}, vocoder); device {args.device}; "
          f"{args.rounds} rounds per regime; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    for regime in regimes:
        results: dict[str, list[dict]] = {n: [] for n in names}
        dropped = True
        if regime == "warm":
            for name in names:  # untimed pass: every file of every case in the page cache
                run_case(case_code(name, fmt), *where[name])
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                if regime == "cold":
                    dropped &= drop_caches()
                results[name].append(run_case(case_code(name, fmt), *where[name]))
        report(regime, dropped, results, weight_bytes)


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(regime: str, dropped: bool, results: dict[str, list[dict]], weight_bytes: int) -> None:
    upstream = med([r["ready_s"] for r in results["upstream F5TTS()"]])
    read_floor = med([r["read_s"] for r in results["raw read (I/O floor)"]])
    note = "page cache dropped before every run" if regime == "cold" else "page cache warm"
    if regime == "cold" and not dropped:
        note = "COULD NOT drop the page cache (not root): these runs are NOT cold"
    print(f"\n## {regime} cache ({note}); start-to-ready, median of {len(results['import torch'])} [min-max]")
    print("| case | ready s | min-max s | x upstream | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        ready = [r["ready_s"] for r in runs]
        print(f"| {name} | {med(ready):.2f} | {min(ready):.2f}-{max(ready):.2f} | {med(ready) / upstream:.2f} "
              f"| {med([r['rss_mb'] for r in runs]):.0f} |")
    split = results["f5-tts imports, split"]
    print("\nimports (median s, in one process, in this order): inference dependencies "
          + ", then ".join(f"{k.removesuffix('_s')} {med([r[k] for r in split]):.2f}"
                          for k in ("inference_deps_s", "training_only_s", "f5_tts_itself_s"))
          + ": the training-only modules (wandb, datasets, accelerate, ema_pytorch) are imported by "
          "f5_tts.model/__init__ -> trainer, which every inference import goes through")
    phases = [r["load_ms"] for r in results["this worker"]]
    keys = list(phases[0])
    print("\nthis worker, TTSModel.load phases (median ms): "
          + ", ".join(f"{k} {med([p[k] for p in phases]):.0f}" for k in keys))
    loading = [(p["wait_prefetch"] + p["vocoder"] + p["model"]) / 1000 for p in phases]
    print(f"raw read of the {weight_bytes / 1e9:.2f} GB of weights: {read_floor:.2f} s "
          f"({weight_bytes / 1e6 / read_floor:.0f} MB/s); "
          f"worker's weight loading on the critical path (wait for prefetch + vocoder + model): {med(loading):.2f} s "
          f"= {med(loading) / read_floor:.2f} x the read floor; prefetch thread (overlapped with imports): "
          f"{med([p['prefetch'] for p in phases]) / 1000:.2f} s; after ready, faulting the mapped weights in "
          f"(first forward pass, from the page cache): {med([r['touch_s'] for r in results['this worker']]):.2f} s")


if __name__ == "__main__":
    main()
