"""Voices under concurrency and with odd files, against moto S3 on 127.0.0.1 (issues 11 and 12).

Each case drives ``VoiceLibrary`` (the voice step of a job, and the voice actions) from many
threads while a writer changes the voice, then counts what the jobs got and what the bucket holds
once the writer is done. Two clips (A: the packaged reference; B: its first 60 %) and two
transcripts ("Version A." / "Version B.") tell the versions apart. Speech recognition is a
stand-in that counts its calls and answers "Whisper text." after 0.2 s. The BOM/CRLF case runs
jobs on the tiny random-weight model.

    python -m bench.voice_races [--rounds 12] [--threads 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import soundfile as sf

from tests.support.net import free_port
from tests.support.tiny_models import build_tiny_cache

TEXTS = {"A": "Version A.", "B": "Version B."}


class FakeRecognizer:
    def __init__(self) -> None:
        self.calls = 0

    def transcribe(self, wave, sample_rate, timings) -> str:
        self.calls += 1
        time.sleep(0.2)
        return "Whisper text."


def clips(scratch: Path) -> dict[str, Path]:
    from f5worker.voices import builtin_voice

    wave, sr = sf.read(builtin_voice()[0], dtype="float32")
    paths = {"A": scratch / "A.wav", "B": scratch / "B.wav"}
    sf.write(paths["A"], wave, sr)
    sf.write(paths["B"], wave[: int(len(wave) * 0.6)], sr)
    return paths


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Path):
        from f5worker import s3
        from f5worker.storage import BucketSettings
        from f5worker.voices import prepare_audio

        self.args, self.scratch = args, scratch
        self.settings = BucketSettings.from_env(os.environ)
        self.client = s3.make_client(self.settings)
        self.bucket = self.settings.name
        self.client.create_bucket(Bucket=self.bucket)
        self.clips = clips(scratch)
        self.clip_bytes = {v: p.read_bytes() for v, p in self.clips.items()}
        self.lengths = {prepare_audio(p).shape[-1]: v for v, p in self.clips.items()}

    def library(self, cache_size: int = 16, recognizer=None, own_client: bool = False):
        """``own_client``: a client of its own, as another worker has (its requests can be counted apart)."""
        from f5worker import s3
        from f5worker.voices import VoiceLibrary

        client = s3.make_client(self.settings) if own_client else self.client
        return VoiceLibrary(client, self.settings, cache_size=cache_size, recognizer=recognizer)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"voices/{key}", Body=body)

    def put_raw(self, name: str, version: str, gap_s: float = 0.0) -> None:
        self.put(f"{name}.wav", self.clip_bytes[version])
        time.sleep(gap_s)
        self.put(f"{name}.txt", TEXTS[version].encode())

    def used(self, library, name: str) -> str:
        """'AA', 'BB', 'AB' (clip A, transcript B)...; or the error."""
        from f5worker.timings import Timings

        workdir = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            reference, _ = library.get(name, None, workdir, Timings())
        except Exception as err:  # noqa: BLE001 - counted, not hidden
            return f"{type(err).__name__}: {err}"[:90]
        finally:
            shutil.rmtree(workdir)
        clip = self.lengths.get(reference.audio.shape[-1], "?")
        text = next((v for v, t in TEXTS.items() if t[:-1] in reference.text), reference.text)
        return clip + text

    def store(self, library, name: str, version: str, overwrite: bool) -> str:
        workdir = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            library.store(name, self.clips[version], TEXTS[version], overwrite, workdir)
            return "stored"
        except Exception as err:  # noqa: BLE001
            return f"{type(err).__name__}: {err}"[:90]
        finally:
            shutil.rmtree(workdir)

    def held(self, name: str) -> str:
        """What the bucket holds for ``name``: clip version + transcript version."""
        from f5worker.voices import prepare_audio

        get = self.client.get_object
        path = self.scratch / f"held-{name}.wav"
        path.write_bytes(get(Bucket=self.bucket, Key=f"voices/{name}.wav")["Body"].read())
        clip = self.lengths.get(prepare_audio(path).shape[-1], "?")
        path.unlink()
        text = get(Bucket=self.bucket, Key=f"voices/{name}.txt")["Body"].read().decode()
        return clip + next((v for v, t in TEXTS.items() if t == text), "?")

    def hammer(self, work, threads: int) -> tuple[list[str], threading.Event]:
        """``threads`` threads calling ``work()`` until the returned event is set."""
        stop, results = threading.Event(), []

        def loop() -> None:
            while not stop.is_set():
                results.append(work())

        pool = [threading.Thread(target=loop) for _ in range(threads)]
        for t in pool:
            t.start()
        stop.pool = pool  # type: ignore[attr-defined]
        return results, stop


def parallel(n: int, work) -> list:
    """``work(k)`` for k in 0..n-1, in n threads released together; their results."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(k: int) -> None:
        barrier.wait()
        results[k] = work(k)

    pool = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def stop_and_join(stop: threading.Event) -> None:
    stop.set()
    for t in stop.pool:  # type: ignore[attr-defined]
        t.join()


