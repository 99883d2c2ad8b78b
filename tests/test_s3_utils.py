"""S3 helpers against a real HTTP endpoint (moto server)."""

from __future__ import annotations

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

import s3_utils
from f5worker.s3 import S3Problem, classify_error
from f5worker.storage import BucketSettings


def test_list_exists_upload_download_presign(s3, bucket_env, tmp_path):
    bucket = bucket_env["BUCKET_NAME"]
    keys = {o["Key"] for o in s3_utils.list_s3_objects(s3, bucket, "voices/")}
    assert {"voices/alice.wav", "voices/alice.txt", "voices/bob.flac"} <= keys
    assert s3_utils.check_s3_object_exists(s3, bucket, "voices/alice.wav")
    assert not s3_utils.check_s3_object_exists(s3, bucket, "voices/nobody.wav")

    src = tmp_path / "a.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    s3_utils.upload_file(s3, bucket, "outputs/a.bin", src, "application/octet-stream")
    dst = s3_utils.download_file(s3, bucket, "outputs/a.bin", tmp_path / "b.bin")
    assert dst.read_bytes() == src.read_bytes()
    assert requests.get(s3_utils.presigned_url(s3, bucket, "outputs/a.bin"), timeout=10).content == src.read_bytes()
    assert s3_utils.read_text(s3, bucket, "voices/alice.txt").startswith("Some call me nature")


def test_single_put_upload_and_single_get_download(s3, bucket_env, tmp_path):
    bucket = bucket_env["BUCKET_NAME"]
    calls: list[str] = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    data = bytes(range(256)) * 5000
    src = tmp_path / "out.wav"
    src.write_bytes(data)
    s3_utils.upload_file(s3, bucket, "outputs/c.wav", src, "audio/wav")
    dst = s3_utils.download_file(s3, bucket, "outputs/c.wav", tmp_path / "c.wav")
    assert dst.read_bytes() == data
    assert calls == ["PutObject", "GetObject"]
    assert s3.head_object(Bucket=bucket, Key="outputs/c.wav")["ContentType"] == "audio/wav"


def test_listing_paginates(s3, bucket_env):
    bucket = bucket_env["BUCKET_NAME"]
    for i in range(1005):
        s3.put_object(Bucket=bucket, Key=f"many/{i:04d}", Body=b"")
    assert len(s3_utils.list_s3_objects(s3, bucket, "many/")) == 1005


def test_wrong_bucket_is_not_reported_as_missing_object(s3):
    with pytest.raises(ClientError):
        s3_utils.check_s3_object_exists(s3, "no-such-bucket-here", "x")


def test_a_missing_bucket_met_by_a_head_request_is_named(s3):
    """HEAD answers carry no error body: a missing bucket is a bare 404 from HeadBucket."""
    with pytest.raises(ClientError) as caught:
        s3_utils.check_s3_object_exists(s3, "no-such-bucket-here", "x")
    assert s3_utils.describe_error(caught.value, "no-such-bucket-here") == (
        "S3 error: bucket 'no-such-bucket-here' does not exist (check BUCKET_NAME and BUCKET_ENDPOINT_URL)")


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "..."}}, operation)


@pytest.mark.parametrize(("err", "problem"), [
    (client_error("NoSuchBucket", "GetObject"), S3Problem.NO_BUCKET),
    (client_error("404", "HeadBucket"), S3Problem.NO_BUCKET),
    (client_error("404", "HeadObject"), S3Problem.OTHER),  # a missing key: the bucket is there
    (client_error("NoSuchKey", "GetObject"), S3Problem.OTHER),
    (client_error("InvalidAccessKeyId", "HeadBucket"), S3Problem.CREDENTIALS_REJECTED),
    (client_error("SignatureDoesNotMatch", "PutObject"), S3Problem.CREDENTIALS_REJECTED),
    (client_error("ExpiredToken", "GetObject"), S3Problem.CREDENTIALS_REJECTED),
    (client_error("AccessDenied", "GetObject"), S3Problem.ACCESS_DENIED),
    (client_error("403", "HeadObject"), S3Problem.ACCESS_DENIED),
    (client_error("SlowDown", "PutObject"), S3Problem.OTHER),
    (NoCredentialsError(), S3Problem.NO_CREDENTIALS),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), S3Problem.UNREACHABLE),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), S3Problem.UNREACHABLE),
])
def test_one_reading_of_s3_errors_for_jobs_and_the_validator(err, problem):
    assert classify_error(err) is problem


