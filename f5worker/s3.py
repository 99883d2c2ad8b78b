"""S3 access for voices and outputs: one configured boto3 client and small helpers.

Credentials come from ``BUCKET_ACCESS_KEY_ID``/``BUCKET_SECRET_ACCESS_KEY`` when set, else from
boto3's normal AWS credential chain. Retries and timeouts are bounded so a dead endpoint fails a
job in seconds instead of hanging the worker, and no failure leaves half an object behind:
outputs go up in one PUT (S3 stores all of it or nothing), voices come down with a size cap.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
from botocore.exceptions import ConnectionError as S3ConnectionError

from f5worker.storage import BucketSettings, S3Limits

DEFAULT_LIMITS = S3Limits()


def make_client(settings: BucketSettings, limits: S3Limits = DEFAULT_LIMITS) -> BaseClient:
    """A boto3 S3 client for ``settings`` with bounded retries (standard mode) and timeouts."""
    config = Config(
        connect_timeout=limits.connect_timeout_s,
        read_timeout=limits.read_timeout_s,
        # total_max_attempts counts the first try; botocore's max_attempts would count retries only
        retries={"total_max_attempts": limits.max_attempts, "mode": "standard"},
        signature_version="s3v4",
        # Custom endpoints (R2, MinIO, RunPod's S3 API, moto) expect path-style addressing.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region or ("us-east-1" if settings.endpoint_url else None),
        config=config,
    )


def list_s3_objects(client: BaseClient, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` as ``{"Key", "Size", "ETag", "LastModified"}`` dicts."""
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


def check_s3_object_exists(client: BaseClient, bucket: str, key: str) -> bool:
    """True when ``key`` exists, False when it does not. A missing bucket, bad credentials or a
    dead endpoint raise: a HEAD's 404 cannot tell a missing key from a missing bucket, so a miss
    is confirmed with ``head_bucket``."""
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
        client.head_bucket(Bucket=bucket)
        return False
    return True


class ObjectTooLarge(ValueError):
    """A download grew past its cap (the object changed after it was listed)."""


class ObjectChanged(ClientError):
    """The object is not the version a request named: a conditional read or write failed (412, or
    409 for a concurrent conditional write), or it is gone (404). The original error's response."""


CHANGED_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")


@contextmanager
def _changes_raised() -> Iterator[None]:
    try:
        yield
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in CHANGED_CODES:
            raise ObjectChanged(err.response, err.operation_name) from err
        raise


def get_object(client: BaseClient, bucket: str, key: str, if_match: str | None = None,
               first_bytes: int | None = None) -> dict[str, Any]:
    """The GetObject response (``Body``, ``ETag``, ``Metadata``...). ``if_match``: only that
    version (an ETag); ``first_bytes``: only the start of the body."""
    extra: dict[str, Any] = {}
    if if_match is not None:
        extra["IfMatch"] = if_match
    if first_bytes is not None:
        extra["Range"] = f"bytes=0-{first_bytes - 1}"
    with _changes_raised():
        return client.get_object(Bucket=bucket, Key=key, **extra)


def save_body(response: dict[str, Any], path: Path, max_bytes: int | None = None, source: str = "the object") -> Path:
    """A GetObject response's body into ``path``, streamed. With ``max_bytes``, the body is cut
    off and :class:`ObjectTooLarge` (naming ``source``) raised once it passes the cap, whatever
    size the listing showed (the object may have been replaced since)."""
    body = response["Body"]
    written = 0
    try:
        with path.open("wb") as out:
            for chunk in body.iter_chunks(1024 * 1024):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise ObjectTooLarge(f"{source} is over the {max_bytes}-byte limit")
                out.write(chunk)
    finally:
        body.close()
    return path


