"""Voices read and written concurrently (issues 11 and 12): the cache under many job threads, a voice
replaced while jobs read it, speech recognition racing an upload, simultaneous uploads, listings
of odd buckets, transcript encodings and extension case. Against moto over HTTP; interleavings are
forced with botocore's event hooks, so each test fails the same way every time without the fix."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import soundfile as sf

from f5worker import s3 as s3_lib
from f5worker.contract import DEFAULT_VOICE
from f5worker.storage import BucketSettings
from f5worker.timings import Timings
from f5worker.voices import VoiceError, VoiceLibrary, builtin_voice, prepare_audio
from tests.support.audio_bytes import reference_wav_bytes
from tests.support.bucket import ALICE_TEXT

TEXTS = {"A": "Version A.", "B": "Version B."}


@pytest.fixture(autouse=True)
def atomic_conditional_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks If-None-Match / If-Match and then stores, unlocked; S3, R2 and MinIO decide a
    conditional PUT atomically. One lock around moto's PutObject makes the in-process server do so."""
    from moto.s3.responses import S3Response

    put, lock = S3Response.put_object, threading.Lock()

    def locked(self, *args, **kwargs):
        with lock:
            return put(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", locked)


class FakeRecognizer:
    """Speech recognition that counts its calls and takes ``seconds``."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.calls = seconds, 0

    def transcribe(self, wave, sample_rate, timings) -> str:
        self.calls += 1
        time.sleep(self.seconds)
        return "Whisper text."


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    """Clip A (the packaged reference) and clip B (its first 60 %) as WAV files."""
    wave, sr = sf.read(builtin_voice()[0], dtype="float32")
    paths = {"A": tmp_path / "A.wav", "B": tmp_path / "B.wav"}
    sf.write(paths["A"], wave, sr)
    sf.write(paths["B"], wave[: int(len(wave) * 0.6)], sr)
    return paths


@pytest.fixture
def library(bucket_env: dict[str, str]) -> Callable[..., VoiceLibrary]:
    """A VoiceLibrary with its own client, as another worker has."""
    settings = BucketSettings.from_env(bucket_env)

    def make(cache_size: int = 16, recognizer=None) -> VoiceLibrary:
        return VoiceLibrary(s3_lib.make_client(settings), settings, cache_size=cache_size, recognizer=recognizer)

    return make


@pytest.fixture
def versions(clips: dict[str, Path], tmp_path: Path) -> Callable[[tuple], str]:
    """``used(reference)``: which clip and which transcript a reference was made from, e.g. "AB"."""
    lengths = {prepare_audio(path).shape[-1]: version for version, path in clips.items()}

    def used(reference) -> str:
        text = next((v for v, t in TEXTS.items() if reference.text.startswith(t)), reference.text)
        return lengths.get(reference.audio.shape[-1], "?") + text

    return used


def get(library: VoiceLibrary, name: str, tmp_path: Path, ref_text: str | None = None):
    workdir = tmp_path / f"job-{threading.get_ident()}-{time.monotonic_ns()}"
    workdir.mkdir()
    return library.get(name, ref_text, workdir, Timings())


def put(s3, bucket_env: dict[str, str], key: str, body: bytes | str) -> str:
    body = body.encode() if isinstance(body, str) else body
    return s3.put_object(Bucket=bucket_env["BUCKET_NAME"], Key=f"voices/{key}", Body=body)["ETag"]


def text_in_bucket(s3, bucket_env: dict[str, str], key: str) -> str:
    return s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=f"voices/{key}")["Body"].read().decode()


def once_after(client, event: str, action: Callable[..., None]) -> None:
    """Run ``action(**event kwargs)`` after the first ``event`` on ``client``."""
    done: list[bool] = []

    def handler(**kwargs) -> None:
        if not done:
            done.append(True)
            action(**kwargs)

    client.meta.events.register(event, handler)


def in_parallel(n: int, work: Callable[[int], object]) -> list:
    """``work(k)`` for k < n in n threads released together; results or exceptions, in order."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = work(k)
        except Exception as err:  # noqa: BLE001 - returned to the test, which asserts on it
            results[k] = err

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from f5worker import voices

    monkeypatch.setattr(voices, "READ_RETRY_DELAYS_S", (0.01, 0.01))
    yield


# ---------------------------------------------------------------- issue 11: the cache under threads

class YieldingCache(OrderedDict):
    """An LRU that lets other threads run right after each reorder and eviction, as a thread
    preempted there would: two jobs then meet inside the cache every time, not once in a while."""

    def move_to_end(self, key, last: bool = True) -> None:
        super().move_to_end(key, last)
        time.sleep(0.002)

    def popitem(self, last: bool = True):
        item = super().popitem(last)
        time.sleep(0.002)
        return item


def test_cache_is_safe_under_many_job_threads(library, tmp_path):
    """16 threads on four references (three texts for the packaged voice, and alice) with room for
    one: each job gets its own reference and none fails (a KeyError escaped the unlocked LRU)."""
    voices = library(cache_size=1)
    voices._cache = YieldingCache()
    asks = [(DEFAULT_VOICE, f"Text number {i}.") for i in range(3)] + [("alice", None)]

    def job(k: int) -> list[bool]:
        correct = []
        for j in range(12):
            name, text = asks[(k + j) % len(asks)]
            reference, _ = get(voices, name, tmp_path, text)
            correct.append(reference.text.startswith(text or ALICE_TEXT))
        return correct

    results = in_parallel(16, job)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert all(all(r) for r in results)
    assert len(voices._cache) == 1


# ---------------------------------------------------------------- item 2: stale or mixed voices

def test_bytes_replaced_after_the_listing_are_not_cached_as_the_listed_version(library, s3, bucket_env, clips,
                                                                              versions, tmp_path):
    """The voice is A when a job lists it and B by the time it reads it; then A again. The job
    after that must use A: B's bytes were once stored under A's ETags."""
    put(s3, bucket_env, "race.wav", clips["A"].read_bytes())
    put(s3, bucket_env, "race.txt", TEXTS["A"])
    voices = library()

    def replace_with_b(**_) -> None:
        put(s3, bucket_env, "race.wav", clips["B"].read_bytes())
        put(s3, bucket_env, "race.txt", TEXTS["B"])

    once_after(voices.client, "after-call.s3.ListObjectsV2", replace_with_b)
    assert versions(get(voices, "race", tmp_path)[0]) == "BB"  # what the bucket held when it was read
    put(s3, bucket_env, "race.wav", clips["A"].read_bytes())  # same bytes, same ETags as first listed
    put(s3, bucket_env, "race.txt", TEXTS["A"])
    reference, cached = get(voices, "race", tmp_path)
    assert versions(reference) == "AA" and cached is False


def test_a_job_during_an_overwriting_upload_never_mixes_the_versions(library, clips, versions, tmp_path):
    """upload_voice replaces A with B; a job reads the voice between the upload's two PUTs. It
    must use one upload's clip with the same upload's transcript."""
    writer, reader = library(), library()
    writer.store("race", clips["A"], TEXTS["A"], overwrite=False, workdir=tmp_path)
    gets, read_both, outcome = [], threading.Event(), {}

    def count_get(**_) -> None:
        gets.append(1)
        if len(gets) == 2:
            read_both.set()

    reader.client.meta.events.register("after-call.s3.GetObject", count_get)

    def read() -> None:
        try:
            outcome["used"] = versions(get(reader, "race", tmp_path)[0])
        except VoiceError as err:
            outcome["used"] = str(err)

    thread = threading.Thread(target=read)

    def read_between_the_puts(**_) -> None:
        thread.start()
        read_both.wait(timeout=10)  # the reader has read clip and transcript with only the first PUT done

    once_after(writer.client, "after-call.s3.PutObject", read_between_the_puts)
    writer.store("race", clips["B"], TEXTS["B"], overwrite=True, workdir=tmp_path)
    thread.join()
    assert outcome["used"] == "BB"


def test_a_transcript_stored_with_another_clip_is_refused(library, s3, bucket_env, clips, tmp_path, quick_retries):
    """Clip from one upload, transcript (copied with its metadata) from another: never used together."""
    voices = library()
    voices.store("one", clips["A"], TEXTS["A"], overwrite=False, workdir=tmp_path)
    voices.store("two", clips["B"], TEXTS["B"], overwrite=False, workdir=tmp_path)
    bucket = bucket_env["BUCKET_NAME"]
    s3.copy_object(Bucket=bucket, Key="voices/one.txt", CopySource={"Bucket": bucket, "Key": "voices/two.txt"})
    with pytest.raises(VoiceError, match="voice 'one': the transcript was stored with another clip than "
                                         "voices/one.wav, and still after 2 retries"):
        get(voices, "one", tmp_path)
    put(s3, bucket_env, "one.txt", "Written by hand.")  # no pair token: goes with any clip
    assert get(voices, "one", tmp_path)[0].text.startswith("Written by hand.")


# ---------------------------------------------------------------- item 3: speech recognition races

def test_recognition_never_replaces_a_transcript_that_appeared_meanwhile(library, s3, bucket_env, tmp_path):
    recognizer = FakeRecognizer()
    voices = library(recognizer=recognizer)
    once_after(voices.client, "after-call.s3.ListObjectsV2", lambda **_: put(s3, bucket_env, "mute.txt", "User text."))
    reference, _ = get(voices, "mute", tmp_path)
    assert recognizer.calls == 1  # it listed the voice before the transcript arrived
    assert text_in_bucket(s3, bucket_env, "mute.txt") == "User text."
    assert reference.text.startswith("User text.")


def test_parallel_first_jobs_on_one_worker_transcribe_once(library, s3, bucket_env, tmp_path):
    recognizer = FakeRecognizer(seconds=0.3)
    voices = library(recognizer=recognizer)
    stored: list[int] = []
    voices.client.meta.events.register("after-call.s3.PutObject",
                                       lambda http_response, **_: stored.append(http_response.status_code))
    results = in_parallel(6, lambda k: get(voices, "mute", tmp_path))
    assert recognizer.calls == 1 and stored == [200]
    assert sorted(cached for _, cached in results) == [False] + [True] * 5
    assert {reference.text for reference, _ in results} == {"Whisper text. "}


def test_parallel_first_jobs_on_two_workers_store_one_transcript(library, s3, bucket_env, tmp_path):
    recognizers = [FakeRecognizer(seconds=0.3), FakeRecognizer(seconds=0.3)]
    workers = [library(recognizer=r) for r in recognizers]
    stored: list[int] = []
    for worker in workers:
        worker.client.meta.events.register("after-call.s3.PutObject",
                                           lambda http_response, **_: stored.append(http_response.status_code))
    etag = s3.head_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/mute.wav")["ETag"]
    results = in_parallel(6, lambda k: get(workers[k % 2], "mute", tmp_path))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sum(r.calls for r in recognizers) <= 2 and stored.count(200) == 1
    head = s3.head_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/mute.txt")
    assert head["Metadata"] == {"voice-pair": etag.strip('"')}  # the clip it was made from


def test_a_job_during_upload_never_transcribes_the_new_clip(library, s3, bucket_env, clips, tmp_path):
    """A job with recognition on lists the voice between upload_voice's two PUTs and recognises
    slowly: the user's transcript stays."""
    recognizer = FakeRecognizer(seconds=0.3)
    writer, reader = library(), library(recognizer=recognizer)
    listed, outcome = threading.Event(), {}
    reader.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: listed.set())

    def read() -> None:
        try:
            outcome["text"] = get(reader, "fresh", tmp_path)[0].text
        except VoiceError as err:
            outcome["error"] = str(err)

    thread = threading.Thread(target=read)

    def read_between_the_puts(**_) -> None:
        thread.start()
        listed.wait(timeout=10)

    once_after(writer.client, "after-call.s3.PutObject", read_between_the_puts)
    writer.store("fresh", clips["A"], "The user's words.", overwrite=False, workdir=tmp_path)
    thread.join()
    assert recognizer.calls == 0 and "not found" in outcome.get("error", "")
    assert text_in_bucket(s3, bucket_env, "fresh.txt") == "The user's words."


