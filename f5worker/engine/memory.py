"""Out-of-memory errors and what to do after one: shared by the scheduler (which splits a batch
that ran out) and the job pipeline (which fails the job and frees what it left)."""

from __future__ import annotations

import gc

import torch

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def release_memory() -> None:
    """After an out-of-memory error: collect what the failed job left (tensors held by reference
    cycles) and hand the CUDA allocator's cached blocks back, so the next job starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
