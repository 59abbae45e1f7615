"""first_max, the two-pass row max of the CPU coverage step, is torch's max(dim=-1) exactly:
the same values and the same first index, ties and a ragged last block included."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ovq.kernels.assign import first_max


@settings(max_examples=60, deadline=None)
@given(
    R=st.integers(1, 300),
    G=st.sampled_from([1, 7, 64]),
    levels=st.sampled_from([2, 5, None]),  # few distinct values: many ties; None: continuous
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_equals_torch_max(R, G, levels, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 5, R)
    if levels is None:
        s = torch.randn(shape, generator=g, dtype=dtype)
    else:
        s = torch.randint(0, levels, shape, generator=g).to(dtype)
    s[0, 0, 0] = float("-inf")  # a row with nothing to choose: index 0, as torch gives
    best, arg = first_max(s, G)
    want = s.max(dim=-1)
    assert best.dtype == dtype and arg.dtype == torch.int64
    assert torch.equal(best, want.values)
    assert torch.equal(arg, want.indices)


def test_the_max_in_the_ragged_tail_wins_only_when_strictly_larger():
    s = torch.zeros(1, 1, 2, 130)
    s[0, 0, 0, 129] = 1.0  # only in the tail (columns 128-129 with G=64)
    s[0, 0, 1, [5, 129]] = 1.0  # tied between a whole block and the tail: the earlier index
    best, arg = first_max(s, 64)
    assert arg.flatten().tolist() == [129, 5]
    assert best.flatten().tolist() == [1.0, 1.0]
