"""Keeps the ``process`` marker honest: a test without it that starts a process fails.

``pytest -m "not process"`` is the fast loop only if every test that starts a worker, moto or any
other process carries the marker. An audit hook (``sys.addaudithook``) sees every process start,
whichever library makes it; while a test without the marker runs (setup, call, teardown), a start
raises ``pytest.fail``'s exception, a BaseException that ``except Exception`` in code under test
does not swallow.
"""

from __future__ import annotations

import sys

import pytest

PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty"})


class ProcessGuard:
    def __init__(self) -> None:
        self.unmarked_test: str | None = None  # the node id of the running test, when it has no marker

    def install(self) -> None:
        sys.addaudithook(self._audit)  # cannot be removed: it does nothing while unmarked_test is None

    def _audit(self, event: str, args: tuple) -> None:
        if self.unmarked_test is not None and event in PROCESS_EVENTS:
            test, self.unmarked_test = self.unmarked_test, None  # report once, let teardown clean up
            what = args[1] if event == "subprocess.Popen" else args
            pytest.fail(f"{test} started a process ({event}: {what!r}) without @pytest.mark.process", pytrace=False)
