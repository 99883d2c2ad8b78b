"""The synthesis scheduler: batching by key and limit, no fill wait, back-pressure, out-of-memory
splits, failures, cancellation and shutdown, with a deterministic sampling function that records
every batch; and real synthesis on the tiny model through it."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import numpy as np
import pytest
import torch

from f5worker.contract import SynthesisParams
from f5worker.engine.sampler import WorkItem
from f5worker.engine.scheduler import QueueFull, Scheduler, SchedulerClosed, max_concurrency

LIVENESS_S = 60  # only so that a broken scheduler fails instead of hanging; never a speed bound
REFERENCE = torch.zeros(1, 240)


def item(text: str, nfe_step: int = 32, seed: int = 0, chunk_index: int = 0) -> WorkItem:
    return WorkItem(REFERENCE, "ref", text, SynthesisParams(nfe_step=nfe_step, seed=seed), chunk_index)


def wave_of(work: WorkItem) -> np.ndarray:
    """What the recording sampler answers for ``work``: a function of the item alone."""
    codes = np.frombuffer(work.text.encode(), dtype=np.uint8).astype(np.float32)
    return codes * (work.params.seed + 1) + work.params.nfe_step


class Recorder:
    """A sampling function that records each batch's texts. An item whose text is in ``held``
    blocks its batch until :meth:`release`; ``fail(items)`` may raise instead of answering."""

    def __init__(self, held: tuple[str, ...] = (), fail=None):
        self.batches: list[list[str]] = []
        self.started = {text: threading.Event() for text in held}
        self.gates = {text: threading.Event() for text in held}
        self.fail = fail

    def __call__(self, items: list[WorkItem]) -> list[np.ndarray]:
        self.batches.append([work.text for work in items])
        for work in items:
            if work.text in self.gates:
                self.started[work.text].set()
                assert self.gates[work.text].wait(LIVENESS_S)
        if self.fail is not None:
            self.fail(items)
        return [wave_of(work) for work in items]

    def wait_started(self, text: str) -> None:
        assert self.started[text].wait(LIVENESS_S)

    def release(self, text: str) -> None:
        self.gates[text].set()


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []

    def make(sample, **kwargs) -> Scheduler:
        made.append(Scheduler(sample, **kwargs))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()


def busy(make_scheduler, recorder: Recorder, **kwargs):
    """A scheduler whose thread is inside the held batch ``gate``; returns it and the gate's future."""
    scheduler = make_scheduler(recorder, **kwargs)
    [gate] = scheduler.submit([item("gate")])
    recorder.wait_started("gate")
    return scheduler, gate


def answers(futures) -> list[np.ndarray]:
    return [future.result(LIVENESS_S) for future in futures]


# ---------------------------------------------------------------- batching

def test_waiting_items_are_grouped_by_key_oldest_first_up_to_the_limit(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=2)
    works = [item("a1"), item("b2", nfe_step=16), item("a3"), item("a4"), item("b5", nfe_step=16), item("a6"),
             item("c7", nfe_step=8)]
    futures = scheduler.submit(works)
    recorder.release("gate")
    got = answers([gate, *futures])
    assert recorder.batches == [["gate"], ["a1", "a3"], ["b2", "b5"], ["a4", "a6"], ["c7"]]
    for work, wave in zip(works, got[1:], strict=True):
        np.testing.assert_array_equal(wave, wave_of(work))


def test_a_lone_item_starts_at_once(make_scheduler):
    recorder = Recorder(held=("alone",))
    scheduler = make_scheduler(recorder, max_batch=8)
    [future] = scheduler.submit([item("alone")])
    recorder.wait_started("alone")  # started with nothing else submitted: no wait for the batch to fill
    [later] = scheduler.submit([item("later")])
    recorder.release("alone")
    answers([future, later])
    assert recorder.batches == [["alone"], ["later"]]


def test_items_arriving_during_a_batch_join_the_next_one(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=8)
    first = scheduler.submit([item("x")])
    second = scheduler.submit([item("y"), item("z")])
    assert scheduler.waiting == 3
    recorder.release("gate")
    answers([gate, *first, *second])
    assert recorder.batches == [["gate"], ["x", "y", "z"]]


