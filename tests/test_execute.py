"""Worker.execute: the job pipeline for a caller that needs to know why a job failed (the HTTP
server), and a sink that gets the audio as it is made."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from f5worker import audio
from f5worker.contract import InputError, parse_request
from f5worker.delivery import JobCancelled
from f5worker.engine.scheduler import QueueFull
from f5worker.pipeline import Failure
from f5worker.voices import VoiceNotFound

FAST = {"nfe_step": 2, "seed": 5}
LONG = "One sentence here. " * 12  # several chunks with the default voice


class Collect:
    """A sink that keeps every part; ``gone_after``: raise JobCancelled once that many were sent."""

    def __init__(self, gone_after: int | None = None):
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.gone_after = gone_after

    def send(self, wave: np.ndarray) -> None:
        if self.gone_after is not None and self.count >= self.gone_after:
            raise JobCancelled("the client went away")
        self.parts.append(wave)
        self.count += 1


@pytest.mark.parametrize(("job_input", "cause", "field"), [
    ({"text": "Hi.", "speed": 9}, InputError, "speed"),
    ({"text": "Hi.", "voice": "nobody"}, VoiceNotFound, None),
])
def test_a_failure_says_what_was_raised_and_run_gives_the_same_message(make_worker, job_input, cause, field):
    worker = make_worker({})
    failure = worker.execute({**job_input, **FAST}, "x")
    assert isinstance(failure, Failure) and failure.cause is cause and failure.field == field and not failure.retry
    assert worker.run({"id": "x", "input": {**job_input, **FAST}}) == {"error": failure.message}


def test_a_full_queue_is_a_failure_to_retry_unless_the_job_alone_is_over_the_limit(make_worker):
    worker = make_worker({})
    worker.model.scheduler.max_queue = 1
    try:
        failure = worker.execute({"text": LONG, **FAST}, "big")
    finally:
        worker.model.scheduler.max_queue = 256
    assert failure.cause is QueueFull and not failure.retry and "over the queue limit of 1" in failure.message


def test_a_sink_gets_each_chunk_as_it_is_made_and_they_are_the_jobs_audio(make_worker):
    worker = make_worker({})
    sink = Collect()
    result = worker.execute(parse_request({"text": LONG, "output_format": "mp3", **FAST}), "s", sink=sink)
    assert result["chunks"] == len(sink.parts) > 1 and "audio_base64" not in result
    whole = worker.run({"id": "w", "input": {"text": LONG, "output_format": "pcm", **FAST}})
    streamed = io.BytesIO()
    audio.write(np.concatenate(sink.parts), 24000, "pcm", streamed)
    assert streamed.getvalue() == base64.b64decode(whole["audio_base64"])
    assert result["duration_s"] == whole["duration_s"]


def test_remove_silence_sends_the_whole_processed_audio_once_at_the_end(make_worker):
    worker = make_worker({})
    sink = Collect()
    result = worker.execute(parse_request({"text": LONG, "remove_silence": True, **FAST}), "r", sink=sink)
    assert len(sink.parts) == 1 and result["duration_s"] == round(len(sink.parts[0]) / 24000, 3)


def test_a_sink_whose_client_went_away_stops_the_job_and_its_files_go(make_worker, scratch, caplog):
    worker = make_worker({})
    sink = Collect(gone_after=1)
    failure = worker.execute(parse_request({"text": LONG, **FAST}), "gone", sink=sink)
    assert failure.cause is JobCancelled and len(sink.parts) == 1
    assert "the client went away after chunk 2 of" in failure.message
    assert "the chunks not started were dropped" in failure.message
    assert worker.model.scheduler.waiting == 0
    assert list(scratch.iterdir()) == []

