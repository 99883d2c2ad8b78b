"""Where a batched sampling pass spends its time: ``Sampler.sample`` on batches of 1 to 16 items
(the packaged voice, seeds differing), straight on the model (no scheduler, no threads), so the
rows show how the pass itself scales with the batch.

``--lengths equal``: every item says one text, so a batch needs no padding and no mask.
``--lengths mixed``: item i says the i-th of four texts of different lengths, padded to the
longest and masked. ``--attention`` lists the ways to mask, each measured on the same batches in
turn: ``broadcast`` (the worker's ``KeyPaddingAttention``), ``square`` (upstream's processor with
its mask on, which expands it to batch x heads x frames x frames: the worker before it had its
own) and ``none`` (no attention mask: exact only with equal lengths, an ablation).

Per batch size: seconds per pass, audio seconds per second and its gain over batch 1, and, from
``torch.profiler`` over one more pass, how much of the wall time the device was busy (the sum of
its kernels' time) and the share of the vocoder. A device busy for a small part of the pass is
waiting on the host (kernel launches, Python): there batching is nearly free; a busy one is
compute-bound: there it is not.

    python -m bench.batch_scaling [--dir DIR] [--batches 1 2 4 8 16] [--nfe 32]
        [--lengths equal|mixed] [--attention broadcast square none]
    python -m bench.batch_scaling --tiny --batches 1 2 --nfe 2      # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.throughput import TEXTS, device_name, selected_model

ATTENTION = ("broadcast", "square", "none")


def use_attention(transformer, mode: str) -> None:
    """Give every DiT block the attention ``mode`` names (module docstring)."""
    from f5worker.engine.attention import KeyPaddingAttention

    for block in transformer.transformer_blocks:
        processor = block.attn.processor
        upstream = processor.upstream if isinstance(processor, KeyPaddingAttention) else processor
        upstream.attn_mask_enabled = mode == "square"
        block.attn.processor = KeyPaddingAttention(upstream) if mode == "broadcast" else upstream


def busy_share(sampler, items) -> tuple[float, float]:
    """One more pass, on a GPU, under the profiler: (device kernel time / wall time, vocoder share
    of the wall time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

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
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            sampler.sample(items)
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
    finally:
        del sampler.vocode
    kernels = sum(e.device_time_total for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    return kernels / wall, sum(spent) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", choices=("equal", "mixed"), default="mixed")
    parser.add_argument("--attention", nargs="+", choices=ATTENTION, default=["broadcast"])
    args = parser.parse_args()
    with selected_model(args):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    from f5worker.model_files import ModelSources
    from f5worker.tts_model import TTSModel, pick_device

    model = TTSModel.load(ModelSources.from_env(os.environ), Path(os.environ["HF_HUB_CACHE"]),
                          allow_download=False, device=pick_device())
    table(model, args.batches, args.nfe, args.lengths, args.attention, args.repeats,
          "tiny" if args.tiny else "full-size F5TTS_v1_Base")


def table(model, batches: list[int], nfe: int, lengths: str, attention: list[str], repeats: int, label: str) -> None:
    """Print the scaling table for the loaded ``model`` (a ``TTSModel``); leaves its attention as the worker's."""
    import torch

    from f5worker.contract import SynthesisParams
    from f5worker.engine.sampler import Sampler, WorkItem
    from f5worker.formats import SAMPLE_RATE
    from f5worker.voices import builtin_voice, prepare_reference

    device = model.device
    cuda = device.startswith("cuda")
    sampler = Sampler(model.model, model.vocoder, device)
    reference = prepare_reference(*builtin_voice())
    texts = [model.plan(reference.duration_s, reference.text, text, 1.0)[0] for text in TEXTS]

    def items(n: int) -> list[WorkItem]:
        """n items; with mixed lengths item i says text (i + 1) mod 4, so batch 1 says TEXTS[1] either way."""
        chosen = [texts[(i + 1) % len(texts)] if lengths == "mixed" else texts[1] for i in range(n)]
        return [WorkItem(reference.audio, reference.text, text, SynthesisParams(nfe_step=nfe, seed=i))
                for i, text in enumerate(chosen)]

    def timed(batch: list[WorkItem]) -> tuple[float, float]:
        started = time.perf_counter()
        waves = sampler.sample(batch)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, sum(len(w) for w in waves) / SAMPLE_RATE

    sampler.sample(items(1))  # untimed: kernels, handles
    print(f"{device_name(device)}; {label} random-weight model; nfe_step {nfe}; {lengths} lengths "
          f"({sorted({len(i.text.encode()) for i in items(4)})} bytes per chunk); median of {repeats}", flush=True)
    print("| batch | attention | s per pass | audio s/s | x batch 1 | device busy | vocoder share | peak GPU MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}
    try:
        for n in batches:
            batch = items(n)
            for mode in attention:
                use_attention(model.model.transformer, mode)
                if cuda:
                    timed(batch)  # untimed: this shape's first pass (kernels, handles)
                    torch.cuda.reset_peak_memory_stats()
                runs = [timed(batch) for _ in range(repeats)]
                seconds = statistics.median(r[0] for r in runs)
                rate = runs[0][1] / seconds
                base.setdefault(mode, rate)
                busy, vocoder = busy_share(sampler, batch) if cuda else (float("nan"), float("nan"))  # CPU: long
                peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
                print(f"| {n} | {mode} | {seconds:.3f} | {rate:.1f} | {rate / base[mode]:.2f} | {busy:.0%} | "
                      f"{vocoder:.0%} | {peak:.0f} |", flush=True)
    finally:
        use_attention(model.model.transformer, "broadcast")

if __name__ == "__main__":
    main()
