"""RunPod serverless worker for F5-TTS voice cloning.

    python runpod_handler.py                      # on RunPod: take jobs from the queue
    python runpod_handler.py --rp_serve_api       # locally: /run, /runsync, /status on :8000
    python runpod_handler.py --test_input '{"input": {"text": "Hello."}}'

The model loads once, when the process starts; every job then runs validate -> voice ->
synthesize -> encode -> deliver (S3 or inline base64) in its own scratch directory, which is
removed whatever happens.
"""

from __future__ import annotations

from storage import apply_cache_env

CACHE = apply_cache_env()  # before anything imports huggingface_hub

import asyncio  # noqa: E402
import base64  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from botocore.client import BaseClient  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

import audio  # noqa: E402
import s3_utils  # noqa: E402
from job_input import InputError, SynthesisRequest, parse_request  # noqa: E402
from model_files import ModelConfigError, ModelFilesMissing, ModelSources  # noqa: E402
from storage import BucketSettings, make_job_dir, scratch_root  # noqa: E402
from timings import Timings  # noqa: E402
from tts_model import SAMPLE_RATE, SynthesisParams, TTSModel  # noqa: E402
from voices import DEFAULT_VOICE, VoiceError, VoiceLibrary  # noqa: E402

log = logging.getLogger("f5tts.worker")

# RunPod caps a job's result at 20 MB; inline audio stays well below so /run and /runsync both carry it.
MAX_INLINE_BASE64_BYTES = 10 * 1024 * 1024
WARM_UP_TEXT = "Warm up."
CLIENT_ERRORS = (InputError, VoiceError, audio.AudioError)


