"""Throughput of the synthesis scheduler at concurrency 1, 2, 4, 8, 16: jobs/s, seconds of audio
per second, p50/p95 job latency, the mean batch the scheduler formed, and (CUDA) peak GPU memory.

At concurrency ``c``, ``c`` client threads each run jobs back to back through one
:class:`~f5worker.engine.scheduler.Scheduler` (``c x --rounds`` jobs in all); a job is one text
cut into chunks by ``TTSModel.plan``, submitted at once, its latency the time until its last
chunk's audio. Right before, side by side, the row "direct" runs the same jobs one after
another, each chunk a call of the sampling function alone (no scheduler, no thread): the CPU
targets of issue 13 compare the two (8 concurrent jobs in <= 1.05x the time of the same 8
sequentially; a lone job within 5 ms of the direct call). One untimed job per text warms up
first, and one more through the scheduler (its thread has its own CUDA set-up). Audio seconds
are the chunks' samples before the cross-fade.

The sampling function: the engine's batched ``Sampler`` when it is importable, else (or with
``--sampler stand-in``) upstream's ``infer_batch_process`` called per item, a STAND-IN that
batches nothing, so it measures the scheduler's overhead, not the batching gain.

    python -m bench.throughput --tiny [--device cpu]        # tiny random-weight model
    python -m bench.throughput [--dir DIR] [--device cuda]  # full-size random weights (bench/full_model.py)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.per_job import pct

if TYPE_CHECKING:
    import numpy as np

    from f5worker.engine.sampler import WorkItem
    from f5worker.engine.scheduler import SampleFn, Scheduler
    from f5worker.tts_model import TTSModel

TEXTS = (
    "The old lighthouse keeper climbed the spiral stairs every evening.",
    "He trimmed the wick, and watched the ships slip safely past the rocks below.",
    "Storms came and went.",
    "Each morning he wrote the weather in a worn leather book, a habit kept for forty years.",
)


def upstream_stand_in(model: TTSModel) -> SampleFn:
    """STAND-IN for the engine's batched ``Sampler``: upstream's ``infer_batch_process`` on each
    item alone, seeded with the item's seed plus its chunk index. Batches nothing."""
    import numpy as np
    from f5_tts.infer.utils_infer import infer_batch_process
    from f5_tts.model.utils import seed_everything

    from f5worker.formats import SAMPLE_RATE

    def one(item: WorkItem) -> np.ndarray:
        seed_everything((item.params.seed + item.chunk_index) % 2**32)
        wave, _, _ = next(infer_batch_process(
            (item.ref_audio, SAMPLE_RATE), item.ref_text, [item.text], model.model, model.vocoder,
            mel_spec_type="vocos", progress=None, nfe_step=item.params.nfe_step, cfg_strength=item.params.cfg_strength,
            sway_sampling_coef=item.params.sway_sampling_coef, speed=item.params.speed, device=model.device))
        return np.asarray(wave, dtype=np.float32)

    return lambda items: [one(item) for item in items]


def engine_sampling(model: TTSModel) -> SampleFn:
    """The engine's batched sampler on ``model`` (raises ImportError until it lands)."""
    from f5worker.engine.sampler import Sampler

    return Sampler(model.model, model.vocoder, model.device).sample


class Counting:
    """A sampling function that records its batch sizes."""

    def __init__(self, sample: SampleFn):
        self.sample = sample
        self.sizes: list[int] = []

    def __call__(self, items: list[WorkItem]) -> list[np.ndarray]:
        self.sizes.append(len(items))
        return self.sample(items)


@dataclass
class Run:
    mode: str
    concurrency: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    batches: list[int] = field(default_factory=list)
    peak_mib: float = 0.0

    def row(self) -> str:
        jobs = len(self.latencies)
        return (f"| {self.mode} | {self.concurrency} | {jobs} | {self.wall_s:.2f} | {jobs / self.wall_s:.3f} "
                f"| {self.audio_s / self.wall_s:.2f} | {pct(self.latencies, 50):.3f} | {pct(self.latencies, 95):.3f} "
                f"| {statistics.mean(self.batches):.2f} | {self.peak_mib:.0f} |")


def seconds(waves: list[np.ndarray]) -> float:
    from f5worker.formats import SAMPLE_RATE

    return sum(len(wave) for wave in waves) / SAMPLE_RATE


def through_scheduler(scheduler: Scheduler, counting: Counting, jobs: list[list[WorkItem]], concurrency: int) -> Run:
    run = Run("scheduler", concurrency)
    queue = iter(jobs)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            started = time.perf_counter()
            waves = list(scheduler.results(job))
            with lock:
                run.latencies.append(time.perf_counter() - started)
                run.audio_s += seconds(waves)

    counting.sizes.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    run.wall_s = time.perf_counter() - started
    run.batches = list(counting.sizes)
    return run


def direct(sample: SampleFn, jobs: list[list[WorkItem]], concurrency: int) -> Run:
    """``jobs`` one after another, each chunk alone; ``concurrency`` only labels the row it is compared with."""
    run = Run("direct", concurrency, batches=[1])
    started = time.perf_counter()
    for job in jobs:
        begun = time.perf_counter()
        waves = [wave for item in job for wave in sample([item])]
        run.latencies.append(time.perf_counter() - begun)
        run.audio_s += seconds(waves)
    run.wall_s = time.perf_counter() - started
    return run


def handoff_ms(scheduler_cls: type[Scheduler], rounds: int = 1000) -> tuple[float, float]:
    """The scheduler's own cost for a lone item: median and p95 ms of submit -> result with a
    sampling function that does nothing, minus the direct call of that function."""
    import numpy as np

    wave = np.zeros(1, dtype=np.float32)
    times = []
    with scheduler_cls(lambda items: [wave] * len(items), key=lambda _: 0) as scheduler:
        for _ in range(rounds):
            started = time.perf_counter()
            scheduler.submit([None])[0].result()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), pct(times, 95)