def test_chunks_of_two_jobs_share_a_batch_and_each_job_gets_its_own_in_order(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=8)
    job1 = [item("one-0", seed=1), item("one-1", seed=1, chunk_index=1)]
    job2 = [item("two-0", seed=2), item("two-1", seed=2, chunk_index=1), item("two-2", seed=2, chunk_index=2)]
    streams = [scheduler.results(job1), scheduler.results(job2)]  # both submitted now
    recorder.release("gate")
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(list, streams))
    assert recorder.batches == [["gate"], ["one-0", "two-0", "one-1", "two-1", "two-2"]]  # jobs take turns
    for job, waves in zip((job1, job2), got, strict=True):
        assert len(waves) == len(job)
        for work, wave in zip(job, waves, strict=True):
            np.testing.assert_array_equal(wave, wave_of(work))


def test_a_job_behind_a_long_one_waits_for_one_of_its_items_not_all(make_scheduler):
    """Head-of-line blocking: with one item per batch (the CPU default), a short job submitted
    after a long one runs after the long job's next item, not after all of them."""
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=1)
    long = scheduler.submit([item(f"long-{i}", chunk_index=i) for i in range(4)])
    short = scheduler.submit([item("short")])
    recorder.release("gate")
    answers([gate, *long, *short])
    assert recorder.batches == [["gate"], ["long-0"], ["short"], ["long-1"], ["long-2"], ["long-3"]]


def test_jobs_take_turns_one_item_each_per_round_and_the_served_go_to_the_back(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=3)
    a = scheduler.submit([item(f"a{i}", chunk_index=i) for i in range(5)])
    b = scheduler.submit([item("b0"), item("b1", chunk_index=1)])
    c = scheduler.submit([item("c0")])
    d = scheduler.submit([item("d0")])
    recorder.release("gate")
    answers([gate, *a, *b, *c, *d])
    # a, b, c served: d's turn comes first, then theirs in their order
    assert recorder.batches == [["gate"], ["a0", "b0", "c0"], ["d0", "a1", "b1"], ["a2", "a3", "a4"]]


def test_a_job_whose_items_cannot_share_the_batch_keeps_its_turn(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=2)
    a = scheduler.submit([item("a0"), item("a1", chunk_index=1), item("a2", chunk_index=2)])
    b = scheduler.submit([item("b0", nfe_step=16)])
    c = scheduler.submit([item("c0")])
    recorder.release("gate")
    answers([gate, *a, *b, *c])
    assert recorder.batches == [["gate"], ["a0", "c0"], ["b0"], ["a1", "a2"]]


def test_an_early_first_jobs_first_item_is_batched_without_its_other_items(make_scheduler):
    """A lone stream (``early_first``) gets its first audio from a pass of one item, then the rest
    together; the same job without it has all its items in one pass."""
    recorder = Recorder()
    scheduler = make_scheduler(recorder, max_batch=8)
    works = [item(f"s{i}", chunk_index=i) for i in range(3)]
    answers(scheduler.submit(works, early_first=True))
    answers(scheduler.submit(works))
    assert recorder.batches == [["s0"], ["s1", "s2"], ["s0", "s1", "s2"]]


def test_other_jobs_items_still_join_an_early_first_items_batch(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_batch=4)
    a = scheduler.submit([item(f"a{i}", chunk_index=i) for i in range(3)])
    s = scheduler.submit([item(f"s{i}", chunk_index=i) for i in range(3)], early_first=True)
    recorder.release("gate")
    answers([gate, *a, *s])
    assert recorder.batches == [["gate"], ["a0", "s0", "a1", "a2"], ["s1", "s2"]]


# ---------------------------------------------------------------- back-pressure

def test_a_job_that_does_not_fit_the_queue_fails_fast_and_nothing_of_it_is_queued(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_queue=3)
    admitted = scheduler.submit([item("a"), item("b")])
    with pytest.raises(QueueFull, match="2 items are waiting and the limit is 3") as caught:
        scheduler.submit([item("c"), item("d")])
    assert (caught.value.items, caught.value.waiting, caught.value.limit) == (2, 2, 3)
    assert scheduler.waiting == 2
    admitted += scheduler.submit([item("e")])  # one more fits
    recorder.release("gate")
    answers([gate, *admitted])
    assert recorder.batches == [["gate"], ["a", "e", "b"]]


