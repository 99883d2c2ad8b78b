"""Time to first audio vs time to the whole audio: a streamed job against the same job unstreamed.

    .venv/bin/python bench/stream_latency.py [--nfe-step 16] [--repeats 3]

Runs ``Worker.run`` in-process (no HTTP, no bucket: what is timed is the worker) on texts of 1, 3
and 6 chunks, each job once unstreamed (the whole audio exists when the result returns) and once
with ``"stream": true`` (the first audio item is handed to the streaming handler's queue while
later chunks are still being synthesized). Without ``F5TTS_CKPT_FILE`` in the environment it
uses the tests' tiny random-weight model, written to a temp dir; with it, the configured model.
Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs away."
TEXTS = {1: SENTENCE, 3: " ".join([SENTENCE] * 5), 6: " ".join([SENTENCE] * 11)}


def select_model() -> Path | None:
    """The tiny model in a temp HF cache unless a model is configured; the temp dir to remove."""
    if os.environ.get("F5TTS_CKPT_FILE"):
        return None
    from tests.support.tiny_models import build_tiny_cache

    home = Path(tempfile.mkdtemp(prefix="f5tts-bench-"))
    os.environ.update({"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1",
                       **build_tiny_cache(home / "hub")})
    return home


def time_job(worker, fields: dict) -> dict[str, float]:
    """Wall ms to the first streamed item, the last one, and the returned result."""
    marks: list[float] = []
    start = time.perf_counter()
    result = worker.run({"id": "bench", "input": fields}, emit=lambda item: marks.append(time.perf_counter()))
    end = time.perf_counter()
    assert "error" not in result, result
    ms = lambda t: (t - start) * 1000  # noqa: E731
    return {"first": ms(marks[0]) if marks else ms(end), "last": ms(marks[-1]) if marks else ms(end),
            "total": ms(end), "audio_s": result["duration_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe-step", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = select_model()
    try:
        from f5worker.pipeline import Worker
        from f5worker.settings import load_settings

        worker = Worker.from_settings(load_settings(os.environ))
        print(f"model {worker.model.resolved.name} on {worker.model.device}, nfe_step {args.nfe_step}, "
              f"median of {args.repeats}\n")
        base = {"nfe_step": args.nfe_step, "seed": 1, "output_format": "wav"}
        time_job(worker, {"text": SENTENCE, **base})  # warm-up
        print("| text chunks | audio s | unstreamed: whole audio ms | streamed: first audio ms "
              "| streamed: last audio ms | first / whole |")
        print("|---|---|---|---|---|---|")
        for chunks, text in TEXTS.items():
            # interleaved, so a change in machine load hits both kinds of job alike
            runs = [(time_job(worker, {"text": text, **base}), time_job(worker, {"text": text, "stream": True, **base}))
                    for _ in range(args.repeats)]
            plain, streamed = [p for p, _ in runs], [s for _, s in runs]
            whole = statistics.median(r["total"] for r in plain)
            first = statistics.median(r["first"] for r in streamed)
            last = statistics.median(r["last"] for r in streamed)
            print(f"| {chunks} | {plain[0]['audio_s']:.1f} | {whole:.0f} | {first:.0f} | {last:.0f} "
                  f"| {first / whole:.2f} |")
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