def test_settings_from_env_and_no_secret_in_repr():
    settings = BucketSettings.from_env({"BUCKET_NAME": "b", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t",
                                        "VOICES_PREFIX": "/v", "OUTPUTS_PREFIX": "out/x/"})
    assert settings.configured and settings.voices_prefix == "v/" and settings.outputs_prefix == "out/x/"
    assert "s3cr3t" not in repr(settings)
    assert not BucketSettings.from_env({}).configured
    assert BucketSettings.from_env({}).voices_prefix == "voices/"


def test_download_is_capped_whatever_the_listing_said(s3, bucket_env, tmp_path):
    bucket = bucket_env["BUCKET_NAME"]
    s3.put_object(Bucket=bucket, Key="grown.bin", Body=b"x" * 3000)
    with pytest.raises(s3_utils.ObjectTooLarge, match="over the 1000-byte limit"):
        s3_utils.download_file(s3, bucket, "grown.bin", tmp_path / "grown.bin", max_bytes=1000)
    assert (tmp_path / "grown.bin").stat().st_size <= 1000  # stopped at the cap, not read to the end
    assert s3_utils.download_file(s3, bucket, "grown.bin", tmp_path / "ok.bin", max_bytes=3000).stat().st_size == 3000


def test_upload_is_one_put_without_multipart(s3, bucket_env, tmp_path):
    bucket = bucket_env["BUCKET_NAME"]
    src = tmp_path / "big.bin"
    src.write_bytes(b"\x01" * (9 * 1024 * 1024))  # over boto3's 8 MB multipart threshold
    s3_utils.upload_file(s3, bucket, "outputs/big.bin", src, "application/octet-stream")
    assert s3.head_object(Bucket=bucket, Key="outputs/big.bin")["ContentLength"] == src.stat().st_size
    assert "-" not in s3.head_object(Bucket=bucket, Key="outputs/big.bin")["ETag"]  # multipart ETags end in -N
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_conditional_reads_and_writes(s3, bucket_env):
    """If-Match on GET, create-only and compare-and-swap PUTs, If-Match on DELETE: a failed
    condition is ObjectChanged and writes nothing."""
    from f5worker import s3 as s3_lib

    bucket = bucket_env["BUCKET_NAME"]
    first = s3_lib.put_text(s3, bucket, "k.txt", "one", create_only=True, metadata={"voice-pair": "p1"})
    with pytest.raises(s3_lib.ObjectChanged):
        s3_lib.put_text(s3, bucket, "k.txt", "two", create_only=True)
    response = s3_lib.get_object(s3, bucket, "k.txt", if_match=first)
    assert s3_lib.read_body(response) == b"one" and response["Metadata"] == {"voice-pair": "p1"}
    second = s3_lib.put_text(s3, bucket, "k.txt", "two", if_match=first)
    for stale in (lambda: s3_lib.put_text(s3, bucket, "k.txt", "three", if_match=first),
                  lambda: s3_lib.get_object(s3, bucket, "k.txt", if_match=first),
                  lambda: s3_lib.delete_object(s3, bucket, "k.txt", if_match=first),
                  lambda: s3_lib.get_object(s3, bucket, "gone.txt")):
        with pytest.raises(s3_lib.ObjectChanged):
            stale()
    assert s3_utils.read_text(s3, bucket, "k.txt") == "two"
    assert s3_lib.read_body(s3_lib.get_object(s3, bucket, "k.txt", first_bytes=2)) == b"tw"
    s3_lib.delete_object(s3, bucket, "k.txt", if_match=second)
    assert not s3_utils.check_s3_object_exists(s3, bucket, "k.txt")
