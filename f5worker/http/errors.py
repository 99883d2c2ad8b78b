"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a fitting status."""

from __future__ import annotations

from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError
from fastapi.responses import JSONResponse

from f5worker.audio import AudioError
from f5worker.contract import InputError
from f5worker.engine.scheduler import QueueFull, SchedulerClosed
from f5worker.pipeline import Failure
from f5worker.voices import VoiceError, VoiceNotFound

RETRY_AFTER_S = 1  # a full queue drains chunk by chunk: try again soon
LOADING_RETRY_AFTER_S = 5


@dataclass
class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, self.headers)


def input_error(err: InputError) -> ApiError:
    return ApiError(400, str(err), code="invalid_value", param=err.field)


def failure_error(failure: Failure) -> ApiError:
    """The status and shape of a job's failure (``pipeline.Failure``)."""
    cause, message = failure.cause, failure.message
    if issubclass(cause, InputError):
        return ApiError(400, message, code="invalid_value", param=failure.field)
    if issubclass(cause, VoiceNotFound):
        return ApiError(404, message, code="voice_not_found", param="voice")
    if issubclass(cause, VoiceError | AudioError):
        return ApiError(400, message, code="invalid_voice")
    if issubclass(cause, QueueFull):
        if failure.retry:
            return ApiError(429, message, "rate_limit_error", "queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        return ApiError(413, message, code="too_many_chunks", param="input")
    if issubclass(cause, ClientError | BotoCoreError):
        return ApiError(502, message, "server_error", "storage_error")
    if issubclass(cause, SchedulerClosed):
        return ApiError(503, message, "server_error", "shutting_down")
    if failure.retry:  # out of memory, scratch disk full
        return ApiError(503, message, "server_error", "overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
    return ApiError(500, message, "server_error", "internal_error")
