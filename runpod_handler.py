"""RunPod serverless worker for F5-TTS voice cloning.

    python runpod_handler.py                      # on RunPod: take jobs from the queue
    python runpod_handler.py --rp_serve_api       # locally: /run, /runsync, /status on :8000
    python runpod_handler.py --test_input '{"input": {"text": "Hello."}}'
    STREAMING=1 python runpod_handler.py ...       # generator handler: "stream": true jobs stream

The model loads once, when the process starts; every job then runs validate -> voice ->
synthesize -> encode -> deliver (S3 or inline base64) in its own scratch directory, which is
removed whatever happens. Jobs with an ``action`` manage the bucket's voices instead.
"""

from __future__ import annotations

from f5worker.storage import apply_cache_env

CACHE = apply_cache_env()  # before anything imports huggingface_hub

import asyncio  # noqa: E402
import base64  # noqa: E402
import errno  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from botocore.client import BaseClient  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

from f5worker import audio  # noqa: E402
from f5worker import s3  # noqa: E402
from f5worker import subtitles  # noqa: E402
from f5worker import url_fetch  # noqa: E402
from f5worker.asr import SpeechRecognizer  # noqa: E402
from f5worker.model_files import AsrSettings  # noqa: E402
from f5worker.contract import InputError, JobRequest, ListVoicesRequest, SynthesisRequest, UploadVoiceRequest, parse_job  # noqa: E402
from f5worker.model_files import ModelConfigError, ModelFilesCorrupt, ModelFilesMissing, ModelSources  # noqa: E402
from f5worker.storage import BucketSettings, is_true, make_job_dir, safe_job_id, scratch_root  # noqa: E402
from f5worker.timings import Timings  # noqa: E402
from f5worker.contract import SynthesisParams  # noqa: E402
from f5worker.formats import OUTPUT_FORMATS, SAMPLE_RATE, SUBTITLE_FORMATS, base64_length  # noqa: E402
from f5worker.tts_model import OUT_OF_MEMORY, TTSModel, release_memory  # noqa: E402
from f5worker.contract import DEFAULT_VOICE, MAX_UPLOAD_BYTES  # noqa: E402
from f5worker.voices import VoiceError, VoiceLibrary  # noqa: E402

log = logging.getLogger("f5tts.worker")

# RunPod caps a job's result at 20 MB; inline audio stays well below so /run and /runsync both carry it.
MAX_INLINE_BASE64_BYTES = 10 * 1024 * 1024
WARM_UP_TEXT = "Warm up."
CLIENT_ERRORS = (InputError, VoiceError, audio.AudioError)
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# A streamed item holds at most 8 s of 16-bit PCM: 384 KB, 512 KB as base64, well under RunPod's
# 1 MB limit on one stream chunk.
STREAM_PIECE_SAMPLES = 8 * SAMPLE_RATE

Progress = Callable[[str], None]  # gets "chunk i of n"
Emit = Callable[[dict[str, Any]], None]  # gets each streamed item