def test_a_job_larger_than_the_whole_queue_is_told_so(make_scheduler):
    scheduler = make_scheduler(Recorder(), max_queue=2)
    with pytest.raises(QueueFull, match="this job alone has 3 items, over the queue limit of 2"):
        scheduler.submit([item("a"), item("b"), item("c")])


def test_cancelled_items_leave_room_in_the_queue(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder, max_queue=2)
    first = scheduler.submit([item("a"), item("b")])
    assert all(future.cancel() for future in first)
    second = scheduler.submit([item("c"), item("d")])
    recorder.release("gate")
    answers([gate, *second])
    assert recorder.batches == [["gate"], ["c", "d"]]


# ---------------------------------------------------------------- failures

@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_out_of_memory_splits_the_batch_and_fails_only_an_item_too_large_alone(make_scheduler, error):
    def fail(items: list[WorkItem]) -> None:
        if len(items) > 2 or any(work.text == "huge" for work in items):
            raise error("out of memory")

    recorder = Recorder(held=("gate",), fail=fail)
    scheduler, gate = busy(make_scheduler, recorder, max_batch=8)
    works = [item(text) for text in ("a", "b", "huge", "c", "d", "e", "f")]
    futures = scheduler.submit(works)
    recorder.release("gate")
    gate.result(LIVENESS_S)
    for work, future in zip(works, futures, strict=True):
        if work.text == "huge":
            assert isinstance(future.exception(LIVENESS_S), error)
        else:
            np.testing.assert_array_equal(future.result(LIVENESS_S), wave_of(work))
    assert recorder.batches[1:] == [
        ["a", "b", "huge", "c", "d", "e", "f"],
        ["a", "b", "huge", "c"], ["a", "b"], ["huge", "c"], ["huge"], ["c"],
        ["d", "e", "f"], ["d", "e"], ["f"],
    ]
    [after] = scheduler.submit([item("after")])
    np.testing.assert_array_equal(after.result(LIVENESS_S), wave_of(item("after")))


def test_an_error_fails_only_its_batch_and_the_scheduler_goes_on(make_scheduler):
    def fail(items: list[WorkItem]) -> None:
        if items[0].params.nfe_step == 16:
            raise ValueError("bad batch")

    recorder = Recorder(held=("gate",), fail=fail)
    scheduler, gate = busy(make_scheduler, recorder)
    good1, bad, good2 = scheduler.submit([item("a"), item("b", nfe_step=16), item("c")])
    recorder.release("gate")
    assert isinstance(bad.exception(LIVENESS_S), ValueError)
    answers([gate, good1, good2])
    assert recorder.batches == [["gate"], ["a", "c"], ["b"]]
    [after] = scheduler.submit([item("after")])
    np.testing.assert_array_equal(after.result(LIVENESS_S), wave_of(item("after")))


def test_an_item_whose_key_cannot_be_computed_fails_its_submission_not_the_scheduler(make_scheduler):
    scheduler = make_scheduler(Recorder(), key=lambda work: work.params.nfe_step)
    with pytest.raises(AttributeError):
        scheduler.submit([item("a"), None])
    assert scheduler.waiting == 0
    [after] = scheduler.submit([item("after")])
    np.testing.assert_array_equal(after.result(LIVENESS_S), wave_of(item("after")))


def test_a_sampling_function_answering_the_wrong_count_fails_its_batch(make_scheduler):
    scheduler = make_scheduler(lambda items: [np.zeros(1)])
    futures = scheduler.submit([item("a"), item("b")])  # one batch: the thread is idle until now
    for future in futures:
        assert "returned 1 waves for 2 items" in str(future.exception(LIVENESS_S))


def test_results_raise_an_items_error_in_its_turn(make_scheduler):
    def fail(items: list[WorkItem]) -> None:
        if items[0].text == "b":
            raise ValueError("bad chunk")

    scheduler = make_scheduler(Recorder(fail=fail), max_batch=1)
    stream = scheduler.results([item("a"), item("b"), item("c")])
    np.testing.assert_array_equal(next(stream), wave_of(item("a")))
    with pytest.raises(ValueError, match="bad chunk"):
        next(stream)


# ---------------------------------------------------------------- cancellation, shutdown

