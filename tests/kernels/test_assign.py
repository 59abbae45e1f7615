"""coverage_assign_triton against its twin coverage_assign_torch: the same seeds and assignment,
exactly."""

import pytest
import torch

from ovq.kernels.assign import coverage_assign_torch, coverage_assign_triton
from tests.kernels.helpers import CASES, Inputs, poisoned, requires_triton

pytestmark = requires_triton

N = 150  # capacity buffer the dictionary is a view of

# (B, H, L, n, m, D)
SHAPES = [
    pytest.param(2, 3, 63, 37, 5, 48, id="L63-n37-m5-D48"),
    pytest.param(2, 3, 16, 0, 4, 48, id="empty-dict"),
    pytest.param(1, 2, 63, 0, 63, 48, id="empty-dict-every-token-seeds"),
    pytest.param(2, 2, 63, 70, 0, 5, id="no-new-slot-D5"),
    pytest.param(1, 2, 16, 131, 3, 16, id="multi-tile-dict"),
]


def operands(B, H, L, n, D, device, dtype, seed=0):
    x = Inputs(device, dtype, seed)
    dict_k = poisoned((B, H, N, D), dtype, device)
    dict_k[:, :, :n] = x.unit(B, H, n, D)
    return x.unit(B, H, L, D), dict_k[:, :, :n]


def assert_same(got, want):
    (seeds, assign), (seeds_t, assign_t) = got, want
    assert seeds.dtype == assign.dtype == torch.int64
    assert torch.equal(seeds, seeds_t)
    assert torch.equal(assign, assign_t)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("B,H,L,n,m,D", SHAPES)
def test_kernel_matches_twin(B, H, L, n, m, D, device, dtype):
    chunk_k, dict_k = operands(B, H, L, n, D, device, dtype)
    assert_same(coverage_assign_triton(chunk_k, dict_k, m), coverage_assign_torch(chunk_k, dict_k, m))


@pytest.mark.parametrize("device,dtype", CASES)
def test_exact_ties_go_to_the_lowest_slot_and_the_earliest_token(device, dtype):
    # one-hot keys: every dot product is exactly 0 or 1 in any summation order, so ties are real
    # ties in both implementations. 100 slots over 16 directions: each direction in several tiles.
    B, H, L, n, D = 1, 2, 40, 100, 16
    g = torch.Generator().manual_seed(1)
    eye = torch.eye(D, dtype=dtype, device=device)
    chunk_k = eye[torch.randint(0, D, (B, H, L), generator=g).to(device)]
    dict_k = eye[torch.randint(0, D - 4, (B, H, n), generator=g).to(device)]  # 4 directions uncovered
    for m in (0, 6):
        seeds, assign = coverage_assign_triton(chunk_k, dict_k, m)
        assert_same((seeds, assign), coverage_assign_torch(chunk_k, dict_k, m))
    covered = (chunk_k @ dict_k.transpose(-1, -2)).max(-1).values == 1
    first_slot = (chunk_k @ dict_k.transpose(-1, -2)).argmax(-1)  # torch: first max
    fresh = torch.ones_like(covered).scatter(2, seeds, False)
    assert torch.equal(assign[covered & fresh], first_slot[covered & fresh])


@pytest.mark.parametrize("device,dtype", CASES[:1] + CASES[2:])
def test_empty_dictionary_needs_a_new_slot(device, dtype):
    chunk_k, dict_k = operands(1, 1, 8, 0, 16, device, dtype)
    with pytest.raises(ValueError, match="at least one slot"):
        coverage_assign_triton(chunk_k, dict_k, 0)
