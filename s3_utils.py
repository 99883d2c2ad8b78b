"""S3 access for voices and outputs: one configured boto3 client and small helpers.

Credentials come from ``BUCKET_ACCESS_KEY_ID``/``BUCKET_SECRET_ACCESS_KEY`` when set, else from
boto3's normal AWS credential chain. Retries and timeouts are bounded so a dead endpoint fails a
job in seconds instead of hanging the worker.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from storage import BucketSettings

CONNECT_TIMEOUT_S = float(os.environ.get("S3_CONNECT_TIMEOUT_S", "5"))
READ_TIMEOUT_S = float(os.environ.get("S3_READ_TIMEOUT_S", "30"))
MAX_ATTEMPTS = int(os.environ.get("S3_MAX_ATTEMPTS", "4"))
PRESIGN_EXPIRES_S = int(os.environ.get("S3_PRESIGN_EXPIRES_S", "86400"))


def make_client(settings: BucketSettings) -> BaseClient:
    """A boto3 S3 client for ``settings`` with bounded retries (standard mode) and timeouts."""
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
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


def download_file(client: BaseClient, bucket: str, key: str, path: Path) -> Path:
    """One GET streamed to ``path`` (``client.download_file`` adds a HEAD and a thread pool)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with path.open("wb") as out:
            shutil.copyfileobj(body, out, 1024 * 1024)
    finally:
        body.close()
    return path


def read_text(client: BaseClient, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return body.read().decode("utf-8")
    finally:
        body.close()


def upload_file(client: BaseClient, bucket: str, key: str, path: Path, content_type: str) -> None:
    client.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type})


def put_bytes(client: BaseClient, bucket: str, key: str, data: bytes, content_type: str) -> None:
    """One PUT from memory: for a job's output, no temp file and no transfer manager with its
    thread pool, which ``upload_file`` sets up on every call (timed in BENCHMARKS.md)."""
    client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def presigned_url(client: BaseClient, bucket: str, key: str, expires_s: int = PRESIGN_EXPIRES_S) -> str:
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )
