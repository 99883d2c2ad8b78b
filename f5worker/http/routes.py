"""The other API routes: models, voices (list, upload, delete) and the native job route."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from f5worker.contract import InputError, ListVoicesRequest, parse_delete_voice, parse_upload_voice
from f5worker.http.bodies import json_object, upload_fields
from f5worker.http.errors import ApiError, failure_error, input_error
from f5worker.http.jobs import Done, JobStream
from f5worker.http.speech import ReadyWorker, new_job_id
from f5worker.pipeline import Failure, Worker

router = APIRouter()
JOB_FIELDS = {"id", "input"}  # of RunPod's /run body, what a job is made of


async def in_thread(request: Request, worker: Worker, job_input: Any) -> dict[str, Any]:
    """The job's result, or its failure raised as the OpenAI-shaped error."""
    loop = asyncio.get_running_loop()
    outcome = await loop.run_in_executor(request.app.state.executor, worker.execute, job_input, new_job_id())
    if isinstance(outcome, Failure):
        raise failure_error(outcome)
    return outcome


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "f5-tts"}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(request.app.state.settings.model.name)]}


@router.get("/v1/models/{model_id}")
async def model(request: Request, model_id: str) -> dict[str, Any]:
    name = request.app.state.settings.model.name
    if model_id != name:
        raise ApiError(404, f"model {model_id!r} not found: this worker serves {name!r}", code="model_not_found",
                       param="model")
    return model_card(name)


@router.get("/v1/audio/models")
async def audio_models(request: Request) -> dict[str, Any]:
    """The list Open WebUI asks a custom TTS endpoint for."""
    return {"models": [{"id": request.app.state.settings.model.name}]}


@router.get("/v1/audio/voices")
async def voices(request: Request, worker: ReadyWorker) -> dict[str, Any]:
    """``{"voices": [{"id", "name", ...}]}``: Open WebUI's shape, each entry a ``list_voices`` one plus ``id``."""
    listed = await in_thread(request, worker, ListVoicesRequest())
    return {"voices": [{"id": voice["name"], **voice} for voice in listed["voices"]]}


@router.post("/v1/audio/voices")
async def upload_voice(request: Request, worker: ReadyWorker) -> dict[str, Any]:
    """OpenAI's voice object (``id`` is the name) with the ``upload_voice`` result's fields."""
    try:
        upload = parse_upload_voice(await upload_fields(request))
    except InputError as err:
        raise input_error(err) from None
    stored = await in_thread(request, worker, upload)
    return {"id": upload.name, "object": "audio.voice", "type": "audio_sample", "created_at": int(time.time()),
            **stored}


@router.delete("/v1/audio/voices/{name}")
async def delete_voice(request: Request, name: str, worker: ReadyWorker) -> dict[str, Any]:
    try:
        deletion = parse_delete_voice({"name": name})
    except InputError as err:
        raise input_error(err) from None
    deleted = await in_thread(request, worker, deletion)
    return {"id": name, "object": "audio.voice.deleted", "deleted": True, "keys": deleted["deleted"]}


@router.post("/v1/job")
async def job(request: Request, worker: ReadyWorker) -> Response:
    """A queue job's body (``{"input": {...}}``, ``id`` optional), answered with the result the queue gives,
    ``{"error": ...}`` with a fitting status on failure. A ``"stream": true`` job answers NDJSON: its
    stream items, one a line, then the result."""
    body = await json_object(request)
    if unknown := sorted(set(body) - JOB_FIELDS):
        raise ApiError(400, f"unknown field {unknown[0]!r}: a job is {{\"input\": {{...}}}}, with an optional id",
                       code="invalid_value", param=unknown[0])
    job_input, job_id = body.get("input"), str(body.get("id") or new_job_id())
    stream = JobStream(request.app.state.executor)
    wants_stream = isinstance(job_input, dict) and job_input.get("stream") is True
    stream.start(lambda: worker.execute(job_input, job_id, emit=stream.put if wants_stream else None))
    first = await stream.first()
    if isinstance(first, Done):
        return job_result(first)
    return StreamingResponse(ndjson(stream), media_type="application/x-ndjson")


def job_result(done: Done) -> JSONResponse:
    if isinstance(done.outcome, Failure):
        error = failure_error(done.outcome)
        return JSONResponse({"error": done.outcome.message}, error.status, error.headers)
    return JSONResponse(done.outcome)


async def ndjson(stream: JobStream) -> AsyncIterator[bytes]:
    try:
        async for item in stream.items():
            if isinstance(item, Done):
                item = {"error": item.outcome.message} if isinstance(item.outcome, Failure) else item.outcome
            yield json.dumps(item).encode() + b"\n"
    finally:
        stream.cancel()
