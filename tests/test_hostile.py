"""Hostile input: voice names that try to leave the voices prefix never reach S3, output keys come
from the job id alone, any input dict gets a result or a string error, and the bucket secret
never shows up in a log line or a response."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from f5worker.contract import KNOWN_FIELDS
from tests.support.s3_servers import S3Proxy

FAST = {"nfe_step": 2, "seed": 5}
SENTINEL_KEY_ID = "AKIASENTINELKEYID777"
SENTINEL_SECRET = "sentinel-SECRET-ACCESS-KEY-must-never-appear-0123456789"

# ("alice.wav" is no longer here: a voice's file name now names exactly that object, issue 15)
HOSTILE_VOICES = [
    "../alice", "../../etc/passwd", "voices/../alice", "/etc/passwd", "/voices/alice", "alice/../../x",
    "%2e%2e%2falice", "..%2F..%2Falice", "%2F", "alice%00", "alice\x00.wav", "alice\n", " alice", "alice ",
    "../alice.wav", "alice.wav.wav", "alice.txt", "..", ".", "\\..\\alice", "s3://other-bucket/alice",
    "alice?versionId=1", "alice#x", "ａlice", "alice\u202e", "a" * 65, "a" * 100_000, "", "*", "alice/", "\ud800",
]


def send_raw(url: str, payload: dict) -> dict:
    """POST ``payload`` as JSON with lone surrogates escaped (``\\ud800``), as a hostile client can."""
    body = json.dumps(payload, ensure_ascii=True)
    response = requests.post(f"{url}/runsync", data=body, headers={"content-type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.process
def test_hostile_voices_never_reach_s3_and_no_secret_leaks(start_worker, bucket_env, s3, moto_endpoint):
    """One worker process, logging at DEBUG with sentinel credentials, behind a proxy that records
    every S3 request: hostile voice names are refused with zero requests; then real jobs run."""
    proxy = S3Proxy(moto_endpoint)
    worker = start_worker({**bucket_env, "BUCKET_ENDPOINT_URL": proxy.url, "BUCKET_ACCESS_KEY_ID": SENTINEL_KEY_ID,
                           "BUCKET_SECRET_ACCESS_KEY": SENTINEL_SECRET, "LOG_LEVEL": "DEBUG",
                           "RUNPOD_LOG_LEVEL": "DEBUG"})
    responses = []
    for voice in HOSTILE_VOICES:
        result = send_raw(worker.url, {"input": {"text": "Hello.", "voice": voice, **FAST}})
        responses.append(result)
        assert result["status"] == "FAILED" and result["error"].startswith("input.voice:"), (voice, result)
    assert proxy.requests == []  # not one S3 request for any of them
    for voice, result in zip(HOSTILE_VOICES, responses, strict=True):
        print(f"OBSERVED | voice {ascii(voice)[:40]} | {result['error'][:60]} | S3 requests: {len(proxy.requests)}")

    # Bytes that are not UTF-8 at all never reach the handler: the SDK's HTTP layer refuses them.
    invalid = requests.post(f"{worker.url}/runsync", data=b'{"input": {"text": "caf\xe9 \xff"}}',
                            headers={"content-type": "application/json"}, timeout=60)
    print(f"OBSERVED | body with invalid UTF-8 bytes | HTTP {invalid.status_code}: {invalid.text[:80]}")
    assert 400 <= invalid.status_code < 500, invalid.text

    good = worker.post("/runsync", {"input": {"text": "Hello.", "voice": "alice", **FAST}})
    assert good["status"] == "COMPLETED", good
    assert any(r.startswith(f"GET /{bucket_env['BUCKET_NAME']}/voices/alice.wav") for r in proxy.requests)
    assert good["output"]["audio_key"] == f"outputs/{good['id']}.wav"
    responses.append(good)
    responses.append(worker.post("/runsync", {"input": {"text": "Hello.", "voice": "ghost", **FAST}}))
    responses.append(worker.post("/runsync", {"input": {"text": "Hello.", "voice": "mute", **FAST}}))
    proxy.cut()  # and an S3 failure, whose botocore message is the likeliest place for a leak
    responses.append(worker.post("/runsync", {"input": {"text": "Hello.", "voice": "bob", **FAST}}))
    assert responses[-1]["status"] == "FAILED"
    proxy.close()
    worker.stop()

    log = worker.log()
    assert "DEBUG" in log and "botocore" in log  # the verbose loggers really were on
    everything = [log, *(json.dumps(r) for r in responses)]
    assert not [text for text in everything if SENTINEL_SECRET in text]
    # The access key id is an identifier, not a secret (S3 puts it in every signed request): it
    # appears where SigV4 requires it, in the presigned URL, and in no error.
    assert "X-Amz-Credential=" + SENTINEL_KEY_ID in good["output"]["audio_url"]
    assert not [r for r in responses if SENTINEL_KEY_ID in r.get("error", "")]


HOSTILE_JOB_IDS = ["../../etc/passwd", "a/b/c", "x\x00y", "%2e%2e%2fup", "..", "", "id" * 500, "\ud800", "é/ü"]


def test_output_keys_derive_only_from_the_job_id(make_worker, bucket_env, s3, scratch: Path):
    worker = make_worker(bucket_env)
    keys = set()
    for job_id in HOSTILE_JOB_IDS:
        result = worker.run({"id": job_id, "input": {"text": "Hi there.", "voice": "alice", **FAST}})
        key = result["audio_key"]
        assert re.fullmatch(r"outputs/[A-Za-z0-9_-]{1,128}\.wav", key), key
        keys.add(key)
    assert keys <= {o["Key"] for o in s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"])["Contents"]}
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("job_id", HOSTILE_JOB_IDS)
def test_scratch_dir_is_named_after_the_same_safe_job_id(scratch: Path, job_id: str):
    from f5worker.storage import JOB_DIR_PREFIX, make_job_dir, safe_job_id

    safe = safe_job_id(job_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", safe)
    job_dir = make_job_dir(job_id)
    assert job_dir.parent == scratch and job_dir.name.startswith(f"{JOB_DIR_PREFIX}{safe}-")


JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=6)
VALID_FIELDS = {
    "voice": st.sampled_from(["default", "alice", "bob", "carol", "mute", "ghost"]),
    "ref_text": st.text(min_size=1, max_size=30),
    "output_format": st.sampled_from(["wav", "flac", "mp3", "ogg"]),
    "speed": st.floats(0.5, 2.0),
    "cfg_strength": st.floats(0.0, 10.0),
    "sway_sampling_coef": st.floats(-1.0, 1.0),
    "cross_fade_duration": st.floats(0.0, 2.0),
    "seed": st.integers(0, 2**32 - 1),
    "remove_silence": st.booleans(),
    "return_base64": st.booleans(),
}
# Valid inputs (nfe_step small, so they synthesize fast), the same with one field (known or not)
# set to anything, any dict, and any JSON value at all.
VALID = st.fixed_dictionaries({"text": st.text(min_size=1, max_size=30), "nfe_step": st.integers(2, 3)},
                              optional=VALID_FIELDS)
MUTATED = st.tuples(VALID, st.sampled_from(sorted(KNOWN_FIELDS)) | st.text(max_size=10), JSON | st.text()).map(
    lambda t: {**t[0], t[1]: t[2]})
INPUTS = VALID | MUTATED | st.dictionaries(st.text(max_size=10), JSON, max_size=3) | JSON


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=INPUTS)
def test_any_input_gets_a_result_or_a_string_error(make_worker, bucket_env, scratch, raw):
    result = make_worker(bucket_env).run({"id": "prop", "input": raw})
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # serialisable, no lone surrogate echoed back
    event("error" if "error" in result else "synthesized")
    if "error" in result:
        assert set(result) == {"error"} and isinstance(result["error"], str) and result["error"]
    else:
        assert "audio_key" in result or "audio_base64" in result, result
    assert list(scratch.iterdir()) == []