def test_an_uploaded_clip_whose_transcript_is_gone_is_not_transcribed(library, s3, bucket_env, clips, tmp_path,
                                                                      quick_retries):
    recognizer = FakeRecognizer()
    voices = library(recognizer=recognizer)
    voices.store("dave", clips["A"], "Hello, I am Dave.", overwrite=False, workdir=tmp_path)
    s3.delete_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/dave.txt")
    with pytest.raises(VoiceError, match="dave.wav was stored with a transcript, and voices/dave.txt is missing"):
        get(voices, "dave", tmp_path)
    assert recognizer.calls == 0


def test_delete_removes_clips_before_transcripts(library, s3, bucket_env):
    voices = library()
    calls: list[list[str]] = []
    voices.client.meta.events.register("before-parameter-build.s3.DeleteObjects", lambda params, **_: calls.append(
        [o["Key"] for o in params["Delete"]["Objects"]]))
    assert voices.delete("alice")["deleted"] == ["voices/alice.txt", "voices/alice.wav"]
    assert calls == [["voices/alice.wav"], ["voices/alice.txt"]]


# ---------------------------------------------------------------- item 4: simultaneous uploads

def test_simultaneous_uploads_without_overwrite_store_one(library, s3, bucket_env, clips, versions, tmp_path):
    """Both uploads list the voice (absent) before either writes: exactly one stores it."""
    uploaders, both_listed = [library(), library()], threading.Barrier(2)
    for uploader in uploaders:
        once_after(uploader.client, "after-call.s3.ListObjectsV2", lambda **_: both_listed.wait(timeout=10))
    workdirs = [tmp_path / "job-A", tmp_path / "job-B"]
    for workdir in workdirs:
        workdir.mkdir()
    results = in_parallel(2, lambda k: uploaders[k].store("upX", clips["AB"[k]], TEXTS["AB"[k]], False, workdirs[k]))
    refused = [r for r in results if isinstance(r, VoiceError)]
    assert len(refused) == 1 and "voice 'upX' already exists" in str(refused[0])
    assert "pass overwrite: true" in str(refused[0])
    winner = "AB"[results.index(next(r for r in results if isinstance(r, dict)))]
    assert versions(get(library(), "upX", tmp_path)[0]) == winner * 2
    assert text_in_bucket(s3, bucket_env, "upX.txt") == TEXTS[winner]


