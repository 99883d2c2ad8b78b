"""The HTTP mode's parts in-process: a job's stream to the event loop, error statuses, the API key."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import EndpointConnectionError
from starlette.requests import Request

from f5worker.audio import AudioError
from f5worker.contract import InputError
from f5worker.delivery import JobCancelled
from f5worker.engine.scheduler import QueueFull, SchedulerClosed
from f5worker.http.bodies import check_api_key
from f5worker.http.errors import ApiError, failure_error
from f5worker.http.jobs import Done, JobStream
from f5worker.pipeline import Failure
from f5worker.voices import VoiceError, VoiceNotFound


def collect(work, cancel_after_first: bool = False) -> tuple[object, list]:
    """Run ``work(stream)`` as a job; what first() returned and everything items() yielded."""

    async def main() -> tuple[object, list]:
        with ThreadPoolExecutor(1) as pool:
            stream = JobStream(pool)
            stream.start(lambda: work(stream))
            first = await stream.first()
            if cancel_after_first:
                stream.cancel()
            return first, [item async for item in stream.items()]

    return asyncio.run(main())


def test_first_skips_empty_output_and_items_start_with_it_again():
    def work(stream: JobStream) -> dict:
        for data in (b"", b"", b"one", b"", b"two"):
            stream.put(data)
        return {"chunks": 2}

    first, items = collect(work)
    assert first == b"one" and items == [b"one", b"", b"two", Done({"chunks": 2})]


def test_a_job_without_output_gives_its_done_first_and_only():
    first, items = collect(lambda stream: Failure("busy", QueueFull, retry=True))
    assert first == Done(Failure("busy", QueueFull, retry=True)) and items == [first]


def test_once_cancelled_the_jobs_next_put_raises_job_cancelled():
    def work(stream: JobStream) -> dict:
        stream.put(b"one")
        while True:  # the response goes away after the first piece; the job notices at its next one
            try:
                stream.put(b"more")
            except JobCancelled as err:
                return Failure(str(err), JobCancelled)

    first, items = collect(work, cancel_after_first=True)
    assert first == b"one" and items[-1] == Done(Failure("the client went away", JobCancelled))


@pytest.mark.parametrize(("failure", "status", "code", "param"), [
    (Failure("input.speed: ...", InputError, "speed"), 400, "invalid_value", "speed"),
    (Failure("voice 'x' not found", VoiceNotFound), 404, "voice_not_found", "voice"),
    (Failure("voice 'x': not audio", VoiceError), 400, "invalid_voice", None),
    (Failure("too long", AudioError), 400, "invalid_voice", None),
    (Failure("busy: ...; retry later", QueueFull, retry=True), 429, "queue_full", None),
    (Failure("busy: this job alone ...", QueueFull), 413, "too_many_chunks", "input"),
    (Failure("S3 error", EndpointConnectionError), 502, "storage_error", None),
    (Failure("closed", SchedulerClosed), 503, "shutting_down", None),
    (Failure("out of memory", RuntimeError, retry=True), 503, "overloaded", None),
    (Failure("internal error: KeyError", KeyError), 500, "internal_error", None),
])
def test_a_failure_gets_its_status_and_openais_shape(failure, status, code, param):
    error = failure_error(failure)
    assert (error.status, error.code, error.param) == (status, code, param)
    assert error.body() == {"error": {"message": failure.message, "type": error.type, "param": param, "code": code}}
    assert ("Retry-After" in error.headers) == (status in (429, 503) and failure.retry)


def request_with(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", "Basic sk-1", "sk-1", "Bearer sk-12"])
def test_a_missing_or_wrong_key_is_401(authorization):
    with pytest.raises(ApiError) as caught:
        check_api_key(request_with(authorization), "sk-1")
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("authorization", ["Bearer sk-1", "bearer sk-1", "Bearer  sk-1 "])
def test_the_key_as_a_bearer_token_passes_and_no_key_means_open(authorization):
    check_api_key(request_with(authorization), "sk-1")
    check_api_key(request_with(None), None)
