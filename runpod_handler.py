"""RunPod serverless worker for F5-TTS voice cloning.

    python runpod_handler.py                      # on RunPod: take jobs from the queue
    python runpod_handler.py --rp_serve_api       # locally: /run, /runsync, /status on :8000
    python runpod_handler.py --test_input '{"input": {"text": "Hello."}}'
    STREAMING=1 python runpod_handler.py ...       # generator handler: "stream": true jobs stream
    WORKER_MODE=http PORT=8000 python runpod_handler.py   # a load-balancing endpoint's server (f5worker.http)

The RunPod glue only: start-up, the handlers, ``runpod.serverless.start``, or in ``WORKER_MODE=http``
the HTTP server. The model loads once, when the process starts; every job then goes through
:class:`f5worker.pipeline.Worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from f5worker.engine.scheduler import max_concurrency
from f5worker.model_files import ModelConfigError, ModelFilesCorrupt, ModelFilesMissing, ModelLoadFailed
from f5worker.pipeline import Progress, Worker
from f5worker.settings import Settings, SettingsError, load_settings

log = logging.getLogger("f5tts.worker")


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


def start_up(settings: Settings) -> Worker:
    """Everything before the first job: the worker, and the RunPod SDK imported meanwhile.

    ``import runpod`` takes ~1.2 s, nearly all of it waiting for the subprocess py-cpuinfo
    starts (``runpod.serverless.utils.rp_debugger`` calls ``cpuinfo.get_cpu_info()`` at import).
    Imported in a thread, that wait overlaps the model load instead of following it
    (BENCHMARKS.md). A failure there is only logged: ``main`` imports runpod again and raises.
    """
    os.environ["RUNPOD_LOG_LEVEL"] = settings.runpod_log_level  # the SDK reads it at import

    def import_sdk() -> None:
        try:
            import runpod  # noqa: F401
        except Exception:  # noqa: BLE001 - retried, and reported, by main()
            log.warning("background import of the runpod SDK failed", exc_info=True)

    sdk = threading.Thread(target=import_sdk, name="import-runpod", daemon=True)
    sdk.start()
    worker = Worker.from_settings(settings)
    sdk.join()
    return worker


def concurrency_modifier(settings: Settings, device: str) -> Callable[[int], int]:
    """RunPod's ``concurrency_modifier``: how many jobs this worker takes at once, ``MAX_CONCURRENCY``
    or the default for ``device``. Concurrent jobs' chunks share the model's scheduler."""
    limit = settings.engine.max_concurrency or max_concurrency(None, device)
    return lambda _current: limit


def cannot_start(err: Exception) -> NoReturn:
    """Log why and exit non-zero with ``cannot start: <why>`` on stderr, no traceback."""
    log.error("cannot start: %s", err)
    sys.exit(f"cannot start: {err}")


def serve_http(settings: Settings) -> None:
    """``WORKER_MODE=http``: the server answers ``/ping`` at once and loads the model meanwhile."""
    from f5worker.http.server import serve

    try:
        serve(settings)
    except OSError as err:  # the port is taken, or not ours to bind
        cannot_start(err)


def main() -> None:
    global WORKER
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(os.environ)  # first: it pins the caches before huggingface_hub is imported
    except SettingsError as err:
        cannot_start(err)
    logging.getLogger().setLevel(settings.log_level)
    if settings.mode == "http":
        serve_http(settings)
        return
    try:
        WORKER = start_up(settings)
    except (ModelFilesMissing, ModelConfigError, ModelFilesCorrupt, ModelLoadFailed) as err:
        cannot_start(err)

    # SIGTERM (RunPod scaling the worker down) exits normally, so temp dirs made by imported
    # libraries are removed by their finalizers instead of being left in the scratch tier.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import runpod

    concurrency = concurrency_modifier(settings, WORKER.model.device)
    log.info("taking up to %d jobs at once", concurrency(0))
    try:
        if settings.streaming:
            # /run and /runsync then get the list of everything yielded: audio items, then the result
            runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True,
                                     "concurrency_modifier": concurrency})
        else:
            runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency})
    finally:
        WORKER.model.close()


if __name__ == "__main__":
    main()