@dataclass
class Worker:
    """Everything a job needs, built once per process."""

    model: TTSModel
    voices: VoiceLibrary
    bucket: BucketSettings
    s3: BaseClient | None
    asr: SpeechRecognizer | None = None  # None: ASR_ENABLED is off; loads Whisper on first use otherwise

    @classmethod
    def from_env(cls) -> Worker:
        bucket = BucketSettings.from_env()
        client = s3.make_client(bucket) if bucket.configured else None
        allow_download = not is_true(os.environ.get("HF_HUB_OFFLINE"))
        model = TTSModel.load(ModelSources.from_env(), CACHE.hub_cache, allow_download,
                              fallbacks=CACHE.fallback_caches, half_dir=CACHE.half_weights)
        asr_settings = AsrSettings.from_env()
        asr = (SpeechRecognizer(asr_settings, CACHE.hub_cache, allow_download, fallbacks=CACHE.fallback_caches)
               if asr_settings.enabled else None)
        worker = cls(model=model, voices=VoiceLibrary(client, bucket, recognizer=asr), bucket=bucket, s3=client, asr=asr)
        if wants_warm_up(os.environ.get("F5TTS_WARMUP", "auto"), model.device):
            worker.warm_up()
        log.info("worker ready: bucket=%s asr=%s", bucket.name or "(none: results inline)",
                 f"{asr_settings.repo_id} (loaded on first use)" if asr else "off")
        return worker

    def warm_up(self) -> dict[str, float]:
        """One short synthesis with the packaged voice, so the first job does not pay the
        first-call set-up (pinyin/jieba dictionaries, CUDA kernels and cuBLAS/cuDNN handles);
        it also leaves the default voice prepared in the cache. Returns its timings."""
        timings = Timings()
        reference, _ = self.voices.get(DEFAULT_VOICE, None, scratch_root(), timings)
        chunks = self.model.plan(reference.duration_s, reference.text, WARM_UP_TEXT, 1.0)
        with timings.measure("synthesize"):
            self.model.synthesize(reference.audio, reference.text, chunks, SynthesisParams(nfe_step=2))
        log.info("warm-up done: %s", timings.report())
        return timings.report()

    def run(self, job: dict[str, Any], progress: Progress | None = None, emit: Emit | None = None) -> dict[str, Any]:
        """One job, start to finish; never raises, errors come back as ``{"error": str}``.

        ``progress`` is told "chunk i of n" as synthesis goes; ``emit`` (the streaming handler's)
        gets a ``"stream": true`` job's audio piece by piece, before the result is returned.
        """
        job_id = str(job.get("id", "local"))
        timings = Timings()
        job_dir: Path | None = None
        out_of_memory = False
        try:
            job_dir = make_job_dir(job_id)  # inside the try: a full disk fails the job, not the worker
            request = parse_job(job.get("input"))
            result = self._dispatch(job_id, request, job_dir, timings, progress, emit)
            log.info("job %s done: %s timings=%s", job_id, type(request).__name__, result["timings_ms"])
            return result
        except CLIENT_ERRORS as err:
            log.info("job %s rejected: %s", job_id, err)
            return {"error": str(err)}
        except (ClientError, BotoCoreError) as err:
            log.warning("job %s: S3 error: %s", job_id, err)
            return {"error": s3.describe_error(err, self.bucket.name)}
        except OUT_OF_MEMORY as err:
            log.error("job %s: out of memory: %s", job_id, str(err))
            # The failed job's frames hold its tensors; clear them even if something (a log
            # handler, an error reporter) keeps the exception alive.
            traceback.clear_frames(err.__traceback__)
            out_of_memory = True
            return {"error": f"out of memory during synthesis ({type(err).__name__}); "
                             "retry with shorter text or fewer concurrent jobs"}
        except Exception as err:  # noqa: BLE001 - one job's failure must not take the worker down
            if isinstance(err, OSError) and err.errno in DISK_FULL:
                log.error("job %s: scratch space exhausted: %s", job_id, err)
                return {"error": f"scratch space exhausted in {scratch_root()} ({err.strerror}); "
                                 "the job's files were removed, retry later or give the worker more disk"}
            log.exception("job %s failed", job_id)
            return {"error": f"internal error: {type(err).__name__}: {err}"}
        finally:
            if job_dir is not None:
                shutil.rmtree(job_dir, ignore_errors=True)
            if out_of_memory:  # here, once the exception and the frames it holds are gone
                release_memory()

    def _dispatch(self, job_id: str, request: JobRequest, job_dir: Path, timings: Timings,
                  progress: Progress | None, emit: Emit | None) -> dict[str, Any]:
        if isinstance(request, SynthesisRequest):
            if request.stream and emit is None:
                raise InputError("stream", "this worker runs the classic handler: start it with STREAMING=1 to stream")
            return self._synthesize(job_id, request, job_dir, timings, progress, emit)
        if isinstance(request, ListVoicesRequest):
            result = {"voices": self.voices.list_voices()}
        elif isinstance(request, UploadVoiceRequest):
            result = self._upload_voice(request, job_dir, timings)
        else:
            result = self.voices.delete(request.name)
        return {**result, "timings_ms": timings.report()}

    def _upload_voice(self, request: UploadVoiceRequest, job_dir: Path, timings: Timings) -> dict[str, Any]:
        source = job_dir / "upload"
        with timings.measure("fetch_voice"):
            if request.audio is not None:
                source.write_bytes(request.audio)
            else:
                try:
                    url_fetch.fetch(request.audio_url, source, MAX_UPLOAD_BYTES)
                except url_fetch.FetchError as err:
                    raise VoiceError(f"audio_url: {err}") from err
        with timings.measure("store_voice"):
            return self.voices.store(request.name, source, request.transcript, request.overwrite, job_dir)

    def _synthesize(self, job_id: str, request: SynthesisRequest, job_dir: Path, timings: Timings,
                    progress: Progress | None, emit: Emit | None) -> dict[str, Any]:
        """Every text with one prepared reference; a stream job's audio goes to ``emit`` as it is made."""
        if request.needs_recognition and self.asr is None:
            field = "return_word_timings" if request.return_word_timings else "subtitles"
            raise InputError(field, "needs speech recognition, which is off on this endpoint (ASR_ENABLED)")
        reference, cached = self.voices.get(request.voice, request.ref_text, job_dir, timings)
        plans = [self.model.plan(reference.duration_s, reference.text, text, request.params.speed) for text in request.texts]
        total = sum(map(len, plans))
        stream = AudioStream(request.output_format, emit, timings) if request.stream and emit else None
        waves = []
        for chunks, done in zip(plans, itertools.accumulate(map(len, plans), initial=0)):
            def on_chunk(index: int, _count: int, part: np.ndarray, done: int = done) -> None:
                if progress is not None:
                    progress(f"chunk {done + index} of {total}")
                if stream is not None:
                    stream.send(part)

            with timings.measure("synthesize"):
                wave = self.model.synthesize(reference.audio, reference.text, chunks, request.params, on_chunk)
            waves.append(audio.shorten_silences(wave, SAMPLE_RATE) if request.remove_silence else wave)
        result: dict[str, Any] = {
            "format": request.output_format,
            "sample_rate": SAMPLE_RATE,
            "seed": request.params.seed,
            "voice": request.voice,
            "voice_cached": cached,
        }
        durations = [round(len(wave) / SAMPLE_RATE, 3) for wave in waves]
        if stream is not None:
            result.update(duration_s=durations[0], chunks=stream.count)
        else:
            paths = [job_dir / f"output-{i}.{request.output_format}" for i in range(len(waves))]
            with timings.measure("encode"):
                for wave, path in zip(waves, paths):
                    audio.write(wave, SAMPLE_RATE, request.output_format, path)
            delivered = self._deliver(job_id, request, paths, timings)
            if request.needs_recognition:
                for i, (wave, out) in enumerate(zip(waves, delivered)):
                    out.update(self._word_timings(output_stem(job_id, request, i), request, wave, timings))
            if request.several:
                result["outputs"] = [{"index": i, "duration_s": d, **out} for i, (d, out) in enumerate(zip(durations, delivered))]
            else:
                result.update(duration_s=durations[0], **delivered[0])
        result["timings_ms"] = timings.report()
        log.info("job %s: voice=%s format=%s audio=%ss chunks=%d", job_id, request.voice, request.output_format,
                 durations, total)
        return result

    def _deliver(self, job_id: str, request: SynthesisRequest, paths: list[Path], timings: Timings) -> list[dict[str, Any]]:
        """Upload to ``<OUTPUTS_PREFIX><job id>.<ext>`` (``<job id>-<i>.<ext>`` for ``texts``), or
        inline base64 with no bucket."""
        if self.s3 is None or request.return_base64:
            size = sum(base64_length(path.stat().st_size) for path in paths)
            if size > MAX_INLINE_BASE64_BYTES:
                raise audio.AudioError(
                    f"the {request.output_format} output would be {size} bytes of base64, over the "
                    f"{MAX_INLINE_BASE64_BYTES}-byte inline limit: configure a bucket or pick mp3/ogg"
                )
            return [{"audio_base64": base64.b64encode(path.read_bytes()).decode("ascii")} for path in paths]
        content_type = OUTPUT_FORMATS[request.output_format].content_type
        delivered = []
        for i, path in enumerate(paths):
            key = f"{self.bucket.outputs_prefix}{output_stem(job_id, request, i)}.{request.output_format}"
            with timings.measure("upload"):
                s3.upload_file(self.s3, self.bucket.name, key, path, content_type)
                url = s3.presigned_url(self.s3, self.bucket.name, key)
            delivered.append({"audio_key": key, "audio_url": url, "bucket": self.bucket.name})
        return delivered

    def _word_timings(self, stem: str, request: SynthesisRequest, wave: np.ndarray, timings: Timings) -> dict[str, Any]:
        """``words`` and/or the subtitle file, from Whisper's recognition of the generated audio
        (``word_timings`` includes ``load_asr`` on the job that loads the model)."""
        with timings.measure("word_timings"):
            words = self.asr.words(wave, SAMPLE_RATE, timings)
        result: dict[str, Any] = {"words": [asdict(w) for w in words]} if request.return_word_timings else {}
        if request.subtitles is None:
            return result
        text = subtitles.render(words, request.subtitles)
        if self.s3 is None or request.return_base64:
            return {**result, "subtitles": text}
        key = f"{self.bucket.outputs_prefix}{stem}.{request.subtitles}"
        with timings.measure("upload"):
            s3.put_text(self.s3, self.bucket.name, key, text, SUBTITLE_FORMATS[request.subtitles])
            url = s3.presigned_url(self.s3, self.bucket.name, key)
        return {**result, "subtitles_key": key, "subtitles_url": url}


