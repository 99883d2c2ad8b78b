"""The job pipeline: validate -> voice -> synthesize -> encode -> deliver, in the job's own scratch
directory, which is removed whatever happens; jobs with an ``action`` manage the bucket's voices.
"""

from __future__ import annotations

import errno
import itertools
import logging
import re
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from f5worker import audio, heap, s3, ssml, subtitles, url_fetch, wer
from f5worker.asr import SpeechRecognizer, Word
from f5worker.contract import (
    DEFAULT_LIMITS,
    DEFAULT_VOICE,
    MAX_UPLOAD_BYTES,
    InputError,
    JobLimits,
    JobRequest,
    ListVoicesRequest,
    PresignRequest,
    SynthesisParams,
    SynthesisRequest,
    UploadVoiceRequest,
    parse_job,
)
from f5worker.delivery import AudioSink, AudioStream, Delivered, Emit, JobCancelled, Outbox, TextOutput
from f5worker.engine.memory import OUT_OF_MEMORY, release_memory
from f5worker.engine.scheduler import QueueFull
from f5worker.formats import SAMPLE_RATE
from f5worker.normalize import TextNormalizer
from f5worker.retakes import Retakes
from f5worker.settings import Settings
from f5worker.storage import BucketSettings, S3Limits, is_true, make_job_dir, scratch_root
from f5worker.timings import Timings
from f5worker.tts_model import TTSModel
from f5worker.voices import Reference, VoiceError, VoiceLibrary

log = logging.getLogger("f5tts.worker")

WARM_UP_TEXT = "Warm up."
CLIENT_ERRORS = (InputError, VoiceError, audio.AudioError)
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

Progress = Callable[[str], None]  # gets "chunk i of n"
NON_WORD = re.compile(r"\d|[^\w\s.,!?;:'\"()-]")  # a heard word with a digit or a symbol: normalised


