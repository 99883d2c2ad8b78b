"""Concurrent jobs through one worker (issue 13): their chunks share the model's scheduler and
batched forward passes, each job's audio is the audio it gets alone, a full queue refuses a job
at once, and RunPod is told how many jobs the worker takes."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from f5worker.engine.sampler import Sampler, WorkItem
from f5worker.settings import EngineLimits, Settings
from f5worker.tts_model import TTSModel
from tests.support.audio_bytes import decode

BATCHED = EngineLimits(max_batch=8)  # the default on CUDA; CPU's default is 1

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5)  # 3 chunks
JOBS = [  # mixed lengths, voices, seeds and speeds; one nfe_step and guidance, so they can share passes
    {"text": LONG_TEXT, "voice": "default", "seed": 1, "speed": 1.0},
    {"text": "Hello there, this is a test.", "voice": "alice", "seed": 2, "speed": 0.8},
    {"text": "A short one.", "voice": "default", "seed": 3, "speed": 1.2},
    {"text": "This second text is noticeably longer than the first one.", "voice": "alice", "seed": 4, "speed": 1.0},
]


class GatedSampler(Sampler):
    """The engine's sampler, recording each batch and holding it until ``gate`` is open."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[list[WorkItem]] = []
        self.gate = threading.Event()
        self.gate.set()

    def sample(self, items):
        self.batches.append(list(items))
        self.gate.wait(timeout=120)
        return super().sample(items)


@pytest.fixture
def gated(tiny_model: TTSModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TTSModel]]:
    """A TTSModel on the session's weights whose scheduler samples with a :class:`GatedSampler`."""
    from f5worker import tts_model

    made: list[TTSModel] = []
    monkeypatch.setattr(tts_model, "Sampler", GatedSampler)

    def make(engine: EngineLimits = BATCHED) -> TTSModel:
        model = TTSModel(tiny_model.model, tiny_model.vocoder, "cpu", tiny_model.resolved, engine)
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


def sampler_of(model: TTSModel) -> GatedSampler:
    return model.scheduler._sample.__self__  # the bound GatedSampler.sample the scheduler calls


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def request(job_id: str, fields: dict) -> dict:
    return {"id": job_id, "input": {**fields, "nfe_step": 4, "output_format": "wav", "return_base64": True}}


def wave_of(result: dict) -> np.ndarray:
    assert "error" not in result, result
    return decode(base64.b64decode(result["audio_base64"]))[0]


def test_concurrent_jobs_get_the_audio_they_get_alone(make_worker, bucket_env, gated):
    worker = make_worker(bucket_env)
    worker.model = gated()
    sampler = sampler_of(worker.model)
    alone = [wave_of(worker.run(request(f"alone-{i}", fields))) for i, fields in enumerate(JOBS)]
    items = sum(map(len, sampler.batches))
    assert [len(batch) for batch in sampler.batches] == [3, 1, 1, 1]  # each job's chunks in one pass

    sampler.batches.clear()
    sampler.gate.clear()  # the first batch waits until every job's chunks are queued
    with ThreadPoolExecutor(len(JOBS)) as pool:
        futures = [pool.submit(worker.run, request(f"together-{i}", fields)) for i, fields in enumerate(JOBS)]
        wait_until(lambda: sum(map(len, sampler.batches)) + worker.model.scheduler.waiting == items)
        sampler.gate.set()
        together = [wave_of(future.result()) for future in futures]

    mixed = [batch for batch in sampler.batches if len({(item.ref_text, item.params.seed) for item in batch}) > 1]
    assert mixed, f"no batch mixed jobs: {[len(b) for b in sampler.batches]}"
    worst = 0.0
    for ours, theirs in zip(together, alone, strict=True):
        assert ours.shape == theirs.shape
        worst = max(worst, float(np.max(np.abs(ours - theirs))))
    assert worst <= 1e-4, worst
    print(f"\nworst |together - alone| over {len(JOBS)} jobs, batches {[len(b) for b in sampler.batches]}: {worst:.3g}")


def test_a_short_job_behind_a_long_one_runs_after_one_of_its_chunks_not_all(make_worker, gated):
    """Jobs take turns (CPU's one chunk a pass): a short job that arrives while a 3-chunk job's first
    chunk runs is sampled after that job's next chunk, not after all of them."""
    worker = make_worker({})
    worker.model = gated(EngineLimits(max_batch=1))
    sampler = sampler_of(worker.model)
    sampler.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(worker.run, request("long", {"text": LONG_TEXT, "voice": "default", "seed": 1}))
        wait_until(lambda: len(sampler.batches) == 1 and worker.model.scheduler.waiting == 2)
        short = pool.submit(worker.run, request("short", {"text": "A short one.", "voice": "default", "seed": 3}))
        wait_until(lambda: worker.model.scheduler.waiting == 3)
        sampler.gate.set()
        wave_of(short.result())
        wave_of(long.result())
    assert [batch[0].params.seed for batch in sampler.batches] == [1, 1, 3, 1]


