"""``POST /v1/audio/speech``: OpenAI's body (plus native synthesis fields), the audio streamed as it is made.

The status waits for the first audio, so whatever fails before it (bad input, unknown voice, a
full queue) is an ordinary error response. After it, the bytes of each chunk leave as soon as the
chunk is encoded (chunked transfer); a failure then cuts the response short (an audio stream) or
sends an ``error`` event (SSE).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from f5worker.contract import InputError, SynthesisRequest, parse_request, pop_stream_format
from f5worker.formats import OUTPUT_FORMATS, SAMPLE_RATE
from f5worker.http.bodies import json_object
from f5worker.http.errors import failure_error, input_error
from f5worker.http.jobs import ByteSink, Done, JobStream
from f5worker.pipeline import Failure, Worker

router = APIRouter()


class StreamFailed(RuntimeError):
    """Raised into an audio response already under way: the server cuts it short, so the client sees an
    incomplete body instead of a file that looks whole."""


def new_job_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def check_speech(request: SynthesisRequest) -> None:
    """Refuse what the speech route cannot answer with audio bytes (the native route ``/v1/job`` can)."""
    if request.several:
        raise InputError("texts", "the speech route speaks one input; send texts as a job to /v1/job")
    if request.stream:
        raise InputError("stream", "the speech route always streams; stream is a job's field (/v1/job)")
    if request.return_base64:
        raise InputError("return_base64", "the speech route returns the audio itself; return_base64 is a job's "
                                          "field (/v1/job)")
    if request.needs_recognition:
        field = "return_word_timings" if request.return_word_timings else "subtitles"
        raise InputError(field, "comes back in a job's JSON result: send the job to /v1/job")


def ready_worker(request: Request) -> Worker:
    return request.app.state.server.ready_worker()


ReadyWorker = Annotated[Worker, Depends(ready_worker)]  # the worker, or the 503 that says why there is none


@router.post("/v1/audio/speech")
async def speech(request: Request, worker: ReadyWorker) -> Response:
    body = await json_object(request)
    try:
        stream_format = pop_stream_format(body)
        synthesis = parse_request(body, worker.limits)
        check_speech(synthesis)
    except InputError as err:
        raise input_error(err) from None
    job = JobStream(request.app.state.executor)
    sink = ByteSink(synthesis.output_format, job)
    job_id = new_job_id()

    def work() -> dict[str, Any] | Failure:
        outcome = worker.execute(synthesis, job_id, sink=sink)
        if not isinstance(outcome, Failure):
            sink.finish()
        return outcome

    job.start(work)
    try:
        first = await job.first()
    except BaseException:  # the request itself was cancelled (server shutting down)
        job.cancel()
        raise
    if isinstance(first, Done) and isinstance(first.outcome, Failure):
        raise failure_error(first.outcome)
    headers = {"X-Job-Id": job_id, "X-Seed": str(synthesis.params.seed), "X-Sample-Rate": str(SAMPLE_RATE)}
    if stream_format == "sse":
        return StreamingResponse(sse_events(job, len(synthesis.texts[0])), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    return StreamingResponse(audio_bytes(job), media_type=OUTPUT_FORMATS[synthesis.output_format].content_type,
                             headers=headers)


async def audio_bytes(job: JobStream) -> AsyncIterator[bytes]:
    try:
        async for item in job.items():
            if isinstance(item, Done):
                if isinstance(item.outcome, Failure):
                    raise StreamFailed(item.outcome.message)
            elif item:
                yield item
    finally:  # the client went away (the response was cancelled), or the job is done: a no-op then
        job.cancel()


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def delta(data: bytes) -> bytes:
    return sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})


async def sse_events(job: JobStream, input_chars: int) -> AsyncIterator[bytes]:
    """OpenAI's speech events: ``speech.audio.delta`` with base64 audio (consecutive pieces of one file in
    the response format), then ``speech.audio.done``, whose ``usage`` counts the input's characters and
    the audio's chunks (this model has no tokens); or an ``error`` event with OpenAI's error object."""
    try:
        async for item in job.items():
            if not isinstance(item, Done):
                if item:
                    yield delta(item)
            elif isinstance(item.outcome, Failure):
                yield sse({"type": "error", **failure_error(item.outcome).body()})
            else:
                chunks = item.outcome["chunks"]
                yield sse({"type": "speech.audio.done", "usage": {"input_tokens": input_chars, "output_tokens": chunks,
                                                                  "total_tokens": input_chars + chunks}})
    finally:
        job.cancel()