class AudioStream:
    """A stream job's audio as items of at most ``STREAM_PIECE_SAMPLES`` samples, each
    ``{"chunk": k, "format", "sample_rate", "audio_base64"}`` with base64 of 16-bit little-endian
    PCM, the first one preceded by a streaming WAV header when the format is ``wav``. Decoded and
    concatenated in ``chunk`` order, they are the job's audio file."""

    def __init__(self, fmt: str, emit: Emit, timings: Timings):
        self.fmt = fmt
        self.emit = emit
        self.timings = timings
        self.count = 0

    def send(self, wave: np.ndarray) -> None:
        for start in range(0, len(wave), STREAM_PIECE_SAMPLES):
            data = io.BytesIO()
            if self.count == 0 and self.fmt == "wav":
                data.write(audio.streaming_wav_header(SAMPLE_RATE))
            audio.write(wave[start : start + STREAM_PIECE_SAMPLES], SAMPLE_RATE, "pcm", data)
            self.timings.mark("first_audio")
            self.emit({"chunk": self.count, "format": self.fmt, "sample_rate": SAMPLE_RATE,
                       "audio_base64": base64.b64encode(data.getvalue()).decode("ascii")})
            self.count += 1


def output_stem(job_id: str, request: SynthesisRequest, index: int) -> str:
    """The key stem of output ``index``: the job id, suffixed ``-<i>`` for ``texts``."""
    return f"{safe_job_id(job_id)}-{index}" if request.several else safe_job_id(job_id)


