"""The C heap's free pages go back to the system after each job (``f5worker/heap.py``)."""

from __future__ import annotations

import ctypes
import os

from bench.load import rss_mib
from f5worker import heap

BLOCK = 64 * 1024  # under glibc's mmap threshold (128 KiB at least): served from the heap, not mmap
BLOCKS = 1024  # 64 MiB


def test_release_free_memory_hands_freed_heap_pages_back():
    """Freed blocks below a live one stay resident (``free`` only shrinks the heap from its top)
    until ``malloc_trim`` hands their pages back."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # resident now
    *freed, live = blocks
    try:
        for block in freed:
            libc.free(block)
        resident = rss_mib(os.getpid())
        assert heap.release_free_memory()
        assert resident - rss_mib(os.getpid()) >= 0.75 * BLOCK * BLOCKS / 2**20
    finally:
        libc.free(live)


def test_every_job_ends_with_the_heap_trimmed(make_worker, bucket_env, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1))
    worker = make_worker(bucket_env)
    assert "audio_key" in worker.run({"id": "ok", "input": {"text": "Hi.", "voice": "alice", "nfe_step": 2}})
    assert len(calls) == 1
    assert "error" in worker.run({"id": "bad", "input": {"text": ""}})
    assert len(calls) == 2