@dataclass(frozen=True)
class Failure:
    """Why a job failed. ``message`` is the result's ``error``; ``cause`` (the class of what was raised),
    ``field`` (the input field an InputError names) and ``retry`` (the same job may succeed later) are
    for a caller that answers with a status (the HTTP server)."""

    message: str
    cause: type[Exception]
    field: str | None = None
    retry: bool = False


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
    normalizer: TextNormalizer = field(default_factory=TextNormalizer)  # loads its grammars on first use

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
        """One short synthesis with the packaged voice, its text normalised, so the first job
        does not pay the first-call set-up (the normaliser's grammars, pinyin/jieba dictionaries,
        CUDA kernels and cuBLAS/cuDNN handles); it also leaves the default voice prepared in the
        cache. Returns its timings."""
        timings = Timings()
        reference, _ = self.voices.get(DEFAULT_VOICE, None, scratch_root(), timings)
        text = self.normalizer.normalize(WARM_UP_TEXT, timings)
        chunks = self.model.plan(reference.duration_s, reference.text, text, 1.0)
        with timings.measure("synthesize"):
            self.model.synthesize(reference.audio, reference.text, chunks, SynthesisParams(nfe_step=2))
        log.info("warm-up done: %s", timings.report())
        return timings.report()

    def run(self, job: dict[str, Any], progress: Progress | None = None, emit: Emit | None = None) -> dict[str, Any]:
        """One job, start to finish; never raises, errors come back as ``{"error": str}``.

        ``progress`` is told "chunk i of n" as synthesis goes; ``emit`` (the streaming handler's)
        gets a ``"stream": true`` job's audio piece by piece, before the result is returned.
        """
        outcome = self.execute(job.get("input"), str(job.get("id", "local")), progress, emit)
        return {"error": outcome.message} if isinstance(outcome, Failure) else outcome

    def execute(self, job_input: Any, job_id: str = "local", progress: Progress | None = None,
                emit: Emit | None = None, sink: AudioSink | None = None) -> dict[str, Any] | Failure:
        """``run`` for a caller that needs to know why a job failed: its result, or a :class:`Failure`.

        ``job_input`` is a job's ``input``, or a request already parsed from one (``contract``).
        ``sink``: a synthesis of one text sends its audio there as it is made (or whole, at the end,
        with ``remove_silence``, which needs all of it) instead of into an output file.
        """
        timings = Timings()
        job_dir: Path | None = None
        out_of_memory = False
        try:
            job_dir = make_job_dir(job_id)  # inside the try: a full disk fails the job, not the worker
            request = job_input if isinstance(job_input, JobRequest) else parse_job(job_input, self.limits)
            result = self._dispatch(job_id, request, job_dir, timings, progress, emit, sink)
            log.info("job %s done: %s timings=%s", job_id, type(request).__name__, result["timings_ms"])
            return result
        except CLIENT_ERRORS as err:
            log.info("job %s rejected: %s", job_id, err)
            return Failure(str(err), type(err), getattr(err, "field", None))
        except JobCancelled as err:
            log.info("job %s cancelled: %s", job_id, err)
            return Failure(f"cancelled: {err}", JobCancelled)
        except QueueFull as err:
            log.warning("job %s refused: %s", job_id, err)
            retry = err.items <= err.limit
            return Failure(f"busy: {err}" + ("; retry later" if retry else ""), QueueFull, retry=retry)
        except (ClientError, BotoCoreError) as err:
            log.warning("job %s: S3 error: %s", job_id, err)
            return Failure(s3.describe_error(err, self.bucket.name), type(err))
        except OUT_OF_MEMORY as err:
            log.error("job %s: out of memory: %s", job_id, str(err))
            # The failed job's frames hold its tensors; clear them even if something (a log
            # handler, an error reporter) keeps the exception alive.
            traceback.clear_frames(err.__traceback__)
            out_of_memory = True
            return Failure(f"out of memory during synthesis ({type(err).__name__}); "
                           "retry with shorter text or fewer concurrent jobs", type(err), retry=True)
        except Exception as err:  # one job's failure must not take the worker down
            if isinstance(err, OSError) and err.errno in DISK_FULL:
                log.error("job %s: scratch space exhausted: %s", job_id, err)
                return Failure(f"scratch space exhausted in {scratch_root()} ({err.strerror}); "
                               "the job's files were removed, retry later or give the worker more disk", OSError,
                               retry=True)
            log.exception("job %s failed", job_id)
            return Failure(f"internal error: {type(err).__name__}: {err}", type(err))
        finally:
            if job_dir is not None:
                shutil.rmtree(job_dir, ignore_errors=True)
            if out_of_memory:  # here, once the exception and the frames it holds are gone
                release_memory()
            heap.release_free_memory()  # what the job freed, back to the system (f5worker/heap.py)

    def _dispatch(self, job_id: str, request: JobRequest, job_dir: Path, timings: Timings,
                  progress: Progress | None, emit: Emit | None, sink: AudioSink | None) -> dict[str, Any]:
        if isinstance(request, SynthesisRequest):
            if request.stream:
                if emit is None:
                    raise InputError("stream", "this worker runs the classic handler: start it with STREAMING=1 to "
                                               "stream")
                sink = AudioStream(request.output_format, emit, timings)
            return self._synthesize(job_id, request, job_dir, timings, progress, sink)
        if isinstance(request, ListVoicesRequest):
            result = {"voices": self.voices.list_voices()}
        elif isinstance(request, UploadVoiceRequest):
            result = self._upload_voice(request, job_dir, timings)
        elif isinstance(request, PresignRequest):
            result = self._presign(request.key)
        else:
            result = self.voices.delete(request.name)
        return {**result, "timings_ms": timings.report()}

    def _upload_voice(self, request: UploadVoiceRequest, job_dir: Path, timings: Timings) -> dict[str, Any]:
        source = fetched(request.audio, request.audio_url, "audio_url", job_dir / "upload", timings)
        with timings.measure("store_voice"):
            return self.voices.store(request.name, source, request.transcript, request.overwrite, job_dir)

    def _presign(self, key: str) -> dict[str, Any]:
        """A fresh presigned URL for an existing output (a key under ``OUTPUTS_PREFIX``, not under
        ``VOICES_PREFIX``: only what jobs wrote is handed out)."""
        outputs, voices = self.bucket.outputs_prefix, self.bucket.voices_prefix
        if self.s3 is None:
            raise InputError("key", "presign needs a bucket, and BUCKET_NAME is not set")
        if not key.startswith(outputs) or key.startswith(voices):
            raise InputError("key", f"must be an output's key, under {outputs!r} (OUTPUTS_PREFIX)")
        if not s3.check_s3_object_exists(self.s3, self.bucket.name, key):
            raise InputError("key", f"no object {key} in bucket {self.bucket.name!r}")
        return {"bucket": self.bucket.name, "key": key, "expires_in_s": self.presign_expires_s,
                "url": s3.presigned_url(self.s3, self.bucket.name, key, self.presign_expires_s)}

    def _reference(self, request: SynthesisRequest, job_dir: Path, timings: Timings) -> tuple[Reference, bool]:
        """The job's voice, or its own reference clip (``ref_audio_base64``/``ref_audio_url``)."""
        if request.ref_audio is None and request.ref_audio_url is None:
            return self.voices.get(request.voice, request.ref_text, job_dir, timings)
        if request.ref_text is None and self.asr is None:
            raise InputError("ref_text", "is needed with a reference clip (ref_audio_base64 or ref_audio_url): "
                                         "speech recognition, which would transcribe it, is off here (ASR_ENABLED)")
        source = fetched(request.ref_audio, request.ref_audio_url, "ref_audio_url", job_dir / "ref_audio", timings)
        return self.voices.job_reference(source, request.ref_text, timings)

    def _synthesize(self, job_id: str, request: SynthesisRequest, job_dir: Path, timings: Timings,
                    progress: Progress | None, sink: AudioSink | None) -> dict[str, Any]:
        """Every text with one prepared reference; with a ``sink`` (one text), the audio goes there as it is
        made, or whole at the end with ``remove_silence``, instead of into an output file."""
        if (request.needs_recognition or request.verify) and self.asr is None:
            name = "verify" if request.verify else "return_word_timings" if request.return_word_timings else "subtitles"
            raise InputError(name, "needs speech recognition, which is off on this endpoint (ASR_ENABLED)")
        reference, cached = self._reference(request, job_dir, timings)
        scripts = [self._spoken(script, request.normalize, timings) for script in request.scripts]
        plans = [self._plan(script, reference.duration_s, reference.text, request.params.speed) for script in scripts]
        counts = [sum(isinstance(chunk, str) for chunk in chunks) for chunks in plans]
        total = sum(counts)
        live = None if request.remove_silence else sink
        waves, checks = [], []
        for chunks, done in zip(plans, itertools.accumulate(counts, initial=0), strict=False):
            def on_chunk(index: int, _count: int, part: np.ndarray, done: int = done) -> None:
                if progress is not None:
                    progress(f"chunk {done + index} of {total}")
                if live is not None:
                    try:
                        live.send(part)
                    except JobCancelled as err:
                        raise JobCancelled(f"{err} after chunk {done + index} of {total}; the chunks not started "
                                           "were dropped") from None

            retakes = self._retakes(request, timings) if request.verify else None
            with timings.measure("synthesize"):
                wave = self.model.synthesize(reference.audio, reference.text, chunks, request.params, on_chunk,
                                             keep=retakes.keep if retakes else None, early_first=live is not None)
            waves.append(audio.shorten_silences(wave, SAMPLE_RATE) if request.remove_silence else wave)
            checks.append({"verify": retakes.report()} if retakes else {})
        if sink is not None and live is None:
            sink.send(waves[0])
        spoken = [ssml.spoken_text(script) for script in scripts]
        extras = [{"normalized_text": text, **check} for text, check in zip(spoken, checks, strict=True)]
        result: dict[str, Any] = {
            "format": request.output_format,
            "sample_rate": SAMPLE_RATE,
            "seed": request.params.seed,
            "voice": None if request.ref_audio is not None or request.ref_audio_url is not None else request.voice,
            "voice_cached": cached,
        }
        durations = [round(len(wave) / SAMPLE_RATE, 3) for wave in waves]
        if sink is not None:
            result.update(duration_s=durations[0], chunks=sink.count, **extras[0])
        else:
            outputs = self._outputs(job_id, request, waves, durations, spoken, job_dir, timings)
            if request.several:
                result["outputs"] = [{"index": i, **output.to_json(), **extra}
                                     for i, (output, extra) in enumerate(zip(outputs, extras, strict=True))]
            else:
                result.update(outputs[0].to_json(), **extras[0])
        result["timings_ms"] = timings.report()
        log.info("job %s: voice=%s format=%s audio=%ss chunks=%d", job_id, request.voice, request.output_format,
                 durations, total)
        return result

    def _spoken(self, script: tuple[ssml.Part, ...], normalize: bool, timings: Timings) -> list[ssml.Part]:
        """The script's speech as it is to be spoken (normalised unless the job said not to)."""
        if not normalize:
            return list(script)
        with timings.measure("normalize"):
            return [part if isinstance(part, ssml.Pause) else self.normalizer.normalize(part, timings)
                    for part in script]

    def _plan(self, script: list[ssml.Part], reference_s: float, ref_text: str,
              speed: float) -> list[str | ssml.Pause]:
        """Every speech part cut into chunks (``TTSModel.plan``), the pauses between them kept."""
        chunks: list[str | ssml.Pause] = []
        for part in script:
            chunks += [part] if isinstance(part, ssml.Pause) else self.model.plan(reference_s, ref_text, part, speed)
        return chunks

    def _retakes(self, request: SynthesisRequest, timings: Timings) -> Retakes:
        def hear(wave: np.ndarray) -> str:
            with timings.measure("verify"):
                heard = self.asr.transcribe(wave, SAMPLE_RATE, timings)
            return self.normalizer.normalize(heard, timings)

        return Retakes(hear, lambda text: self.normalizer.normalize(text, timings), self.model.sample,
                       request.max_attempts, request.max_wer)

    def _outputs(self, job_id: str, request: SynthesisRequest, waves: list[np.ndarray], durations: list[float],
                 spoken: list[str], job_dir: Path, timings: Timings) -> list[TextOutput]:
        """Every text's audio encoded and delivered, with its word timings and subtitles if asked for."""
        paths = [job_dir / f"output-{i}.{request.output_format}" for i in range(len(waves))]
        with timings.measure("encode"):
            for wave, path in zip(waves, paths, strict=True):
                audio.write(wave, SAMPLE_RATE, request.output_format, path)
        outbox = Outbox.for_job(self.s3, self.bucket, job_id, request, timings, self.presign_expires_s)
        delivered = outbox.audio(paths, request.output_format)
        if not request.needs_recognition:
            return [TextOutput(d, file) for d, file in zip(durations, delivered, strict=True)]
        return [TextOutput(d, file, *self._word_timings(i, wave, text, request, outbox, timings))
                for i, (d, file, wave, text) in enumerate(zip(durations, delivered, waves, spoken, strict=True))]

    def _word_timings(self, index: int, wave: np.ndarray, spoken: str, request: SynthesisRequest, outbox: Outbox,
                      timings: Timings) -> tuple[list[Word] | None, Delivered | None]:
        """``words`` and/or the subtitle file: the words of ``spoken`` (the normalised text) at the
        times of Whisper's words in the generated audio (``wer.retime``; ``word_timings`` includes
        ``load_asr`` on the job that loads the model)."""
        with timings.measure("word_timings"):
            heard = self.asr.words(wave, SAMPLE_RATE, timings)
            heard_spoken = [self.normalizer.normalize(w.word, timings) if request.normalize and NON_WORD.search(w.word)
                            else w.word for w in heard]
            words = wer.retime(spoken, heard, heard_spoken, len(wave) / SAMPLE_RATE)
        subtitle_file = (None if request.subtitles is None
                         else outbox.subtitles(index, subtitles.render(words, request.subtitles), request.subtitles))
        return (words if request.return_word_timings else None), subtitle_file


def fetched(data: bytes | None, url: str | None, url_field: str, dest: Path, timings: Timings) -> Path:
    """An uploaded or per-job clip into ``dest``: ``data``, or the body of the https ``url`` through
    the SSRF guard (``url_fetch``), at most ``MAX_UPLOAD_BYTES``."""
    with timings.measure("fetch_voice"):
        if data is not None:
            dest.write_bytes(data)
            return dest
        try:
            url_fetch.fetch(url, dest, MAX_UPLOAD_BYTES)
        except url_fetch.FetchError as err:
            raise VoiceError(f"{url_field}: {err}") from err
    return dest


def wants_warm_up(setting: str, device: str) -> bool:
    """``F5TTS_WARMUP``: ``1`` always, ``0`` never, ``auto`` (default) on CUDA only. On a GPU the
    warm-up costs a fraction of a second and takes CUDA/cuBLAS set-up off the first job; on CPU
    the first-call set-up is ~0.15 s while a warm-up synthesis of the full model takes tens of
    seconds (BENCHMARKS.md), so it is not worth it there."""
    if is_true(setting):
        return True
    return setting.strip().lower() == "auto" and device.startswith("cuda")
