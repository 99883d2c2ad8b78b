"""How long ``list_voices`` takes on a bucket of many voices, against moto S3 running as its own
process on 127.0.0.1 (so that the server does not share the client's interpreter).

The bucket holds ``--voices`` voices, each a small clip and a one-line transcript (the listing
never downloads a clip). ``--latency-ms`` adds that much to every S3 request on the client side,
as the round trip to a remote S3 endpoint would; 0 measures moto alone. Each round
is a fresh ``VoiceLibrary`` (a worker's first listing) listing twice; the table gives the median
and the range of each, and the S3 requests of one listing.

    python -m bench.list_voices [--voices 1125] [--rounds 5] [--latency-ms 0 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.support.net import free_port
from tests.support.s3_servers import MotoProcess

TRANSCRIPT = "Some call me nature, others call me mother nature."


def populate(client, bucket: str, voices: int) -> None:
    client.create_bucket(Bucket=bucket)
    for i in range(voices):
        client.put_object(Bucket=bucket, Key=f"voices/voice{i:05d}.wav", Body=b"RIFF" + b"\0" * 1020)
        client.put_object(Bucket=bucket, Key=f"voices/voice{i:05d}.txt", Body=TRANSCRIPT.encode())


def timed_listing(library, requests: Counter[str], voices: int) -> float:
    requests.clear()
    started = time.perf_counter()
    listed = len(library.list_voices())
    assert listed == voices + 1, listed
    return time.perf_counter() - started


def measure(settings, args: argparse.Namespace, latency_s: float) -> dict[str, tuple[list[float], Counter[str]]]:
    """Per round, a fresh ``VoiceLibrary`` (a worker's first listing), then a second listing on it."""
    from f5worker import s3
    from f5worker.voices import VoiceLibrary

    results: dict[str, tuple[list[float], Counter[str]]] = {"first": ([], Counter()), "again": ([], Counter())}
    for _ in range(args.rounds):
        library = VoiceLibrary(s3.make_client(settings), settings)
        requests: Counter[str] = Counter()
        library.client.meta.events.register("before-call.s3", lambda model, r=requests, **_: r.update([model.name]))
        library.client.meta.events.register("before-send.s3", lambda **_: time.sleep(latency_s))
        library.client.list_buckets()  # a connection opened
        for case in ("first", "again"):
            results[case][0].append(timed_listing(library, requests, args.voices))
            results[case][1].clear()
            results[case][1].update(requests)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", type=int, default=1125)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    args = parser.parse_args()

    from f5worker import s3
    from f5worker.storage import BucketSettings

    logging.getLogger("f5worker").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        moto = MotoProcess(free_port(), Path(tmp) / "moto.log")
        try:
            settings = BucketSettings.from_env({
                "BUCKET_NAME": "bench-list", "BUCKET_ENDPOINT_URL": moto.url, "BUCKET_REGION": "us-east-1",
                "BUCKET_ACCESS_KEY_ID": "AKIABENCH00000000000", "BUCKET_SECRET_ACCESS_KEY": "bench-secret"})
            populate(s3.make_client(settings), settings.name, args.voices)
            print("| voices | added latency | listing | list_voices median (min-max) | S3 requests |")
            print("|---|---|---|---|---|")
            for latency_ms in args.latency_ms:
                for case, (seconds, requests) in measure(settings, args, latency_ms / 1000).items():
                    label = "a worker's first" if case == "first" else "the next, same worker"
                    print(f"| {args.voices} | {latency_ms:.0f} ms | {label} | {statistics.median(seconds):.2f} s "
                          f"({min(seconds):.2f}-{max(seconds):.2f}) | "
                          f"{', '.join(f'{n} {op}' for op, n in sorted(requests.items()))} |")
        finally:
            moto.stop()


if __name__ == "__main__":
    main()
