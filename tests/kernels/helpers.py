"""Shared cases, inputs and tolerances for the kernel-vs-twin tests."""

import importlib.util
import os

import pytest
import torch

# Kernel vs twin: the same maths, summed in another order (tiles, online softmax).
ATOL_F32, RTOL_F32 = 2e-6, 1e-5
ATOL_F64, RTOL_F64 = 1e-12, 1e-10
POISON_COUNT = -(2**40)  # counts of unwritten slots, as in tests/memory

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None

requires_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

# (device, dtype): the interpreter on CPU in both dtypes, compiled kernels on a GPU in fp32
CASES = [
    pytest.param(
        "cpu",
        dtype,
        id=f"cpu-{str(dtype)[6:]}",
        marks=pytest.mark.skipif(not INTERPRET, reason="CPU runs need TRITON_INTERPRET=1 (CUDA present)"),
    )
    for dtype in (torch.float32, torch.float64)
] + [
    pytest.param(
        "cuda", torch.float32, id="cuda-float32", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")
    )
]


def tol(dtype: torch.dtype) -> dict:
    if dtype == torch.float64:
        return {"atol": ATOL_F64, "rtol": RTOL_F64}
    return {"atol": ATOL_F32, "rtol": RTOL_F32}


class Inputs:
    """Seeded random inputs on one device and dtype."""

    def __init__(self, device: str, dtype: torch.dtype, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.device, self.dtype = device, dtype

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g, dtype=self.dtype).to(self.device)

    def unit(self, *shape: int) -> torch.Tensor:
        x = self.randn(*shape)
        return x / x.norm(dim=-1, keepdim=True)

    def counts(self, *shape: int) -> torch.Tensor:
        return torch.randint(1, 50, shape, generator=self.g).to(self.device)


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Capacity storage whose unwritten rows show if read: NaN floats, hugely negative counts."""
    fill = float("nan") if dtype.is_floating_point else POISON_COUNT
    return torch.full(shape, fill, dtype=dtype, device=device)