def test_a_streamed_jobs_first_chunk_is_sampled_alone_and_its_audio_is_unchanged(make_worker, gated):
    """With batches of several chunks (a GPU's default), a lone stream's first chunk does not wait
    for a pass of all its chunks; the same job not streamed has them in one pass, same audio."""
    worker = make_worker({})
    worker.model = gated()
    sampler = sampler_of(worker.model)
    fields = {"text": LONG_TEXT, "voice": "default", "seed": 1, "output_format": "pcm"}
    pieces: list = []
    streamed = worker.run({"id": "streamed", "input": {**fields, "nfe_step": 4, "stream": True}}, emit=pieces.append)
    assert "error" not in streamed, streamed
    first_batches = [len(batch) for batch in sampler.batches]
    sampler.batches.clear()
    whole = worker.run(request("whole", fields))
    assert (first_batches, [len(batch) for batch in sampler.batches]) == ([1, 2], [3])
    pcm = b"".join(base64.b64decode(piece["audio_base64"]) for piece in pieces)
    np.testing.assert_allclose(np.frombuffer(pcm, dtype="<i2") / 32768, wave_of(whole), atol=1e-4)


def test_a_full_queue_refuses_a_job_at_once_and_the_next_job_runs(make_worker, gated):
    worker = make_worker({})
    worker.model = gated(EngineLimits(max_batch=8, max_queue=2))
    sampler = sampler_of(worker.model)
    sampler.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(worker.run, request("running", {"text": "Hello.", "seed": 1}))
        wait_until(lambda: len(sampler.batches) == 1)  # its one chunk is in the model, held there
        item = sampler.batches[0][0]
        queued = worker.model.scheduler.submit([item, item])  # the queue is now full
        refused = worker.run(request("refused", {"text": "Hello.", "seed": 2}))
        assert refused == {"error": "busy: the synthesis queue is full: 2 items are waiting and the limit is 2; "
                                    "this job needs room for 1; retry later"}
        sampler.gate.set()
        wave_of(running.result())
    assert all(len(future.result()) > 0 for future in queued)
    wave_of(worker.run(request("next", {"text": "Hello.", "seed": 2})))


def test_a_job_larger_than_the_queue_is_refused_without_retry_later(make_worker, gated):
    worker = make_worker({})
    worker.model = gated(EngineLimits(max_batch=8, max_queue=2))
    result = worker.run(request("long", {"text": LONG_TEXT, "seed": 1}))
    assert result == {"error": "busy: the synthesis queue is full: this job alone has 3 items, "
                               "over the queue limit of 2"}


@pytest.mark.parametrize(("env", "device", "expected"), [
    ({"MAX_CONCURRENCY": "5"}, "cpu", 5),
    ({"MAX_CONCURRENCY": "5"}, "cuda", 5),
    ({}, "cpu", 1),
    ({}, "cuda:0", 8),
])
def test_the_concurrency_modifier_returns_max_concurrency(env, device, expected):
    from runpod_handler import concurrency_modifier

    modifier = concurrency_modifier(Settings.from_env(env), device)
    assert [modifier(current) for current in (0, 1, 64)] == [expected] * 3


class StubModel:
    device = "cpu"
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.process  # importing the runpod SDK runs py-cpuinfo's subprocess
@pytest.mark.parametrize("streaming", ["0", "1"])
def test_both_handlers_start_with_the_concurrency_modifier(streaming, monkeypatch):
    import runpod

    import runpod_handler

    model = StubModel()
    monkeypatch.setattr(runpod_handler, "WORKER", None)  # main() sets it; restored afterwards
    started: list[dict] = []
    monkeypatch.setattr(runpod_handler, "start_up", lambda settings: type("W", (), {"model": model})())
    monkeypatch.setattr(runpod.serverless, "start", started.append)
    monkeypatch.setattr(runpod_handler, "load_settings",
                        lambda env: Settings.from_env({"MAX_CONCURRENCY": "3", "STREAMING": streaming}))
    monkeypatch.setattr(runpod_handler.signal, "signal", lambda *args: None)
    runpod_handler.main()
    (config,) = started
    expected = runpod_handler.stream_handler if streaming == "1" else runpod_handler.handler
    assert config["handler"] is expected and config["concurrency_modifier"](0) == 3
    assert model.closed  # the scheduler is closed when the SDK's loop returns

