"""The worker behind the server: loading (``/ping`` 204), ready (200), or unable to serve (503)."""

from __future__ import annotations

import logging
import threading

from f5worker.http.errors import LOADING_RETRY_AFTER_S, ApiError
from f5worker.model_files import ModelConfigError, ModelFilesCorrupt, ModelFilesMissing, ModelLoadFailed
from f5worker.pipeline import Worker
from f5worker.settings import Settings

log = logging.getLogger("f5tts.worker")
START_ERRORS = (ModelFilesMissing, ModelConfigError, ModelFilesCorrupt, ModelLoadFailed)


class ServerState:
    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.error: str | None = None  # why the worker cannot serve
        self.loaded = threading.Event()  # set once loading ended, either way

    def load(self, settings: Settings) -> None:
        """Build the worker (the model load); run in a thread while the server answers ``/ping``."""
        try:
            self.worker = Worker.from_settings(settings)
        except START_ERRORS as err:
            log.error("cannot start: %s", err)
            self.error = f"cannot start: {err}"
        except Exception as err:  # reported by /ping and every route, not a crash
            log.exception("cannot start")
            self.error = f"cannot start: {type(err).__name__}: {err}"
        finally:
            self.loaded.set()

    def close(self) -> None:
        """Stop the engine: what runs finishes, what waits fails; from then on the worker cannot serve."""
        worker, self.worker = self.worker, None
        self.error = self.error or "the worker is shutting down"
        if worker is not None:
            worker.model.close()

    @property
    def status(self) -> str:
        if self.worker is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    def ready_worker(self) -> Worker:
        """The worker, or the 503 that says why there is none."""
        worker = self.worker
        if worker is not None:
            return worker
        if self.error is not None:
            raise ApiError(503, self.error, "server_error", "worker_unavailable")
        raise ApiError(503, "the model is loading; retry shortly", "server_error", "model_loading",
                       headers={"Retry-After": str(LOADING_RETRY_AFTER_S)})
