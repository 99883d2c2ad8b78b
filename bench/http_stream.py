"""The HTTP mode end to end: time to first audio vs the whole audio through ``/v1/audio/speech``, and
requests/s with p50/p95 latency at concurrency 1, 4 and 8.

``WORKER_MODE=http python runpod_handler.py`` runs as a real process on 127.0.0.1 (the tests' tiny
random-weight model, written to a temp dir; or the configured model with ``--configured``), and the
official ``openai`` client talks to it:

- streaming: for texts of 1, 3 and 6 chunks, ``with_streaming_response.create(response_format=pcm)``,
  the time until its first bytes and until its last; then, for the 3-chunk text, each response format
  (flac is not sent before it is whole). Medians of ``--repeats``.
- throughput: at concurrency c, c client threads each send ``--requests`` short requests back to back
  (one chunk each, mp3, ``create()`` reads the whole body); requests/s over the wall time, p50/p95 of
  one request's time. On CPU the engine samples one chunk at a time (``ENGINE_MAX_BATCH`` 1), so
  concurrency raises the latency, not the rate.

    .venv/bin/python -m bench.http_stream [--nfe-step 8] [--repeats 3] [--requests 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from bench.per_job import pct
from tests.support.tiny_models import build_tiny_cache, tiny_cache_env
from tests.support.worker_process import HttpWorkerProcess

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs away."
TEXTS = {1: SENTENCE, 3: " ".join([SENTENCE] * 5), 6: " ".join([SENTENCE] * 12)}  # chunks: TTSModel.plan
FORMATS = ("pcm", "wav", "mp3", "opus", "flac")


def stream_once(client: openai.OpenAI, text: str, fmt: str, nfe_step: int) -> tuple[float, float, int]:
    """Seconds to the first bytes and to the last, and the bytes received."""
    started = time.perf_counter()
    first, size = None, 0
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=text, response_format=fmt,
            extra_body={"nfe_step": nfe_step, "seed": 1}) as response:
        for piece in response.iter_bytes():
            first = first or time.perf_counter()
            size += len(piece)
    return first - started, time.perf_counter() - started, size


def streaming_table(client: openai.OpenAI, nfe_step: int, repeats: int) -> None:
    print("| text chunks | format | audio s | first bytes s | whole s | first / whole |")
    print("|---:|---|---:|---:|---:|---:|")
    rows = [(chunks, "pcm") for chunks in TEXTS] + [(3, fmt) for fmt in FORMATS if fmt != "pcm"]
    for chunks, fmt in rows:
        runs = [stream_once(client, TEXTS[chunks], fmt, nfe_step) for _ in range(repeats)]
        first = statistics.median(r[0] for r in runs)
        whole = statistics.median(r[1] for r in runs)
        audio = f"{runs[0][2] / 48_000:.1f}" if fmt == "pcm" else ""
        print(f"| {chunks} | {fmt} | {audio} | {first:.2f} | {whole:.2f} | {first / whole:.2f} |", flush=True)


def throughput_table(client: openai.OpenAI, nfe_step: int, requests_each: int) -> None:
    def one() -> float:
        started = time.perf_counter()
        client.audio.speech.create(model="f5-tts", voice="default", input=SENTENCE, response_format="mp3",
                                   extra_body={"nfe_step": nfe_step, "seed": 1}).read()
        return time.perf_counter() - started

    print("| concurrency | requests | wall s | requests/s | p50 s | p95 s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for concurrency in (1, 4, 8):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(lambda _: one(), range(concurrency * requests_each)))
        wall = time.perf_counter() - started
        print(f"| {concurrency} | {len(latencies)} | {wall:.1f} | {len(latencies) / wall:.2f} "
              f"| {pct(latencies, 50):.2f} | {pct(latencies, 95):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe-step", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4, help="requests per client thread")
    parser.add_argument("--configured", action="store_true", help="the model of the environment, not the tiny one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="f5tts-bench-") as tmp:
        home = Path(tmp)
        env = {} if args.configured else tiny_cache_env(home)
        if not args.configured:
            build_tiny_cache(home / "hub")
        (home / "tmp").mkdir()
        worker = HttpWorkerProcess({**env, "ENGINE_MAX_QUEUE": "1024"}, home / "tmp", home / "worker.log")
        try:
            worker.wait_ready(timeout_s=600)
            client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0, timeout=3600)
            stream_once(client, SENTENCE, "pcm", args.nfe_step)  # warm-up
            load = os.getloadavg()[0]
            print(f"CPU ({os.cpu_count()} cores, load {load:.1f}); model "
                  f"{client.models.list().data[0].id}; nfe_step {args.nfe_step}; over HTTP on 127.0.0.1\n")
            streaming_table(client, args.nfe_step, args.repeats)
            print()
            throughput_table(client, args.nfe_step, args.requests)
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
