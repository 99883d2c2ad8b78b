"""Where a batched sampling pass spends its time: ``Sampler.sample`` on batches of 1 to 16
equal-length items (one text, the packaged voice, seeds differing), straight on the model (no
scheduler, no threads), so the rows show how the pass itself scales with the batch.

Per batch size: seconds per pass, audio seconds per second and its gain over batch 1, and, from
``torch.profiler`` over one more pass, how much of the wall time the device was busy (the sum of
its kernels' time) and the share of the vocoder. A device busy for a small part of the pass is
waiting on the host (kernel launches, Python): there batching is nearly free; a busy one is
compute-bound: there it is not.

    python -m bench.batch_scaling [--dir DIR] [--batches 1 2 4 8 16] [--nfe 32]
    python -m bench.batch_scaling --tiny --batches 1 2 --nfe 2      # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.throughput import TEXTS, device_name, selected_model


def busy_share(sampler, items) -> tuple[float, float]:
    """One pass under the profiler: (device kernel time / wall time, vocoder share of the wall time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = sampler.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    vocode = sampler.vocode
    spent: list[float] = []

    def timed_vocode(*args):
        started = time.perf_counter()
        try:
            return vocode(*args)
        finally:
            spent.append(time.perf_counter() - started)

    sampler.vocode = timed_vocode
    try:
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            sampler.sample(items)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
    finally:
        del sampler.vocode
    if not cuda:
        return float("nan"), sum(spent) / wall
    kernels = sum(e.device_time_total for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    return kernels / wall, sum(spent) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mask", action="store_true",
                        help="ablation: attention unmasked (exact here only because the items have one length)")
    args = parser.parse_args()
    with selected_model(args):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    import torch

    from f5worker.contract import SynthesisParams
    from f5worker.engine.sampler import Sampler, WorkItem
    from f5worker.formats import SAMPLE_RATE
    from f5worker.model_files import ModelSources
    from f5worker.tts_model import TTSModel, pick_device
    from f5worker.voices import builtin_voice, prepare_reference

    device = pick_device()
    model = TTSModel.load(ModelSources.from_env(os.environ), Path(os.environ["HF_HUB_CACHE"]),
                          allow_download=False, device=device)
    sampler = Sampler(model.model, model.vocoder, device)
    if args.no_mask:
        for block in model.model.transformer.transformer_blocks:
            block.attn.processor.attn_mask_enabled = False
    reference = prepare_reference(*builtin_voice())
    text = model.plan(reference.duration_s, reference.text, TEXTS[1], 1.0)[0]

    def items(n: int) -> list[WorkItem]:
        return [WorkItem(reference.audio, reference.text, text, SynthesisParams(nfe_step=args.nfe, seed=i))
                for i in range(n)]

    def timed(batch: list[WorkItem]) -> tuple[float, float]:
        started = time.perf_counter()
        waves = sampler.sample(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started, sum(len(w) for w in waves) / SAMPLE_RATE

    sampler.sample(items(1))  # untimed: kernels, handles
    print(f"{device_name(device)}; {'tiny' if args.tiny else 'full-size F5TTS_v1_Base'} random-weight model; "
          f"nfe_step {args.nfe}; attention {'unmasked' if args.no_mask else 'masked'}; "
          f"one chunk of {len(text.encode())} bytes; median of {args.repeats}")
    print("| batch | s per pass | audio s/s | x batch 1 | device busy | vocoder share | peak GPU MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for n in args.batches:
        batch = items(n)
        timed(batch)  # untimed: this shape's first pass
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs = [timed(batch) for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        rate = runs[0][1] / seconds
        base = base or rate
        busy, vocoder = busy_share(sampler, batch)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
        print(f"| {n} | {seconds:.3f} | {rate:.1f} | {rate / base:.2f} | {busy:.0%} | {vocoder:.0%} | {peak:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
