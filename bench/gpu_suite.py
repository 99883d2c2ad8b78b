"""The engine's GPU suite (issue 13), one command, on full-size random weights built on the machine:

1. cold start to ready, each run a fresh process: ``import torch`` (the floor), a raw read of the
   weight files (the I/O floor) and this worker's ``Worker.from_settings`` (model and vocoder on
   the device, the CUDA warm-up done), then its first job; page cache warm, and dropped before
   each run where we are root (``bench/cold_start.py``'s cases and clock);
2. one job alone at ``nfe_step`` 32 and 16 for texts of about 5, 15 and 30 s of speech: RTF
   (synthesis seconds / audio seconds), time to first audio (the first chunk handed to
   ``on_chunk``), the same for the job streamed (``early_first``), peak GPU memory;
3. throughput at concurrency 1/4/8/16 through the scheduler against the same jobs run one after
   another (``bench/throughput.py``'s table), with the peak GPU memory of each;
4. one batched pass of items of mixed lengths at batch 1/4/8/16, the attention masked the worker's
   way (broadcast) and upstream's (square), side by side (``bench/batch_scaling.py``'s table).

    python -m bench.gpu_suite [--dir DIR]              # on the GPU machine (wheels: bench/gpu_wheels.sh)
    python -m bench.gpu_suite --tiny --nfe 4 --seconds 2 5 --concurrency 1 2 --rounds 1 --repeats 1 \
        --batches 1 2
                                                       # the same code on CPU with the tiny model

Upstream's ``F5TTS`` is not in this suite: importing it goes through ``f5_tts.model``'s training
stack (wandb, datasets), which the GPU machine lacks; the worker imports around it
(``f5worker/engine/upstream.py``). Random weights make the audio noise, but the work per call is
that of real speech of the same length.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.batch_scaling import table as batch_table
from bench.cold_start import CASES, MARK, PRELUDE, REPORT, drop_caches, run_case
from bench.throughput import compare, device_name, engine_sampling, report, selected_model

SENTENCES = (
    "The old lighthouse keeper climbed the spiral stairs every evening.",
    "He trimmed the wick, and watched the ships slip safely past the rocks below.",
    "Storms came and went, and the sea kept its own slow time.",
    "Each morning he wrote the weather in a worn leather book, a habit kept for forty years.",
)

WORKER_READY = (
    "import os\n"
    "from f5worker.pipeline import Worker\n"
    "from f5worker.settings import load_settings\n"
    "w = Worker.from_settings(load_settings(os.environ))\n"
    "extra = {{'load_ms': w.model.load_ms}}\n"
)
FIRST_JOB = (
    "t = time.perf_counter()\n"
    "job = {{'text': 'The first job after the worker is ready.', 'output_format': 'wav'}}\n"
    "r = w.run({{'id': 'first', 'input': job}})\n"
    "assert 'error' not in r, r\n"
    "print({mark!r} + json.dumps({{'first_job_s': time.perf_counter() - t}}), flush=True)\n"
)


def text_of(seconds: float, bytes_per_second: float) -> str:
    """Words adding up to about ``seconds`` of speech at the reference's bytes per second
    (upstream's duration estimate: the generated part is proportional to the text's UTF-8 bytes)."""
    pool = " ".join(SENTENCES).split()
    words: list[str] = []
    while len(" ".join(words).encode()) < seconds * bytes_per_second:
        words.append(pool[len(words) % len(pool)])
    return " ".join(words)


def cold_start(rounds: int, env: dict[str, str], files: list[str]) -> None:
    codes = {
        "import torch": PRELUDE + CASES["import torch"].format() + REPORT.format(mark=MARK),
        "raw read (I/O floor)": PRELUDE + CASES["raw read (I/O floor)"].format(files=files) + REPORT.format(mark=MARK),
        "this worker": PRELUDE + WORKER_READY.format() + REPORT.format(mark=MARK) + FIRST_JOB.format(mark=MARK),
    }
    for regime in ("warm", "cold"):
        if regime == "warm":
            for code in codes.values():  # untimed: everything in the page cache
                run_case(code, env)
        results: dict[str, list[dict]] = {name: [] for name in codes}
        dropped = True
        for _ in range(rounds):
            for name, code in codes.items():
                if regime == "cold":
                    dropped &= drop_caches()
                results[name].append(run_case(code, env))
        if regime == "cold" and not dropped:
            print("\n(cold cache skipped: not root, the page cache cannot be dropped)")
            return
        print(f"\n### Cold start, page cache {regime}: start to ready, median of {rounds} [min-max]")
        print("| case | ready s | min-max s | first job s |")
        print("|---|---:|---:|---:|")
        for name, runs in results.items():
            ready = [r["ready_s"] for r in runs]
            first = [r["first_job_s"] for r in runs if "first_job_s" in r]
            print(f"| {name} | {statistics.median(ready):.2f} | {min(ready):.2f}-{max(ready):.2f} "
                  f"| {f'{statistics.median(first):.3f}' if first else '-'} |")
        phases = [r["load_ms"] for r in results["this worker"]]
        print("this worker, TTSModel.load phases (median ms): "
              + ", ".join(f"{k} {statistics.median(p[k] for p in phases):.0f}" for k in phases[0]))


def timed_job(model, reference, chunks: list[str], params, early_first: bool = False
              ) -> tuple[float, float, float, float]:
    """One synthesis: seconds, audio seconds, seconds to the first audio, peak GPU MiB.
    ``early_first``: as a streamed job (``TTSModel.synthesize``)."""
    import torch

    from f5worker.formats import SAMPLE_RATE

    cuda = model.device.startswith("cuda")
    first: list[float] = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    wave = model.synthesize(reference.audio, reference.text, chunks, params,
                            on_chunk=lambda *_: first or first.append(time.perf_counter()), early_first=early_first)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return elapsed, len(wave) / SAMPLE_RATE, first[0] - started, peak


def one_job(model, reference, nfe_steps: list[int], targets: list[float], repeats: int) -> None:
    from f5worker.contract import SynthesisParams

    bytes_per_second = len(reference.text.encode()) / reference.duration_s
    print(f"\n### One job alone (median of {repeats} after one untimed call)")
    print("| nfe_step | text s (target) | chunks | audio s | s per job | RTF | time to first audio s "
          "| streamed: first audio s | streamed: s per job | peak GPU MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for nfe in nfe_steps:
        for target in targets:
            text = text_of(target, bytes_per_second)
            params = SynthesisParams(nfe_step=nfe, seed=1)
            chunks = model.plan(reference.duration_s, reference.text, text, params.speed)
            pairs = [(timed_job(model, reference, chunks, params), timed_job(model, reference, chunks, params, True))
                     for _ in range(repeats + 1)][1:]  # interleaved, so a change in load hits both alike
            runs, streamed = [plain for plain, _ in pairs], [early for _, early in pairs]
            seconds = statistics.median(r[0] for r in runs)
            audio_s = statistics.median(r[1] for r in runs)
            peak = max(r[3] for pair in pairs for r in pair)
            print(f"| {nfe} | {target:g} | {len(chunks)} | {audio_s:.2f} | {seconds:.3f} | {seconds / audio_s:.4f} "
                  f"| {statistics.median(r[2] for r in runs):.3f} | {statistics.median(r[2] for r in streamed):.3f} "
                  f"| {statistics.median(r[0] for r in streamed):.3f} | {peak:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random-weight model (a CPU smoke run)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"),
                        help="HF_HOME for the full-size model (built there once, then reused)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[32, 16])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 15, 30])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="jobs per client thread at each concurrency")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[None],
                        help="one throughput table per value; default: the worker's (ENGINE_MAX_BATCH)")
    parser.add_argument("--cold-rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 8, 16],
                        help="batch sizes of the mixed-length pass (4.); none: skip it")
    args = parser.parse_args()
    started = time.perf_counter()
    with selected_model(args):
        print(f"model files ready in {time.perf_counter() - started:.1f} s", flush=True)
        measure(args)


def measure(args: argparse.Namespace) -> None:
    import torch

    from f5worker.model_cache import resolve_model
    from f5worker.model_files import ModelSources
    from f5worker.settings import EngineLimits
    from f5worker.tts_model import TTSModel, pick_device
    from f5worker.voices import builtin_voice, prepare_reference

    device = pick_device()
    sources, hub = ModelSources.from_env(os.environ), Path(os.environ["HF_HUB_CACHE"])
    resolved = resolve_model(sources, hub, False)
    print(f"{device_name(device)}; torch {torch.__version__}; "
          f"{'tiny' if args.tiny else 'full-size F5TTS_v1_Base'} random-weight model", flush=True)
    if args.cold_rounds:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()),
                                                                          os.environ.get("PYTHONPATH")]))}
        cold_start(args.cold_rounds, env, [str(resolved.checkpoint), str(resolved.vocoder_dir / "pytorch_model.bin")])
    model = TTSModel.load(sources, hub, allow_download=False, device=device)
    print(f"weights dtype {next(model.model.parameters()).dtype}", flush=True)
    one_job(model, prepare_reference(*builtin_voice()), args.nfe, args.seconds, args.repeats)
    for limit in args.max_batch:
        max_batch = limit or EngineLimits().batch_for(device)
        print(f"\n### Throughput through the scheduler (nfe_step {args.nfe[0]}, max_batch {max_batch}, "
              f"{args.rounds} jobs per client)", flush=True)
        report(compare(model, engine_sampling(model), args.concurrency, args.rounds, args.nfe[0], max_batch))
    if args.batches:
        print(f"\n### One batched pass, mixed lengths, two ways of masking (nfe_step {args.nfe[0]})", flush=True)
        batch_table(model, args.batches, args.nfe[0], "mixed", ["broadcast", "square"], args.repeats,
                    "tiny" if args.tiny else "full-size F5TTS_v1_Base")

if __name__ == "__main__":
    main()
