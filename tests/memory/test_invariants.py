"""The five invariants of docs/ovq.md section 6, one test each (plus variants)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ovq.memory import OVQConfig, OVQState, ovq_attention
from ovq.memory.op import l2_normalise
from ovq.memory.reference import reference_ovq_attention
from tests.memory.helpers import assert_states_equal, causal_attention, qkv


@pytest.mark.parametrize("L", [1, 4, 16, 63])
def test_1_linear_schedule_with_room_for_every_token_is_causal_softmax_attention(L):
    q, k, v = qkv(2, 3, 63, 48)
    scale = torch.tensor([0.5, 3.0, 9.0], dtype=torch.float64)
    out, state = ovq_attention(q, k, v, scale, OVQConfig(chunk_size=L, capacity=64, schedule="linear"))
    torch.testing.assert_close(out, causal_attention(q, k, v, scale), rtol=0, atol=1e-12)
    assert state.size == (63 // L) * L
    assert torch.all(state.counts[:, :, : state.size] == 1)


def test_2_every_centroid_is_the_mean_of_its_members_and_counts_sum_to_tokens_folded():
    B, H, T, D, Dv, L = 2, 2, 150, 6, 5, 10
    q, k, v = qkv(B, H, T, D, Dv)
    config = OVQConfig(chunk_size=L, capacity=24)
    out, state = ovq_attention(q, k, v, 2.0, config)
    _, _, _, _, _, assign = reference_ovq_attention(q, k, v, 2.0, config)
    kn = l2_normalise(k)
    folded = (T // L) * L
    assert state.folded == folded
    assert torch.all(state.counts[:, :, : state.size].sum(-1) == folded)
    for b in range(B):
        for h in range(H):
            slots = torch.tensor(assign[b][h])
            for slot in range(state.size):
                members = (slots == slot).nonzero().flatten()
                assert len(members) == state.counts[b, h, slot]
                torch.testing.assert_close(
                    state.keys[b, h, slot], kn[b, h, members].mean(0), rtol=0, atol=1e-12
                )
                torch.testing.assert_close(
                    state.values[b, h, slot], v[b, h, members].mean(0), rtol=0, atol=1e-12
                )


@given(cuts=st.lists(st.integers(0, 97), max_size=12), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_3_any_split_of_the_stream_gives_the_same_outputs_and_final_state(cuts, dtype):
    q, k, v = qkv(2, 2, 97, 8, dtype=dtype, seed=3)
    config = OVQConfig(chunk_size=8, capacity=13)
    whole, whole_state = ovq_attention(q, k, v, 4.0, config)
    bounds = sorted({0, 97, *cuts})
    pieces, state = [], None
    for a, b in zip(bounds, bounds[1:]):
        out, state = ovq_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], 4.0, config, state)
        pieces.append(out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(torch.cat(pieces, 2), whole, rtol=0, atol=tol)
    assert_states_equal(state, whole_state)


def test_3_one_token_at_a_time_equals_one_call():
    q, k, v = qkv(1, 3, 70, 16, seed=4)
    config = OVQConfig(chunk_size=16, capacity=20)
    whole, whole_state = ovq_attention(q, k, v, 6.0, config)
    state, outs = None, []
    for t in range(70):
        out, state = ovq_attention(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], 6.0, config, state
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=0, atol=1e-12)
    assert_states_equal(state, whole_state)


def test_4_state_bytes_are_constant_and_storage_is_never_reallocated():
    config = OVQConfig(chunk_size=16, capacity=32)
    state = OVQState.empty(config, 1, 2, 8, dtype=torch.float32)
    nbytes = state.nbytes
    pointers = {name: t.data_ptr() for name, t in state.tensors().items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for T in [1, 5, 16, 100, 1000, 3000]:
            q, k, v = (torch.randn(1, 2, T, 8, generator=g) for _ in range(3))
            _, state = ovq_attention(q, k, v, 5.0, config, state)
            assert state.nbytes == nbytes
            assert {name: t.data_ptr() for name, t in state.tensors().items()} == pointers
    assert state.seen == 4122 and state.size == config.size_after(4122 - 4122 % 16)
    expected = (2 * 32 * 8 * 4) * 2 + 2 * 32 * 8 + (2 * 16 * 8 * 4) * 2
    assert nbytes == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_5_float32_and_float64_both_work_and_agree(dtype):
    q, k, v = qkv(2, 2, 40, 8, dtype=torch.float64, seed=5)
    config = OVQConfig(chunk_size=8, capacity=12)
    ref, ref_state = ovq_attention(q, k, v, 3.0, config)
    out, state = ovq_attention(q.to(dtype), k.to(dtype), v.to(dtype), 3.0, config)
    assert out.dtype == dtype and state.dtype == dtype and state.counts.dtype == torch.int64
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    assert torch.equal(state.counts, ref_state.counts)