@contextmanager
def selected_model(args: argparse.Namespace) -> Iterator[None]:
    """``os.environ`` selecting the tiny model (``--tiny``, built in a temp dir removed on exit) or the
    full-size one (built once in ``--dir``), offline."""
    home = Path(tempfile.mkdtemp(prefix="f5tts-bench-"))
    try:
        if args.tiny:
            from tests.support.tiny_models import build_tiny_cache, tiny_cache_env

            build_tiny_cache(home / "hub")
            os.environ.update(tiny_cache_env(home))
        else:
            from bench.full_model import ensure_full_cache

            ensure_full_cache(args.dir)
            os.environ.update({"HF_HOME": str(args.dir), "HF_HUB_CACHE": str(args.dir / "hub"),
                               "HF_HUB_OFFLINE": "1", "F5TTS_MODEL": "F5TTS_v1_Base"})
        yield
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight model (tests/tiny_models.py)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"),
                        help="HF_HOME holding the full-size model (built there once, then reused)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="jobs per client thread at each concurrency")
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=None,
                        help="default: the worker's (ENGINE_MAX_BATCH: 8 on CUDA, 1 on CPU)")
    parser.add_argument("--sampler", choices=("auto", "engine", "stand-in"), default="auto")
    args = parser.parse_args()
    with selected_model(args):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    from f5worker.model_files import ModelSources
    from f5worker.settings import EngineLimits
    from f5worker.tts_model import TTSModel, pick_device

    device = args.device or pick_device()
    hub = Path(os.environ["HF_HUB_CACHE"])
    model = TTSModel.load(ModelSources.from_env(os.environ), hub, allow_download=False, device=device)
    sampler = "stand-in" if args.sampler == "stand-in" else "engine"
    try:
        sample = upstream_stand_in(model) if sampler == "stand-in" else engine_sampling(model)
    except ImportError:
        if args.sampler == "engine":
            raise
        sampler, sample = "stand-in", upstream_stand_in(model)
    max_batch = args.max_batch or EngineLimits().batch_for(device)
    pairs = compare(model, sample, args.concurrency, args.rounds, args.nfe, max_batch)
    print(f"{device_name(device)}; {'tiny' if args.tiny else 'full-size F5TTS_v1_Base'} random-weight model; "
          f"sampler: {sampler}; nfe_step {args.nfe}; max_batch {max_batch}; {args.rounds} jobs per client")
    report(pairs)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"


def compare(model: TTSModel, sample: SampleFn, concurrencies: list[int], rounds: int, nfe: int,
            max_batch: int) -> list[tuple[Run, Run]]:
    """At each concurrency: the jobs run directly one after another, then through a scheduler."""
    import torch

    from f5worker.contract import SynthesisParams
    from f5worker.engine.sampler import WorkItem
    from f5worker.engine.scheduler import Scheduler
    from f5worker.voices import builtin_voice, prepare_reference

    reference = prepare_reference(*builtin_voice())

    def job(i: int) -> list[WorkItem]:
        params = SynthesisParams(nfe_step=nfe, seed=i)
        chunks = model.plan(reference.duration_s, reference.text, TEXTS[i % len(TEXTS)], params.speed)
        return [WorkItem(reference.audio, reference.text, text, params, index) for index, text in enumerate(chunks)]

    cuda = model.device.startswith("cuda")
    counting = Counting(sample)
    warm_up = [job(i) for i in range(len(TEXTS))]
    direct(sample, warm_up, 1)  # untimed: every shape once (CPU kernels are made per shape)
    pairs: list[tuple[Run, Run]] = []
    with Scheduler(counting, max_batch=max_batch) as scheduler:
        # untimed, as the worker's warm-up: the scheduler's thread pays its own first-call set-up
        # (CUDA keeps cuBLAS/cuDNN handles per thread), which the direct warm-up above does not cover
        through_scheduler(scheduler, counting, warm_up[:1], 1)
        for concurrency in concurrencies:
            jobs = [job(i) for i in range(concurrency * rounds)]
            alone = direct(sample, jobs, concurrency)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            pairs.append((alone, through_scheduler(scheduler, counting, jobs, concurrency)))
            pairs[-1][1].peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return pairs


def report(pairs: list[tuple[Run, Run]]) -> None:
    from f5worker.engine.scheduler import Scheduler

    print("| mode | concurrency | jobs | wall s | jobs/s | audio s/s | p50 latency s | p95 latency s | mean batch "
          "| peak GPU MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pair in pairs:
        print("\n".join(run.row() for run in pair))
    for alone, batched in pairs:
        line = f"- concurrency {batched.concurrency}: wall time {batched.wall_s / alone.wall_s:.3f}x direct"
        if batched.concurrency == 1:
            line += f"; p50 latency {(pct(batched.latencies, 50) - pct(alone.latencies, 50)) * 1000:+.1f} ms vs direct"
        print(line)
    single = next((batched for _, batched in pairs if batched.concurrency == 1), None)
    if single is not None:
        for _, batched in pairs[1:]:
            print(f"- throughput at concurrency {batched.concurrency}: "
                  f"{(batched.audio_s / batched.wall_s) / (single.audio_s / single.wall_s):.2f}x concurrency 1 "
                  "(audio seconds per second)")
    median, p95 = handoff_ms(Scheduler)
    print(f"- the scheduler's own cost for a lone item (submit -> result, no-op sampling function): "
          f"median {median:.3f} ms, p95 {p95:.3f} ms")


if __name__ == "__main__":
    main()