class RangedReader:
    """One listed version of an object as a read-only, seekable file (``read``, ``seek``, ``tell``),
    fetched ``block`` bytes at a time by ranged GETs with If-Match on its ETag, at most ``max_blocks``
    of them: enough for libsndfile to read an audio header without downloading the file. A read
    past that budget, or after a failed GET, returns what it has and sets ``incomplete``."""

    def __init__(self, client: BaseClient, bucket: str, listed: dict[str, Any], block: int, max_blocks: int):
        self.client, self.bucket, self.listed = client, bucket, listed
        self.size, self.block, self.max_blocks = listed["Size"], block, max_blocks
        self.position = 0
        self.incomplete = False
        self._blocks: dict[int, bytes] = {}

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = max(0, (0, self.position, self.size)[whence] + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size < 0 else min(self.size, self.position + size)
        data = b"".join(self._block(i) for i in range(self.position // self.block, -(-end // self.block)))
        data = data[self.position % self.block:][: max(0, end - self.position)]
        self.position += len(data)
        return data

    def _block(self, index: int) -> bytes:
        if index not in self._blocks:
            if len(self._blocks) >= self.max_blocks or self.incomplete:
                self.incomplete = True
                return b""
            first = index * self.block
            try:
                with _changes_raised():
                    response = self.client.get_object(Bucket=self.bucket, Key=self.listed["Key"],
                                                      IfMatch=self.listed["ETag"],
                                                      Range=f"bytes={first}-{min(first + self.block, self.size) - 1}")
                self._blocks[index] = read_body(response)
            except (ClientError, BotoCoreError):  # called back from libsndfile: an exception would be lost there
                self.incomplete = True
                return b""
        return self._blocks[index]


def read_body(response: dict[str, Any]) -> bytes:
    body = response["Body"]
    try:
        return body.read()
    finally:
        body.close()


def download_file(client: BaseClient, bucket: str, key: str, path: Path, max_bytes: int | None = None) -> Path:
    """``key`` into ``path`` in one GET, cut off at ``max_bytes`` (see :func:`save_body`)."""
    return save_body(get_object(client, bucket, key), path, max_bytes, f"s3://{bucket}/{key}")


def read_text(client: BaseClient, bucket: str, key: str) -> str:
    return read_body(get_object(client, bucket, key)).decode("utf-8")


def put_object(client: BaseClient, bucket: str, key: str, body: bytes | BinaryIO, content_type: str,
               metadata: dict[str, str] | None = None, if_match: str | None = None,
               create_only: bool = False) -> str:
    """One PUT; the new object's ETag. ``create_only``: only if ``key`` does not exist (If-None-Match:
    ``*``); ``if_match``: only if ``key`` is still that version (compare-and-swap). Either failing
    raises :class:`ObjectChanged` and writes nothing; S3, R2 and MinIO decide it atomically."""
    extra: dict[str, Any] = {"Metadata": metadata or {}}
    if if_match is not None:
        extra["IfMatch"] = if_match
    if create_only:
        extra["IfNoneMatch"] = "*"
    with _changes_raised():
        return client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra)["ETag"]


def put_text(client: BaseClient, bucket: str, key: str, text: str, content_type: str = "text/plain; charset=utf-8",
             **conditions: Any) -> str:
    """Store ``text`` (UTF-8) at ``key``; the new object's ETag. ``conditions``: as :func:`put_object`."""
    return put_object(client, bucket, key, text.encode("utf-8"), content_type, **conditions)


def upload_file(client: BaseClient, bucket: str, key: str, path: Path, content_type: str, **conditions: Any) -> str:
    """One PUT, not a multipart upload: S3 makes the object visible only once the whole body has
    arrived, so a connection lost mid-upload leaves no partial object and no orphaned parts
    (a multipart upload whose abort also fails would). Outputs are far below the 5 GB PUT limit.
    ``conditions``: as :func:`put_object`. The new object's ETag."""
    with path.open("rb") as body:
        return put_object(client, bucket, key, body, content_type, **conditions)


def delete_objects(client: BaseClient, bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` (at most 1000, one request); a key that failed raises."""
    if not keys:
        return
    response = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    if response.get("Errors"):
        error = response["Errors"][0]
        raise ClientError({"Error": {"Code": error.get("Code"), "Message": error.get("Message")}}, "DeleteObjects")


def delete_object(client: BaseClient, bucket: str, key: str, if_match: str | None = None) -> None:
    """Delete ``key``; with ``if_match``, only that version (else :class:`ObjectChanged`)."""
    with _changes_raised():
        client.delete_object(Bucket=bucket, Key=key, **({"IfMatch": if_match} if if_match is not None else {}))


def presigned_url(client: BaseClient, bucket: str, key: str,
                  expires_s: int = DEFAULT_LIMITS.presign_expires_s) -> str:
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )


class S3Problem(enum.Enum):
    """What an S3 failure means, whichever call met it: one reading for job errors and the validator."""

    NO_CREDENTIALS = "no credentials"
    UNREACHABLE = "endpoint unreachable"
    NO_BUCKET = "bucket does not exist"
    CREDENTIALS_REJECTED = "credentials rejected"
    ACCESS_DENIED = "access denied"
    OTHER = "other"


CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"})
DENIED_CODES = frozenset({"AccessDenied", "403"})  # "403": a HEAD's answer, which has no body to name the code


def error_code(err: ClientError | BotoCoreError) -> str:
    """The S3 error code of a ``ClientError`` (``"403"``, ``"404"`` for a HEAD); ``""`` otherwise."""
    return err.response.get("Error", {}).get("Code", "") if isinstance(err, ClientError) else ""


def classify_error(err: ClientError | BotoCoreError) -> S3Problem:
    if isinstance(err, NoCredentialsError):
        return S3Problem.NO_CREDENTIALS
    if isinstance(err, (S3ConnectionError, HTTPClientError, IncompleteReadError)):
        return S3Problem.UNREACHABLE
    code = error_code(err)
    # HEAD bucket's 404 names the bucket; HEAD object's names the key
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and err.operation_name == "HeadBucket"):
        return S3Problem.NO_BUCKET
    if code in CREDENTIAL_CODES:
        return S3Problem.CREDENTIALS_REJECTED
    if code in DENIED_CODES:
        return S3Problem.ACCESS_DENIED
    return S3Problem.OTHER


def describe_error(err: ClientError | BotoCoreError, bucket: str | None) -> str:
    """What went wrong with S3, for the job's ``error``: the cause and what to check, never a
    credential (botocore's messages name operations, codes and URLs, not keys)."""
    problem = classify_error(err)
    if problem is S3Problem.NO_BUCKET:
        return f"S3 error: bucket {bucket!r} does not exist (check BUCKET_NAME and BUCKET_ENDPOINT_URL)"
    if problem in (S3Problem.CREDENTIALS_REJECTED, S3Problem.ACCESS_DENIED):
        return (f"S3 error: the bucket refused the credentials ({error_code(err)}); check BUCKET_ACCESS_KEY_ID, "
                f"BUCKET_SECRET_ACCESS_KEY and their permissions on {bucket!r}")
    if problem is S3Problem.NO_CREDENTIALS:
        return "S3 error: no credentials (BUCKET_ACCESS_KEY_ID/BUCKET_SECRET_ACCESS_KEY unset, none in the AWS chain)"
    if problem is S3Problem.UNREACHABLE:
        return f"S3 error: endpoint unreachable or connection lost ({type(err).__name__}: {err})"
    return f"S3 error: {err}" if isinstance(err, ClientError) else f"S3 error: {type(err).__name__}: {err}"
