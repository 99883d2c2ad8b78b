"""Real-time factor on a GPU: this worker's ``TTSModel.synthesize`` versus upstream's
``F5TTS.infer``, same full-size model files, same reference, text, seed and nfe_step.

Both models are loaded in this one process (upstream's first, then ours) on the full-size
random-weight F5TTS_v1_Base from ``bench/full_model.py``; calls alternate, after one untimed
call each per nfe_step. RTF = synthesis seconds / seconds of audio produced; peak GPU memory is
``torch.cuda.max_memory_allocated`` during each model's calls. Random weights make the audio
noise, but the work per call is that of real speech of the same duration.

    python -m bench.gpu_rtf [--device cuda] [--repeats 5] [--nfe 32 16] [--dir DIR]

Not run on a GPU for BENCHMARKS.md: the machine it was written on has none. It was only
smoke-tested on CPU (``--device cpu --nfe 2 --repeats 1 --text "Hello there." --skip-upstream``),
where the peak-memory column reads 0. Upstream's ``F5TTS.infer`` reads the reference with
``torchaudio.load``, which in torchaudio 2.11 needs ``torchcodec`` and ffmpeg on the machine (the
worker needs neither).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from importlib.resources import files
from pathlib import Path

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, "
        "trimmed the wick, and watched the ships slip safely past the rocks.")  # ~10 s of speech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nfe", type=int, nargs="+", default=[32, 16])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/f5tts-bench-full"))
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--skip-upstream", action="store_true",
                        help="time this worker only (upstream's infer needs torchcodec + ffmpeg: torchaudio.load)")
    args = parser.parse_args()

    marker = args.dir / "built.json"
    if not marker.is_file():
        from bench.full_model import build_full_cache

        marker.write_text(json.dumps({k: str(v) for k, v in build_full_cache(args.dir / "hub").items()}))
    paths = json.loads(marker.read_text())
    os.environ.update({"HF_HOME": str(args.dir), "HF_HUB_CACHE": str(args.dir / "hub"), "HF_HUB_OFFLINE": "1",
                       "F5TTS_MODEL": "F5TTS_v1_Base"})

    import torch
    from f5_tts.api import F5TTS

    from f5worker.contract import SynthesisParams
    from f5worker.formats import SAMPLE_RATE
    from f5worker.model_files import ModelSources
    from f5worker.tts_model import TTSModel
    from f5worker.voices import prepare_reference

    examples = files("f5_tts").joinpath("infer/examples/basic")
    ref_wav = str(examples.joinpath("basic_ref_en.wav"))
    ref_text = "Some call me nature, others call me mother nature."

    cuda = args.device.startswith("cuda")

    def peak(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        seconds_of_audio = fn()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        return elapsed, seconds_of_audio, torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0

    upstream = None if args.skip_upstream else F5TTS(
        model="F5TTS_v1_Base", ckpt_file=paths["checkpoint"], vocoder_local_path=paths["vocoder_dir"],
        device=args.device, hf_cache_dir=str(args.dir / "hub"))
    ours = TTSModel.load(ModelSources.from_env(os.environ), args.dir / "hub", allow_download=False, device=args.device,
                         half_dir=args.dir / "f5tts-fp16")
    reference = prepare_reference(Path(ref_wav), ref_text)
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}; "
          f"weights dtype ours {next(ours.model.parameters()).dtype}, "
          f"upstream {next(upstream.ema_model.parameters()).dtype if upstream else '-'}")
    print("| nfe_step | implementation | RTF median | s per call | audio s | peak GPU MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    chunks = ours.plan(reference.duration_s, reference.text, args.text, 1.0)
    for nfe in args.nfe:
        calls = {
            "upstream F5TTS.infer": lambda nfe=nfe: len(upstream.infer(
                ref_wav, ref_text, args.text, nfe_step=nfe, seed=0, show_info=lambda *_: None, progress=None,
            )[0]) / SAMPLE_RATE,
            "this worker": lambda nfe=nfe: len(ours.synthesize(reference.audio, reference.text, chunks,
                                                               SynthesisParams(nfe_step=nfe))) / SAMPLE_RATE,
        }
        if upstream is None:
            del calls["upstream F5TTS.infer"]
        runs: dict[str, list] = {name: [] for name in calls}
        for call in calls.values():
            peak(call)  # untimed: kernels, cuBLAS/cuDNN handles, upstream's reference cache
        for _ in range(args.repeats):
            for name, call in calls.items():
                runs[name].append(peak(call))
        for name, values in runs.items():
            seconds = statistics.median(v[0] for v in values)
            audio_s = statistics.median(v[1] for v in values)
            print(f"| {nfe} | {name} | {seconds / audio_s:.4f} | {seconds:.3f} | {audio_s:.2f} "
                  f"| {max(v[2] for v in values):.0f} |")


if __name__ == "__main__":
    main()