@dataclass
class Worker:
    """Everything a job needs, built once per process."""

    model: TTSModel
    voices: VoiceLibrary
    bucket: BucketSettings
    s3: BaseClient | None

    @classmethod
    def from_env(cls) -> Worker:
        bucket = BucketSettings.from_env()
        s3 = s3_utils.make_client(bucket) if bucket.configured else None
        allow_download = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on")
        model = TTSModel.load(ModelSources.from_env(), CACHE.hub_cache, allow_download, half_dir=CACHE.half_weights)
        worker = cls(model=model, voices=VoiceLibrary(s3, bucket), bucket=bucket, s3=s3)
        if wants_warm_up(os.environ.get("F5TTS_WARMUP", "auto"), model.device):
            worker.warm_up()
        log.info("worker ready: bucket=%s", bucket.name or "(none: results inline)")
        return worker

    def warm_up(self) -> dict[str, float]:
        """One short synthesis with the packaged voice, so the first job does not pay the
        first-call set-up (pinyin/jieba dictionaries, CUDA kernels and cuBLAS/cuDNN handles);
        it also leaves the default voice prepared in the cache. Returns its timings."""
        timings = Timings()
        reference, _ = self.voices.get(DEFAULT_VOICE, None, scratch_root(), timings)
        with timings.measure("synthesize"):
            self.model.synthesize(reference.audio, reference.text, WARM_UP_TEXT, SynthesisParams(nfe_step=2))
        log.info("warm-up done: %s", timings.report())
        return timings.report()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One job, start to finish; never raises, errors come back as ``{"error": str}``."""
        job_id = str(job.get("id", "local"))
        timings = Timings()
        job_dir = make_job_dir(job_id)
        try:
            request = parse_request(job.get("input"))
            result = self._synthesize(job_id, request, job_dir, timings)
            log.info("job %s done: voice=%s format=%s audio=%.2fs timings=%s", job_id, request.voice,
                     request.output_format, result["duration_s"], result["timings_ms"])
            return result
        except CLIENT_ERRORS as err:
            log.info("job %s rejected: %s", job_id, err)
            return {"error": str(err)}
        except (ClientError, BotoCoreError) as err:
            log.warning("job %s: S3 error: %s", job_id, err)
            return {"error": f"S3 error: {err}"}
        except Exception as err:  # noqa: BLE001 - one job's failure must not take the worker down
            log.exception("job %s failed", job_id)
            return {"error": f"internal error: {type(err).__name__}: {err}"}
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _synthesize(self, job_id: str, request: SynthesisRequest, job_dir: Path, timings: Timings) -> dict[str, Any]:
        reference, cached = self.voices.get(request.voice, request.ref_text, job_dir, timings)
        with timings.measure("synthesize"):
            wave = self.model.synthesize(reference.audio, reference.text, request.text, request.params)
        if request.remove_silence:
            wave = audio.shorten_silences(wave, SAMPLE_RATE)
        with timings.measure("encode"):
            encoded = io.BytesIO()  # in memory: the output never needs a file of its own
            audio.write(wave, SAMPLE_RATE, request.output_format, encoded)
        result: dict[str, Any] = {
            "format": request.output_format,
            "sample_rate": SAMPLE_RATE,
            "duration_s": round(len(wave) / SAMPLE_RATE, 3),
            "seed": request.params.seed,
            "voice": request.voice,
            "voice_cached": cached,
        }
        result.update(self._deliver(job_id, request, encoded.getvalue(), timings))
        result["timings_ms"] = timings.report()
        return result

    def _deliver(self, job_id: str, request: SynthesisRequest, data: bytes, timings: Timings) -> dict[str, Any]:
        """Upload to ``<OUTPUTS_PREFIX><job id>.<ext>``, or inline base64 with no bucket."""
        if self.s3 is None or request.return_base64:
            size = 4 * -(-len(data) // 3)
            if size > MAX_INLINE_BASE64_BYTES:
                raise audio.AudioError(
                    f"the {request.output_format} output would be {size} bytes of base64, over the "
                    f"{MAX_INLINE_BASE64_BYTES}-byte inline limit: configure a bucket or pick mp3/ogg"
                )
            return {"audio_base64": base64.b64encode(data).decode("ascii")}
        key = f"{self.bucket.outputs_prefix}{safe_job_id(job_id)}.{request.output_format}"
        content_type = audio.OUTPUT_FORMATS[request.output_format].content_type
        with timings.measure("upload"):
            s3_utils.put_bytes(self.s3, self.bucket.name, key, data, content_type)
            url = s3_utils.presigned_url(self.s3, self.bucket.name, key)
        return {"audio_key": key, "audio_url": url, "bucket": self.bucket.name}


def wants_warm_up(setting: str, device: str) -> bool:
    """``F5TTS_WARMUP``: ``1`` always, ``0`` never, ``auto`` (default) on CUDA only. On a GPU the
    warm-up costs a fraction of a second and takes CUDA/cuBLAS set-up off the first job; on CPU
    the first-call set-up is ~0.15 s while a warm-up synthesis of the full model takes tens of
    seconds (BENCHMARKS.md), so it is not worth it there."""
    if setting.strip().lower() in ("1", "true", "yes", "on"):
        return True
    return setting.strip().lower() == "auto" and device.startswith("cuda")


def safe_job_id(job_id: str) -> str:
    """The job id reduced to ``[A-Za-z0-9_-]``: output keys derive from it and nothing else."""
    return "".join(c for c in job_id if c.isalnum() or c in "-_")[:128] or "job"


WORKER: Worker | None = None


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod entry point. Synthesis runs in a thread so the event loop (heartbeats, the
    local API's other requests) keeps answering while a job computes."""
    assert WORKER is not None, "the worker is started by main()"
    return await asyncio.to_thread(WORKER.run, job)


def start_up() -> Worker:
    """Everything before the first job: the worker, and the RunPod SDK imported meanwhile.

    ``import runpod`` takes ~1.2 s, nearly all of it waiting for the subprocess py-cpuinfo
    starts (``runpod.serverless.utils.rp_debugger`` calls ``cpuinfo.get_cpu_info()`` at import).
    Imported in a thread, that wait overlaps the model load instead of following it
    (BENCHMARKS.md). A failure there is only logged: ``main`` imports runpod again and raises.
    """
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")  # the SDK's DEBUG level logs every job's output

    def import_sdk() -> None:
        try:
            import runpod  # noqa: F401
        except Exception:  # noqa: BLE001 - retried, and reported, by main()
            log.warning("background import of the runpod SDK failed", exc_info=True)

    sdk = threading.Thread(target=import_sdk, name="import-runpod", daemon=True)
    sdk.start()
    worker = Worker.from_env()
    sdk.join()
    return worker


def main() -> None:
    global WORKER
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        WORKER = start_up()
    except (ModelFilesMissing, ModelConfigError) as err:
        log.error("cannot start: %s", err)
        sys.exit(f"cannot start: {err}")

    # SIGTERM (RunPod scaling the worker down) exits normally, so temp dirs made by imported
    # libraries are removed by their finalizers instead of being left in the scratch tier.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import runpod

    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