def case_cache_lock(b: Bench) -> None:
    """Issue 11: 16 threads x 80 gets over 3 references with cache_size 1 (the packaged voice with
    three ref_texts: no S3 request between cache lookups, so the threads meet in the cache)."""
    from f5worker.contract import DEFAULT_VOICE
    from f5worker.timings import Timings

    library, errors = b.library(cache_size=1), Counter()

    def work(k: int) -> None:
        for j in range(80):
            try:
                library.get(DEFAULT_VOICE, f"Text number {(k + j) % 3}.", b.scratch, Timings())
            except Exception as err:  # noqa: BLE001
                errors[type(err).__name__] += 1

    parallel(16, work)
    print(f"item 0 (cache lock): 1280 gets, {sum(errors.values())} failed {dict(errors)}")


def case_alternation(b: Bench, how: str, gap_s: float) -> None:
    """Item 2: a writer alternates the voice B, A, B, A, B, A while jobs run, then all jobs after."""
    writer = b.library()
    during, stale_rounds, stale_jobs, mixed_after = Counter(), 0, 0, 0
    for r in range(b.args.rounds):
        name = f"race-{how}-{int(gap_s * 1000)}-{r}"
        b.put_raw(name, "A")
        library = b.library()
        results, stop = b.hammer(lambda lib=library, n=name: b.used(lib, n), b.args.threads)
        for version in "BABABA":
            if how == "raw":
                b.put_raw(name, version, gap_s)
            else:
                assert b.store(writer, name, version, overwrite=True) == "stored"
            time.sleep(0.05)
        stop_and_join(stop)
        during.update(results)
        after = [b.used(library, name) for _ in range(b.args.threads)]
        stale = sum(a != "AA" for a in after)
        stale_rounds += stale > 0
        stale_jobs += stale
        mixed_after += sum(a in ("AB", "BA") for a in after)
        assert b.held(name) == "AA", b.held(name)
    total = sum(during.values())
    mixed = during["AB"] + during["BA"]
    print(f"item 2 ({how} PUTs, {gap_s * 1000:.0f} ms between clip and transcript): during the race "
          f"{mixed}/{total} jobs mixed clip and transcript, other outcomes {dict(during - Counter(AA=0))}; "
          f"after the bucket settled on A: {stale_rounds}/{b.args.rounds} rounds had jobs not on A "
          f"({stale_jobs} jobs, {mixed_after} of them mixed)")