# ---------------------------------------------------------------- item 5: list_voices

def by_name(voices: list[dict]) -> dict[str, dict]:
    return {v["name"]: v for v in voices}


def test_listing_reports_a_bad_transcript_on_its_voice_and_goes_on(library, s3, bucket_env):
    put(s3, bucket_env, "bad.wav", reference_wav_bytes())
    put(s3, bucket_env, "bad.txt", b"\xff\xfe\x00bad")
    listed = by_name(library().list_voices())
    assert listed["bad"]["error"] == "voice 'bad': transcript voices/bad.txt is not UTF-8 text"
    assert listed["bad"]["transcript"] is None
    assert listed["alice"]["transcript"] == ALICE_TEXT and listed["alice"]["error"] is None
    assert listed["mute"]["error"] == "voice 'mute' has no transcript voices/mute.txt; upload one or pass ref_text"


def test_listing_skips_a_voice_deleted_while_it_runs(library, s3, bucket_env):
    voices = library()
    bucket = bucket_env["BUCKET_NAME"]
    once_after(voices.client, "after-call.s3.ListObjectsV2", lambda **_: s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "voices/alice.wav"}, {"Key": "voices/alice.txt"}]}))
    names = [v["name"] for v in voices.list_voices()]
    assert names == ["default", "bob", "carol", "mute"]