def wants_warm_up(setting: str, device: str) -> bool:
    """``F5TTS_WARMUP``: ``1`` always, ``0`` never, ``auto`` (default) on CUDA only. On a GPU the
    warm-up costs a fraction of a second and takes CUDA/cuBLAS set-up off the first job; on CPU
    the first-call set-up is ~0.15 s while a warm-up synthesis of the full model takes tens of
    seconds (BENCHMARKS.md), so it is not worth it there."""
    if is_true(setting):
        return True
    return setting.strip().lower() == "auto" and device.startswith("cuda")


WORKER: Worker | None = None


def progress_reporter(job: dict[str, Any]) -> Progress | None:
    """Posts a job's progress with ``runpod.serverless.progress_update``, which sends it to the
    URL RunPod gives workers in ``RUNPOD_WEBHOOK_POST_OUTPUT`` (``/status`` then shows it). Without
    that URL (``--test_input``, a plain local API) there is nowhere to post it."""
    if not os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        return None
    from runpod.serverless import progress_update

    return lambda message: progress_update(job, message)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod entry point. Synthesis runs in a thread so the event loop (heartbeats, the
    local API's other requests) keeps answering while a job computes."""
    assert WORKER is not None, "the worker is started by main()"
    return await asyncio.to_thread(WORKER.run, job, progress_reporter(job))


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Generator entry point (``STREAMING=1``): yields a ``"stream": true`` job's audio items as
    they are made, then the job's result; any other job yields just its result. The job runs in a
    thread, as in ``handler``; its items cross to the event loop through a queue."""
    assert WORKER is not None, "the worker is started by main()"
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def emit(item: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(items.put_nowait, item)

    def work() -> dict[str, Any]:
        try:
            return WORKER.run(job, progress_reporter(job), emit)
        finally:
            emit(None)

    result = asyncio.ensure_future(asyncio.to_thread(work))
    while (item := await items.get()) is not None:
        yield item
    yield await result


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
    except (ModelFilesMissing, ModelConfigError, ModelFilesCorrupt) as err:
        log.error("cannot start: %s", err)
        sys.exit(f"cannot start: {err}")

    # SIGTERM (RunPod scaling the worker down) exits normally, so temp dirs made by imported
    # libraries are removed by their finalizers instead of being left in the scratch tier.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import runpod

    if is_true(os.environ.get("STREAMING")):
        # /run and /runsync then get the list of everything yielded: audio items, then the result
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