def case_asr_during_upload(b: Bench) -> None:
    """Item 3: jobs on a voice while upload_voice stores it, with recognition on."""
    overwritten = 0
    recognizer = FakeRecognizer()
    for r in range(b.args.rounds):
        name = f"upasr{r}"
        library = b.library(recognizer=recognizer)
        results, stop = b.hammer(lambda lib=library, n=name: b.used(lib, n), 8)
        time.sleep(0.05)
        assert b.store(b.library(), name, "A", overwrite=False) == "stored"
        time.sleep(0.5)
        stop_and_join(stop)
        text = b.client.get_object(Bucket=b.bucket, Key=f"voices/{name}.txt")["Body"].read().decode()
        overwritten += text != TEXTS["A"]
    print(f"item 3 (ASR while upload_voice runs): the user's transcript replaced by Whisper's in "
          f"{overwritten}/{b.args.rounds} rounds; recognizer ran {recognizer.calls} times")


def case_asr_once(b: Bench) -> None:
    """Item 3: 6 parallel first jobs on a voice without transcript, on one worker and on two."""
    rounds = b.args.rounds // 2
    for workers in (1, 2):
        calls, puts, outcomes = 0, [], Counter()
        for r in range(rounds):
            name = f"mute{workers}-{r}"
            b.put(f"{name}.wav", b.clip_bytes["A"])
            recognizers = [FakeRecognizer() for _ in range(workers)]
            libraries = [b.library(recognizer=rec, own_client=True) for rec in recognizers]
            for library in libraries:
                library.client.meta.events.register("after-call.s3.PutObject", lambda c=puts, **kw: c.append(
                    kw["http_response"].status_code == 200))
            outcomes.update(parallel(6, lambda k, libs=libraries, n=name: b.used(libs[k % len(libs)], n)))
            calls += sum(rec.calls for rec in recognizers)
        print(f"item 3 (6 parallel first jobs, no transcript, {workers} worker(s)): {calls} transcriptions and "
              f"{len(puts)} transcript PUTs ({sum(puts)} stored) in {rounds} rounds; job outcomes {dict(outcomes)}")


def case_create_only(b: Bench) -> None:
    """Item 4: two simultaneous upload_voice without overwrite, per round."""
    both, one, mismatched, outcomes = 0, 0, 0, Counter()
    for r in range(b.args.rounds):
        name, libraries = f"up{r}", [b.library(), b.library()]
        results = parallel(2, lambda k, n=name, libs=libraries: b.store(libs[k], n, "AB"[k], overwrite=False))
        ok = results.count("stored")
        both += ok == 2
        one += ok == 1
        mismatched += b.held(name) in ("AB", "BA")
        outcomes.update(v for v in results if v != "stored")
    rounds = b.args.rounds
    print(f"item 4 (2 simultaneous upload_voice, no overwrite): both succeeded {both}/{rounds}, exactly one "
          f"{one}/{rounds}, pair mismatched in the bucket {mismatched}/{rounds}; refusals {dict(outcomes)}")


def case_listing(b: Bench) -> None:
    """Item 5: list_voices with a non-UTF-8 transcript, a huge one, and a voice deleted meanwhile."""
    library = b.library()

    def attempt(label: str) -> None:
        try:
            voices = library.list_voices()
        except Exception as err:  # noqa: BLE001
            print(f"item 5 ({label}): listing failed: {type(err).__name__}: {err}"[:200])
            return
        detail = {v["name"]: (len(v["transcript"] or ""), v.get("error")) for v in voices if v["name"].startswith("l5")}
        print(f"item 5 ({label}): {len(voices)} voices listed; l5* (transcript chars, error): {detail}")

    b.put_raw("l5ok", "A")
    b.put("l5bad.wav", b.clip_bytes["A"])
    b.put("l5bad.txt", b"\xff\xfe\x00bad")
    attempt("one transcript not UTF-8")
    b.client.delete_object(Bucket=b.bucket, Key="voices/l5bad.txt")
    b.put("l5huge.wav", b.clip_bytes["A"])
    b.put("l5huge.txt", b"word " * (1024 * 1024))
    attempt("a 5 MB transcript")
    b.client.delete_object(Bucket=b.bucket, Key="voices/l5huge.txt")
    b.put_raw("l5gone", "A")
    hook = library.client.meta.events
    once = []

    def delete_after_listing(**_) -> None:
        if not once:
            once.append(1)
            b.client.delete_objects(Bucket=b.bucket, Delete={"Objects": [{"Key": "voices/l5gone.wav"},
                                                                        {"Key": "voices/l5gone.txt"}]})

    hook.register("after-call.s3.ListObjectsV2", delete_after_listing)
    attempt("a voice deleted while the listing runs")
    hook.unregister("after-call.s3.ListObjectsV2", delete_after_listing)


