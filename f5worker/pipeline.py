"""The job pipeline: validate -> voice -> synthesize -> encode -> deliver, in the job's own scratch
directory, which is removed whatever happens; jobs with an ``action`` manage the bucket's voices.
"""

from __future__ import annotations

import errno
import itertools
import logging
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from f5worker import audio, heap, s3, subtitles, url_fetch
from f5worker.asr import SpeechRecognizer, Word
from f5worker.contract import (
    DEFAULT_LIMITS,
    DEFAULT_VOICE,
    MAX_UPLOAD_BYTES,
    InputError,
    JobLimits,
    JobRequest,
    ListVoicesRequest,
    SynthesisParams,
    SynthesisRequest,
    UploadVoiceRequest,
    parse_job,
)
from f5worker.delivery import AudioStream, Delivered, Emit, Outbox, TextOutput
from f5worker.engine.memory import OUT_OF_MEMORY, release_memory
from f5worker.engine.scheduler import QueueFull
from f5worker.formats import SAMPLE_RATE
from f5worker.settings import Settings
from f5worker.storage import BucketSettings, S3Limits, is_true, make_job_dir, scratch_root
from f5worker.timings import Timings
from f5worker.tts_model import TTSModel
from f5worker.voices import VoiceError, VoiceLibrary

log = logging.getLogger("f5tts.worker")

WARM_UP_TEXT = "Warm up."
CLIENT_ERRORS = (InputError, VoiceError, audio.AudioError)
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

Progress = Callable[[str], None]  # gets "chunk i of n"


@dataclass
class Worker:
    """Everything a job needs, built once per process."""

    model: TTSModel
    voices: VoiceLibrary
    bucket: BucketSettings
    s3: BaseClient | None
    asr: SpeechRecognizer | None = None  # None: ASR_ENABLED is off; loads Whisper on first use otherwise
    limits: JobLimits = DEFAULT_LIMITS
    presign_expires_s: int = S3Limits.presign_expires_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        bucket, cache, allow_download = settings.bucket, settings.cache, not settings.offline
        client = s3.make_client(bucket, settings.s3) if bucket.configured else None
        model = TTSModel.load(settings.model, cache.hub_cache, allow_download,
                              fallbacks=cache.fallback_caches, half_dir=cache.half_weights, engine=settings.engine)
        asr = (SpeechRecognizer(settings.asr, cache.hub_cache, allow_download, fallbacks=cache.fallback_caches)
               if settings.asr.enabled else None)
        voices = VoiceLibrary(client, bucket, recognizer=asr, limits=settings.jobs)
        worker = cls(model=model, voices=voices, bucket=bucket, s3=client, asr=asr, limits=settings.jobs,
                     presign_expires_s=settings.s3.presign_expires_s)
        if wants_warm_up(settings.warm_up, model.device):
            worker.warm_up()
        log.info("worker ready: bucket=%s asr=%s", bucket.name or "(none: results inline)",
                 f"{settings.asr.repo_id} (loaded on first use)" if asr else "off")
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
            request = parse_job(job.get("input"), self.limits)
            result = self._dispatch(job_id, request, job_dir, timings, progress, emit)
            log.info("job %s done: %s timings=%s", job_id, type(request).__name__, result["timings_ms"])
            return result
        except CLIENT_ERRORS as err:
            log.info("job %s rejected: %s", job_id, err)
            return {"error": str(err)}
        except QueueFull as err:
            log.warning("job %s refused: %s", job_id, err)
            return {"error": f"busy: {err}" + ("; retry later" if err.items <= err.limit else "")}
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
        except Exception as err:  # one job's failure must not take the worker down
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
            heap.release_free_memory()  # what the job freed, back to the system (f5worker/heap.py)

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
        plans = [self.model.plan(reference.duration_s, reference.text, text, request.params.speed)
                 for text in request.texts]
        total = sum(map(len, plans))
        stream = AudioStream(request.output_format, emit, timings) if request.stream and emit else None
        waves = []
        for chunks, done in zip(plans, itertools.accumulate(map(len, plans), initial=0), strict=False):
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
            outputs = self._outputs(job_id, request, waves, durations, job_dir, timings)
            if request.several:
                result["outputs"] = [{"index": i, **output.to_json()} for i, output in enumerate(outputs)]
            else:
                result.update(outputs[0].to_json())
        result["timings_ms"] = timings.report()
        log.info("job %s: voice=%s format=%s audio=%ss chunks=%d", job_id, request.voice, request.output_format,
                 durations, total)
        return result

    def _outputs(self, job_id: str, request: SynthesisRequest, waves: list[np.ndarray], durations: list[float],
                 job_dir: Path, timings: Timings) -> list[TextOutput]:
        """Every text's audio encoded and delivered, with its word timings and subtitles if asked for."""
        paths = [job_dir / f"output-{i}.{request.output_format}" for i in range(len(waves))]
        with timings.measure("encode"):
            for wave, path in zip(waves, paths, strict=True):
                audio.write(wave, SAMPLE_RATE, request.output_format, path)
        outbox = Outbox.for_job(self.s3, self.bucket, job_id, request, timings, self.presign_expires_s)
        delivered = outbox.audio(paths, request.output_format)
        if not request.needs_recognition:
            return [TextOutput(d, file) for d, file in zip(durations, delivered, strict=True)]
        return [TextOutput(d, file, *self._word_timings(i, wave, request, outbox, timings))
                for i, (d, file, wave) in enumerate(zip(durations, delivered, waves, strict=True))]

    def _word_timings(self, index: int, wave: np.ndarray, request: SynthesisRequest, outbox: Outbox,
                      timings: Timings) -> tuple[list[Word] | None, Delivered | None]:
        """``words`` and/or the subtitle file, from Whisper's recognition of the generated audio
        (``word_timings`` includes ``load_asr`` on the job that loads the model)."""
        with timings.measure("word_timings"):
            words = self.asr.words(wave, SAMPLE_RATE, timings)
        subtitle_file = (None if request.subtitles is None
                         else outbox.subtitles(index, subtitles.render(words, request.subtitles), request.subtitles))
        return (words if request.return_word_timings else None), subtitle_file


def wants_warm_up(setting: str, device: str) -> bool:
    """``F5TTS_WARMUP``: ``1`` always, ``0`` never, ``auto`` (default) on CUDA only. On a GPU the
    warm-up costs a fraction of a second and takes CUDA/cuBLAS set-up off the first job; on CPU
    the first-call set-up is ~0.15 s while a warm-up synthesis of the full model takes tens of
    seconds (BENCHMARKS.md), so it is not worth it there."""
    if is_true(setting):
        return True
    return setting.strip().lower() == "auto" and device.startswith("cuda")
