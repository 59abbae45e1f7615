"""Chunk-step kernels for OVQ attention. Each op has a pure-torch twin of the same signature:
the twin is the CPU path and the oracle the Triton kernels are tested against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kernels.assign import coverage_assign_torch
from kernels.chunk_read import chunk_read_torch
from kernels.fold import fold_update_torch

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class ChunkOps:
    """The three ops of one chunk step, from one backend."""

    name: str
    chunk_read: Callable
    coverage_assign: Callable
    fold_update: Callable


TORCH_OPS = ChunkOps("torch", chunk_read_torch, coverage_assign_torch, fold_update_torch)


def get_ops(backend: str) -> ChunkOps:
    """The chunk-step ops of a backend ('torch' or 'triton')."""
    if backend == "torch":
        return TORCH_OPS
    if backend == "triton":
        raise ValueError(
            "backend='triton' is not available in this build: the Triton chunk kernels are not "
            "implemented yet; use backend='torch' (or 'auto')"
        )
    raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")


def triton_available() -> bool:
    """True when the Triton chunk kernels can run here."""
    return False
