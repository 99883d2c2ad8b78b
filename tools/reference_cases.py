"""Issue 15's cases run through the local API: ``runpod_handler.py --rp_serve_api`` on the tiny
models with moto S3 (both on 127.0.0.1), recognition off, then on, then a restarted worker.

    python -m tools.reference_cases

Prints each request and what the worker answered (status, error or the output's telling fields).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.support.audio_bytes import long_clip, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT

FAST = {"nfe_step": 4, "seed": 1}
SHOWN = ("duration_s", "voice", "voice_cached", "audio_key", "subtitles_key", "key", "expires_in_s")
STAGES = ("transcribe_reference", "store_transcript", "load_asr")
# Request bodies as the earlier project's API.md documents them (sruckh/f5-tts-runpod-serverless).
EARLIER_BODIES = [
    {"text": "I am a puppet, and the digital world owns me!", "speed": 0.9, "seed": 42, "local_voice": "Kurt_12s.wav"},
    {"text": "Hello world.", "seed": 123, "return_word_timings": True, "timing_format": "ass",
     "timing_method": "whisperx", "local_voice": "narrator.wav"},
    {"endpoint": "upload", "voice_name": "my_voice.wav", "voice_file_url": "https://example.com/voice_sample.wav"},
    {"endpoint": "list_voices"},
    {"endpoint": "download", "job_id": "dacf3df8-e5c3-4a37-b7da-1acf5cd214df"},
    {"endpoint": "download", "job_id": "12345", "type": "timing", "format": "srt"},
]


def summary(answer: dict[str, Any]) -> str:
    if answer.get("status") != "COMPLETED":
        return f"{answer.get('status')}: {answer.get('error')}"
    output = answer["output"]
    shown = {k: output[k] for k in SHOWN if k in output}
    if "voices" in output:
        shown["voices"] = {v["name"]: v["error"] for v in output["voices"]}
    shown["stages"] = [s for s in STAGES if s in output.get("timings_ms", {})]
    return f"COMPLETED: {json.dumps(shown, ensure_ascii=False)}"


def ask(worker, label: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = worker.post("/runsync", {"input": body}, timeout=600)
    shown = {k: (v[:24] + "..." if isinstance(v, str) and len(v) > 60 else v) for k, v in body.items()}
    print(f"- {label}\n  request: {json.dumps(shown)}\n  answer:  {summary(answer)}", flush=True)
    return answer


def run(work: Path) -> None:
    import s3_utils
    from f5worker.storage import BucketSettings
    from tests.support.bucket import populate_bucket
    from tests.support.net import free_port
    from tests.support.s3_servers import MotoProcess
    from tests.support.tiny_models import build_tiny_cache, tiny_cache_env
    from tests.support.worker_process import WorkerProcess

    build_tiny_cache(work / "hub")
    moto = MotoProcess(free_port(), work / "moto.log")
    env = {"BUCKET_NAME": "why", "BUCKET_ENDPOINT_URL": moto.url, "BUCKET_REGION": "us-east-1",
           "BUCKET_ACCESS_KEY_ID": "why", "BUCKET_SECRET_ACCESS_KEY": "why", **tiny_cache_env(work)}
    s3 = s3_utils.make_client(BucketSettings.from_env(env))
    populate_bucket(s3, "why")
    s3.put_object(Bucket="why", Key="voices/long.wav", Body=long_clip())
    s3.put_object(Bucket="why", Key="voices/long.txt", Body=" ".join([ALICE_TEXT] * 5).encode())
    for name in ("Kurt_12s.wav", "my voice.wav"):
        s3.put_object(Bucket="why", Key=f"voices/{name}", Body=reference_wav_bytes())
    s3.put_object(Bucket="why", Key="voices/Kurt_12s.txt", Body=ALICE_TEXT.encode())
    clip = base64.b64encode(reference_wav_bytes()).decode()
    try:
        for round_, extra in (("recognition off", {}), ("ASR_ENABLED=1", {"ASR_ENABLED": "1"}),
                              ("ASR_ENABLED=1, restarted", {"ASR_ENABLED": "1"})):
            (work / round_).mkdir()
            worker = WorkerProcess({**env, **extra}, work / round_, work / f"{round_}.log")
            worker.wait_ready()
            print(f"\n## worker: {round_}", flush=True)
            try:
                ask(worker, "30 s bucket voice, transcript of all 30 s", {"text": "Hello there.", "voice": "long",
                                                                           **FAST})
                if round_ == "ASR_ENABLED=1, restarted":
                    continue
                ask(worker, "voice named by its file name", {"text": "Hello there.", "voice": "Kurt_12s.wav", **FAST})
                ask(worker, "list_voices", {"action": "list_voices"})
                for n in (1, 2):
                    ask(worker, f"reference in the job ({n})", {"text": "Hello there.", "ref_audio_base64": clip,
                                                               "ref_text": ALICE_TEXT, **FAST})
                ask(worker, "reference by a hostile URL", {"text": "Hello there.", "ref_text": ALICE_TEXT,
                                                           "ref_audio_url": "https://169.254.169.254/latest/x.wav"})
                if extra:
                    made = ask(worker, "ASS subtitles", {"text": "Hello there.", "voice": "alice",
                                                         "subtitles": "ass", **FAST})
                    ask(worker, "presign the subtitles", {"action": "presign", "key": made["output"]["subtitles_key"]})
                    ask(worker, "presign a voice", {"action": "presign", "key": "voices/alice.wav"})
                    continue
                for body in EARLIER_BODIES:
                    ask(worker, "earlier project's body", body)
            finally:
                worker.stop()
    finally:
        moto.stop()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="f5tts-why-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
