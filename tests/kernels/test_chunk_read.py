"""chunk_read_triton against its twin chunk_read_torch."""

import pytest
import torch

from ovq.kernels.chunk_read import chunk_read_torch, chunk_read_triton
from tests.kernels.helpers import CASES, Inputs, poisoned, requires_triton, tol

pytestmark = requires_triton

N, L = 150, 64  # capacity and chunk buffers the operands are views of, as in memory/op.py

# (B, H, p, q_offset, n, D, Dv)
SHAPES = [
    pytest.param(2, 3, 63, 0, 37, 48, 48, id="chunk63-n37-D48"),
    pytest.param(2, 3, 1, 20, 37, 48, 5, id="decode-p1-offset20-Dv5"),
    pytest.param(1, 2, 7, 9, 0, 48, 24, id="empty-dict-offset9"),
    pytest.param(1, 2, 63, 0, 0, 5, 48, id="first-chunk-D5"),
    pytest.param(1, 1, 20, 41, 131, 16, 16, id="multi-tile-dict"),
]


def operands(B, H, p, q_offset, n, D, Dv, device, dtype, seed=0):
    x = Inputs(device, dtype, seed)
    c = q_offset + p
    dict_k, dict_v = poisoned((B, H, N, D), dtype, device), poisoned((B, H, N, Dv), dtype, device)
    dict_k[:, :, :n], dict_v[:, :, :n] = x.unit(B, H, n, D), x.randn(B, H, n, Dv)
    chunk_k, chunk_v = poisoned((B, H, L, D), dtype, device), poisoned((B, H, L, Dv), dtype, device)
    chunk_k[:, :, :c], chunk_v[:, :, :c] = x.unit(B, H, c, D), x.randn(B, H, c, Dv)
    q = x.unit(B, H, p + 5, D)[:, :, 2 : 2 + p]  # a strided view, as the op slices its queries
    logc = x.counts(B, H, n).to(dtype).log()
    scale = (torch.arange(H, dtype=dtype, device=device) + 1) * 3.0  # sharp and soft heads
    return q, dict_k[:, :, :n], dict_v[:, :, :n], logc, chunk_k[:, :, :c], chunk_v[:, :, :c], scale, q_offset


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("B,H,p,q_offset,n,D,Dv", SHAPES)
def test_kernel_matches_twin(B, H, p, q_offset, n, D, Dv, device, dtype):
    args = operands(B, H, p, q_offset, n, D, Dv, device, dtype)
    out = chunk_read_triton(*args)
    assert out.shape == (B, H, p, Dv) and out.dtype == dtype
    torch.testing.assert_close(out, chunk_read_torch(*args), **tol(dtype))


@pytest.mark.parametrize("device,dtype", CASES[:1] + CASES[2:])
def test_while_autograd_records_the_twin_runs(device, dtype):
    args = list(operands(1, 2, 5, 3, 9, 48, 24, device, dtype))
    leaves = [a.detach().clone().requires_grad_() for a in args[:7]]
    out = chunk_read_triton(*leaves, args[7])
    assert out.grad_fn is not None
    expected = chunk_read_torch(*leaves, args[7])
    assert torch.equal(out, expected)
    with torch.no_grad():  # grad mode off: the kernel runs even on leaves that require grad
        torch.testing.assert_close(chunk_read_triton(*leaves, args[7]), expected.detach(), **tol(dtype))
