"""Each model-loading lever alone, in one process, after all imports, on the full-size model:

- upstream ``load_model`` (random init of 337 M parameters, then a copy of the checkpoint into
  them) versus ``tts_model.load_f5`` (parameters on ``meta``, checkpoint tensors assigned);
- upstream ``load_vocoder`` versus ``tts_model.load_vocos``;
- the fp16 copy: its size, and a cold read (page cache dropped; root only) of it versus the
  fp32 checkpoint, which is what it saves on a network volume where upstream computes in fp16.

Alternated and repeated; medians. ``python -m bench.load_levers [--repeats 5] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def timed(fn) -> float:
    gc.collect()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cold_read(path: Path) -> float | None:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return None
    buffer = bytearray(16 << 20)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"))
    args = parser.parse_args()
    marker = args.dir / "built.json"
    if not marker.is_file():
        from bench.full_model import build_full_cache

        marker.write_text(json.dumps({k: str(v) for k, v in build_full_cache(args.dir / "hub").items()}))
    paths = json.loads(marker.read_text())
    checkpoint, vocoder_dir = Path(paths["checkpoint"]), Path(paths["vocoder_dir"])

    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT

    from bench.full_model import full_arch
    from f5worker.tts_model import load_f5, load_vocos, write_half_precision_copy

    arch = full_arch()
    cases = {
        "F5 model: upstream load_model": lambda: load_model(DiT, arch, str(checkpoint), device="cpu"),
        "F5 model: load_f5 (meta + assign)": lambda: load_f5(DiT, arch, checkpoint, None, "cpu"),
        "vocoder: upstream load_vocoder": lambda: load_vocoder("vocos", True, str(vocoder_dir), "cpu"),
        "vocoder: load_vocos (meta + assign)": lambda: load_vocos(vocoder_dir, "cpu"),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # untimed: page cache and allocator warm for both
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    print("| load (warm page cache, CPU) | median s | min-max s |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")

    with tempfile.TemporaryDirectory(dir=args.dir) as half_dir:
        started = time.perf_counter()
        half = write_half_precision_copy(checkpoint, Path(half_dir))
        written = time.perf_counter() - started
        reads: dict[str, list[float]] = {"fp32 checkpoint": [], "fp16 copy": []}
        for _ in range(args.repeats):
            for name, path in (("fp32 checkpoint", checkpoint), ("fp16 copy", half)):
                seconds = cold_read(path)
                if seconds is not None:
                    reads[name].append(seconds)
        print(f"\nfp16 copy: {half.stat().st_size / 1e6:.0f} MB vs {checkpoint.stat().st_size / 1e6:.0f} MB, "
              f"written once in {written:.1f} s")
        if reads["fp16 copy"]:
            print("| cold sequential read (page cache dropped) | median s |\n|---|---:|")
            for name, values in reads.items():
                print(f"| {name} | {statistics.median(values):.2f} |")
        else:
            print("cold reads not measured: cannot drop the page cache (not root)")


if __name__ == "__main__":
    main()