def test_listing_caps_transcripts(library, s3, bucket_env):
    from f5worker.voices import LIST_TRANSCRIPT_BYTES, MAX_TRANSCRIPT_BYTES

    put(s3, bucket_env, "huge.wav", reference_wav_bytes())
    put(s3, bucket_env, "huge.txt", "é" * (3 * 1024 * 1024))  # 6 MB, two bytes a character
    voices = library()
    received: list[int] = []
    voices.client.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: received.append(
        int(http_response.headers["Content-Length"])))
    huge = by_name(voices.list_voices())["huge"]
    assert huge["transcript"] == "é" * (LIST_TRANSCRIPT_BYTES // 2) and huge["transcript_truncated"] is True
    assert huge["error"] == (f"voice 'huge': transcript voices/huge.txt is {6 * 1024 * 1024} bytes, over the "
                             f"{MAX_TRANSCRIPT_BYTES}-byte limit")
    assert max(received) <= LIST_TRANSCRIPT_BYTES  # the rest was never downloaded
    assert by_name(voices.list_voices())["alice"]["transcript_truncated"] is False


def test_a_listing_reads_only_new_or_changed_transcripts(library, s3, bucket_env):
    voices = library()
    calls: list[str] = []
    voices.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    voices.list_voices()
    assert sorted(calls) == ["GetObject"] * 3 + ["ListObjectsV2"]  # alice, bob, carol; mute has none
    calls.clear()
    put(s3, bucket_env, "bob.txt", "Bob's new words.")
    listed = by_name(voices.list_voices())
    assert sorted(calls) == ["GetObject", "ListObjectsV2"]
    assert listed["bob"]["transcript"] == "Bob's new words." and listed["alice"]["transcript"] == ALICE_TEXT


# ---------------------------------------------------------------- item 6: BOM and line ends

def test_bom_and_line_ends_do_not_change_the_transcript(make_worker, s3, bucket_env):
    text = "Some call me nature,\nothers call me mother nature."
    bodies = {"plain": text.encode(), "bom": b"\xef\xbb\xbf" + text.encode(),
              "crlf": text.replace("\n", "\r\n").encode(), "cr": text.replace("\n", "\r").encode()}
    for label, body in bodies.items():
        put(s3, bucket_env, f"t{label}.wav", reference_wav_bytes())
        put(s3, bucket_env, f"t{label}.txt", body)
    worker = make_worker(bucket_env)
    listed = by_name(worker.voices.list_voices())
    assert {label: listed[f"t{label}"]["transcript"] for label in bodies} == dict.fromkeys(bodies, text)
    durations = {label: worker.run({"id": label, "input": {"text": "Hello there.", "voice": f"t{label}", "seed": 7,
                                                           "nfe_step": 4, "return_base64": True}})["duration_s"]
                 for label in bodies}
    assert len(set(durations.values())) == 1, durations


def test_decode_transcript():
    from f5worker.voices import decode_transcript

    assert decode_transcript(b"\xef\xbb\xbf a\r\nb\rc\n ") == "a\nb\nc"
    assert decode_transcript("ab€".encode()[:-1], complete=False) == "ab"  # a character cut by a Range
    with pytest.raises(UnicodeDecodeError):
        decode_transcript("ab€".encode()[:-1])


# ---------------------------------------------------------------- item 7: extension case

def test_upper_case_extensions_are_voices(library, s3, bucket_env, tmp_path):
    put(s3, bucket_env, "shout.WAV", reference_wav_bytes())
    put(s3, bucket_env, "shout.TXT", ALICE_TEXT)
    voices = library()
    assert get(voices, "shout", tmp_path)[0].text.startswith(ALICE_TEXT)
    listed = by_name(voices.list_voices())["shout"]
    assert (listed["format"], listed["transcript"], listed["error"]) == ("wav", ALICE_TEXT, None)
    assert voices.delete("shout")["deleted"] == ["voices/shout.TXT", "voices/shout.WAV"]
    assert s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/shout.").get("KeyCount") == 0


def test_overwrite_replaces_files_of_any_case(library, s3, bucket_env, clips, tmp_path):
    put(s3, bucket_env, "loud.WAV", reference_wav_bytes())
    put(s3, bucket_env, "loud.TXT", ALICE_TEXT)
    voices = library()
    with pytest.raises(VoiceError, match="already exists"):
        voices.store("loud", clips["B"], TEXTS["B"], overwrite=False, workdir=tmp_path)
    voices.store("loud", clips["B"], TEXTS["B"], overwrite=True, workdir=tmp_path)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/loud.")["Contents"]]
    assert sorted(keys) == ["voices/loud.txt", "voices/loud.wav"]
