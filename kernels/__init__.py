"""Chunk-step kernels for OVQ attention. Each op has a pure-torch twin of the same signature:
the twin is the CPU path and the oracle the Triton kernels are tested against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ovq.kernels import _triton
from ovq.kernels.assign import coverage_assign_torch, coverage_assign_triton
from ovq.kernels.chunk_read import chunk_read_torch, chunk_read_triton
from ovq.kernels.fold import fold_update_torch, fold_update_triton

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class ChunkOps:
    """The three ops of one chunk step, from one backend."""

    name: str
    chunk_read: Callable
    coverage_assign: Callable
    fold_update: Callable


TORCH_OPS = ChunkOps("torch", chunk_read_torch, coverage_assign_torch, fold_update_torch)
# Forward kernels; while autograd records, the read and the fold run their torch twins (kernels/README.md).
TRITON_OPS = ChunkOps("triton", chunk_read_triton, coverage_assign_triton, fold_update_triton)


def get_ops(backend: str) -> ChunkOps:
    """The chunk-step ops of a backend ('torch' or 'triton')."""
    if backend == "torch":
        return TORCH_OPS
    if backend == "triton":
        reason = _triton.unavailable_reason()
        if reason is not None:
            raise ValueError(
                f"backend='triton' is not available here: {reason}; use backend='torch' or 'auto'"
            )
        return TRITON_OPS
    raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")


def triton_available() -> bool:
    """True when the Triton chunk kernels can run here: triton imports, and there is a CUDA device or
    TRITON_INTERPRET=1. When only the import fails, warns once ('auto' then uses torch)."""
    reason = _triton.unavailable_reason()
    if reason is not None and (_triton.interpreting() or torch.cuda.is_available()):
        _triton.warn_fallback_once(reason)
    return reason is None