def test_an_item_cancelled_before_its_batch_starts_is_dropped(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder)
    a, b, c = scheduler.submit([item("a"), item("b"), item("c")])
    assert not gate.cancel()  # running: too late
    assert b.cancel()
    recorder.release("gate")
    answers([gate, a, c])
    assert b.cancelled()
    assert recorder.batches == [["gate"], ["a", "c"]]


def test_leaving_a_jobs_results_early_cancels_its_items_not_yet_started(make_scheduler):
    recorder = Recorder(held=("b",))
    scheduler = make_scheduler(recorder, max_batch=1)
    stream = scheduler.results([item("a"), item("b"), item("c")])
    np.testing.assert_array_equal(next(stream), wave_of(item("a")))
    recorder.wait_started("b")
    stream.close()  # the client went away: b is running, c has not started
    recorder.release("b")
    [after] = scheduler.submit([item("after")])
    after.result(LIVENESS_S)
    assert recorder.batches == [["a"], ["b"], ["after"]]


def test_close_fails_waiting_items_lets_the_running_batch_finish_and_stops_the_thread(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder)
    waiting = scheduler.submit([item("a"), item("b")])
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    for future in waiting:
        assert isinstance(future.exception(LIVENESS_S), SchedulerClosed)
    with pytest.raises(SchedulerClosed):
        scheduler.submit([item("c")])
    recorder.release("gate")
    np.testing.assert_array_equal(gate.result(LIVENESS_S), wave_of(item("gate")))
    closer.join(LIVENESS_S)
    assert not closer.is_alive() and not scheduler._thread.is_alive()
    assert recorder.batches == [["gate"]]


def test_close_with_a_cancelled_waiting_item(make_scheduler):
    recorder = Recorder(held=("gate",))
    scheduler, gate = busy(make_scheduler, recorder)
    [cancelled] = scheduler.submit([item("a")])
    cancelled.cancel()
    recorder.release("gate")
    scheduler.close()
    assert gate.done() and cancelled.cancelled()
    with pytest.raises(CancelledError):
        cancelled.result()


# ---------------------------------------------------------------- RunPod concurrency

@pytest.mark.parametrize(("value", "device", "expected"), [
    (None, "cpu", 1), ("", "cpu", 1), ("  ", "cuda", 8), (None, "cuda", 8), (None, "cuda:1", 8),
    ("4", "cpu", 4), (" 3 ", "cuda", 3), ("64", "cuda", 64), ("1", "cuda", 1),
])
def test_max_concurrency(value, device, expected):
    assert max_concurrency(value, device) == expected


@pytest.mark.parametrize("value", ["0", "-1", "65", "abc", "2.5", "+4", "4_0", "²"])
def test_max_concurrency_refuses_a_bad_value_naming_the_variable(value):
    with pytest.raises(ValueError, match=r"MAX_CONCURRENCY=.*must be a whole number from 1 to 64"):
        max_concurrency(value, "cuda")


# ---------------------------------------------------------------- real synthesis

def test_real_synthesis_through_the_scheduler_equals_each_item_alone(tiny_model):
    """STAND-IN sampling (upstream's ``infer_batch_process`` per item, ``bench.throughput``) until
    the engine's batched ``Sampler`` lands: the scheduler hands every item of two concurrent
    jobs exactly its own audio."""
    from bench.throughput import upstream_stand_in
    from f5worker.voices import builtin_voice, prepare_reference

    reference = prepare_reference(*builtin_voice())
    sample = upstream_stand_in(tiny_model)

    def chunk(text: str, seed: int, index: int, speed: float = 1.0) -> WorkItem:
        params = SynthesisParams(nfe_step=4, seed=seed, speed=speed)
        return WorkItem(reference.audio, reference.text, text, params, index)

    jobs = [[chunk("Hello there.", 1, 0), chunk("A second, longer chunk of this job.", 1, 1)],
            [chunk("Another voice job, at a faster speed.", 2, 0, speed=1.5)]]
    with Scheduler(sample, max_batch=4) as scheduler, ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda job: list(scheduler.results(job)), jobs))
    for job, waves in zip(jobs, got, strict=True):
        for work, wave in zip(job, waves, strict=True):
            [alone] = sample([work])
            assert len(wave) > 0
            np.testing.assert_array_equal(wave, alone)