def case_extension_case(b: Bench) -> None:
    """Item 7: a clip named name.WAV."""
    b.put("shout.WAV", b.clip_bytes["A"])
    b.put("shout.txt", TEXTS["A"].encode())
    library = b.library()
    job = b.used(library, "shout")
    listed = [v["name"] for v in library.list_voices() if v["name"] == "shout"]
    try:
        deleted = library.delete("shout")["deleted"]
    except Exception as err:  # noqa: BLE001
        deleted = f"{type(err).__name__}: {err}"
    left = [o["Key"] for o in b.client.list_objects_v2(Bucket=b.bucket, Prefix="voices/shout.").get("Contents", [])]
    print(f"item 7 (voices/shout.WAV): job -> {job}; listed: {bool(listed)}; delete_voice reported {deleted}, "
          f"left in the bucket {left}")


def case_bom_crlf(b: Bench) -> None:
    """Item 6: same clip, same text and seed; the transcript plain, with a BOM, with CRLF line ends."""
    from f5worker.pipeline import Worker
    from f5worker.settings import load_settings

    text = "Some call me nature,\nothers call me mother nature."
    variants = {"plain": text.encode(), "bom": b"\xef\xbb\xbf" + text.encode(),
                "crlf": text.replace("\n", "\r\n").encode()}
    worker = Worker.from_settings(load_settings(os.environ))
    durations, listed = {}, {}
    for label, body in variants.items():
        b.put(f"t6{label}.wav", b.clip_bytes["A"])
        b.put(f"t6{label}.txt", body)
        job = {"text": "Hello there, this is a test.", "voice": f"t6{label}", "seed": 7, "nfe_step": 4,
               "return_base64": True}
        result = worker.run({"id": f"t6-{label}", "input": job})
        durations[label] = result.get("duration_s", result.get("error"))
        listed[label] = next(v["transcript"] for v in worker.voices.list_voices() if v["name"] == f"t6{label}")[:3]
    print(f"item 6 (BOM / CRLF in the transcript): duration_s {durations}; list_voices transcript starts {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="f5tts-bench-races-"))
    scratch = home / "scratch"
    scratch.mkdir()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("f5worker").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        os.environ.update({
            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch),
            "BUCKET_NAME": "bench-races", "BUCKET_ENDPOINT_URL": f"http://{host}:{port}", "BUCKET_REGION": "us-east-1",
            "BUCKET_ACCESS_KEY_ID": "AKIABENCH00000000000", "BUCKET_SECRET_ACCESS_KEY": "bench-secret",
            "CUDA_VISIBLE_DEVICES": "", **build_tiny_cache(home / "hub"),
        })
        tempfile.tempdir = None
        bench = Bench(args, scratch)
        cases = {
            "cache_lock": lambda: case_cache_lock(bench),
            "raw": lambda: case_alternation(bench, "raw", 0.0),
            "raw_gap": lambda: case_alternation(bench, "raw", 0.05),
            "upload": lambda: case_alternation(bench, "upload_voice", 0.0),
            "asr_upload": lambda: case_asr_during_upload(bench),
            "asr_once": lambda: case_asr_once(bench),
            "create_only": lambda: case_create_only(bench),
            "listing": lambda: case_listing(bench),
            "bom_crlf": lambda: case_bom_crlf(bench),
            "ext_case": lambda: case_extension_case(bench),
        }
        for name, run in cases.items():
            if not args.only or name in args.only:
                run()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
