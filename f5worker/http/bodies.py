"""Request bodies, read with a size cap, and the API key check."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from f5worker.contract import MAX_UPLOAD_BYTES
from f5worker.formats import base64_length
from f5worker.http.errors import ApiError

# The largest body: a voice upload as JSON, its clip in base64, plus its other fields.
MAX_BODY_BYTES = base64_length(MAX_UPLOAD_BYTES) + 64 * 1024
UPLOAD_FILE_FIELDS = ("audio_sample", "file")  # OpenAI's name for the clip, and the usual one
UPLOAD_FLAGS = {"true": True, "false": False}


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is over the limit of {limit} bytes", code="request_too_large")


async def body_bytes(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large("the body", MAX_BODY_BYTES)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise too_large("the body", MAX_BODY_BYTES)
    return bytes(data)


async def json_object(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(await body_bytes(request))
    except ValueError:
        raise ApiError(400, "the body is not JSON: send Content-Type: application/json and a JSON object",
                       code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(value).__name__}", code="invalid_json")
    return value


async def upload_fields(request: Request) -> dict[str, Any]:
    """A voice upload as the fields of an ``upload_voice`` job: JSON (those fields), or a multipart form
    with the clip as ``audio_sample`` (OpenAI's name) or ``file`` and ``name``, ``transcript``,
    ``overwrite``; OpenAI's ``consent`` and ``type`` are accepted and have no effect here."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await json_object(request)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise ApiError(411, "a multipart upload needs a Content-Length", code="length_required")
    if int(declared) > MAX_BODY_BYTES:
        raise too_large("the body", MAX_BODY_BYTES)
    fields: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
        for key, value in form.multi_items():
            if key in ("consent", "type"):
                continue
            if isinstance(value, UploadFile):
                if key not in UPLOAD_FILE_FIELDS:
                    raise ApiError(400, f"the clip goes in the form field {' or '.join(UPLOAD_FILE_FIELDS)}",
                                   param=key, code="invalid_value")
                data = await value.read(MAX_UPLOAD_BYTES + 1)
                if len(data) > MAX_UPLOAD_BYTES:
                    raise too_large("the clip", MAX_UPLOAD_BYTES)
                fields["audio_base64"] = base64.b64encode(data).decode("ascii")
            else:
                fields[key] = UPLOAD_FLAGS.get(value, value) if key == "overwrite" else value
    return fields


def check_api_key(request: Request, key: str | None) -> None:
    """With ``HTTP_API_KEY`` set, the request must carry ``Authorization: Bearer <key>``."""
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <HTTP_API_KEY>",
                       code="invalid_api_key")
