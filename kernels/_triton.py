"""Lazy access to Triton for the chunk kernels.

`import kernels` never imports triton: each kernel module binds `triton.language` on first use.
Triton runs on a CUDA device, or on CPU under its interpreter (TRITON_INTERPRET=1, slow but exact).
"""

from __future__ import annotations

import os
import warnings

import torch

_warned = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run here, or None when they can."""
    if not (torch.cuda.is_available() or interpreting()):
        return "there is no CUDA device and TRITON_INTERPRET is not '1' (Triton's CPU interpreter)"
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install failing at import
        return f"triton could not be imported ({type(e).__name__}: {e})"
    return None


def warn_fallback_once(reason: str) -> None:
    """One warning per process when 'auto' would have used Triton but cannot."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"OVQ: Triton kernels unavailable, using the torch ops: {reason}", stacklevel=3)


def load():
    """(triton, triton.language); a ValueError saying why when Triton cannot run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(f"the Triton chunk kernels cannot run: {reason}; use backend='torch' or 'auto'")
    import triton
    import triton.language as tl

    return triton, tl


def check_device(*xs: torch.Tensor) -> None:
    if interpreting():
        return
    for x in xs:
        if not x.is_cuda:
            raise ValueError(
                f"the Triton chunk kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {x.device}"
            )


def block(x: int, lo: int = 16) -> int:
    """Next power of two >= x, at least `lo` (tl.dot needs tiles of 16 or more)."""
    return max(lo, 1 << max(0, x - 1).bit_length())


def recording(*xs: torch.Tensor) -> bool:
    """Autograd would record an op on xs: the Triton kernels are forward only."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)
