"""fold_update_triton against its twin fold_update_torch: the updated keys, values and counts, in
place; untouched slots and rows past M bit for bit."""

import pytest
import torch

from ovq.kernels.assign import coverage_assign_torch
from ovq.kernels.fold import fold_update_torch, fold_update_triton
from tests.kernels.helpers import CASES, Inputs, poisoned, requires_triton, tol

pytestmark = requires_triton

# (B, H, L, N, n, M, D, Dv)
SHAPES = [
    pytest.param(2, 3, 63, 37, 30, 35, 48, 5, id="L63-N37-D48-Dv5"),
    pytest.param(2, 3, 16, 37, 0, 4, 48, 48, id="first-chunk"),
    pytest.param(1, 2, 16, 37, 10, 26, 48, 24, id="every-token-seeds"),
    pytest.param(2, 2, 63, 70, 70, 70, 5, 7, id="full-no-new-slot-D5"),
    pytest.param(1, 2, 16, 100, 90, 92, 16, 16, id="most-slots-untouched"),
]


def operands(B, H, L, N, n, M, D, Dv, device, dtype, seed=0):
    """Capacity buffers (rows >= n poisoned), a chunk, and the twin's own assignment of it."""
    x = Inputs(device, dtype, seed)
    keys, values = poisoned((B, H, N, D), dtype, device), poisoned((B, H, N, Dv), dtype, device)
    counts = poisoned((B, H, N), torch.int64, device)
    keys[:, :, :n], values[:, :, :n] = x.unit(B, H, n, D), x.randn(B, H, n, Dv)
    counts[:, :, :n] = x.counts(B, H, n)
    chunk_k, chunk_v = x.unit(B, H, L, D), x.randn(B, H, L, Dv)
    _, assign = coverage_assign_torch(chunk_k, keys[:, :, :n], M - n)
    return (keys, values, counts), (n, chunk_k, chunk_v, assign, M)


def clone(state):
    return tuple(t.clone() for t in state)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("B,H,L,N,n,M,D,Dv", SHAPES)
def test_kernel_matches_twin_in_place(B, H, L, N, n, M, D, Dv, device, dtype):
    state, rest = operands(B, H, L, N, n, M, D, Dv, device, dtype)
    before, want = clone(state), clone(state)
    got = fold_update_triton(*state, *rest, True)
    assert all(g is s for g, s in zip(got, state))  # the given buffers, updated in place
    fold_update_torch(*want, *rest, True)
    keys, values, counts = got
    assert torch.equal(counts, want[2])
    torch.testing.assert_close(keys[:, :, :M], want[0][:, :, :M], **tol(dtype))
    torch.testing.assert_close(values[:, :, :M], want[1][:, :, :M], **tol(dtype))
    # untouched old slots and rows past M: bit for bit as before (rows past M still poisoned)
    assign = rest[3]
    hit = torch.zeros(B, H, N, dtype=torch.bool, device=device).scatter(2, assign, True)
    hit[:, :, n:M] = True
    for new, old in zip(got, before):
        assert torch.equal(new[~hit].nan_to_num(), old[~hit].nan_to_num())
    assert torch.isnan(keys[:, :, M:]).all() and torch.isnan(values[:, :, M:]).all()


@pytest.mark.parametrize("device,dtype", CASES)
def test_deterministic(device, dtype):
    # many tokens per slot: the sum order is fixed (position order), so repeated runs agree bit for bit
    state, rest = operands(1, 2, 63, 37, 5, 6, 48, 24, device, dtype)
    runs = [fold_update_triton(*clone(state), *rest, True) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("device,dtype", CASES[:1] + CASES[2:])
def test_not_in_place_runs_the_twin(device, dtype):
    state, rest = operands(1, 2, 16, 37, 10, 14, 48, 24, device, dtype)
    before = clone(state)
    got = fold_update_triton(*state, *rest, False)
    want = fold_update_torch(*state, *rest, False)
    for g, w, s, b in zip(got, want, state, before):
        if device == "cuda":  # the twin's scatter_add sums with atomics there: equal up to rounding
            torch.testing.assert_close(g.nan_to_num(), w.nan_to_num(), **tol(dtype))
        else:
            assert torch.equal(g.nan_to_num(), w.nan_to_num())
        assert torch.equal(s.nan_to_num(), b.nan_to_num())  # the given buffers are untouched
