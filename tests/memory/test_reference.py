"""The vectorised op against the readable reference (the spec in code), and the rules of section 4."""

import pytest
import torch

from ovq.memory import OVQConfig, ovq_attention
from ovq.memory.reference import reference_ovq_attention
from tests.memory.helpers import causal_attention, qkv

AWKWARD = [
    # B, H, T, D, Dv, L, N, schedule
    (2, 3, 63, 48, 48, 16, 37, "plateau"),
    (1, 2, 200, 8, 5, 7, 23, "plateau"),
    (2, 1, 129, 3, 7, 2, 5, "plateau"),
    (1, 2, 90, 48, 16, 9, 1000, "plateau"),
    (2, 2, 63, 48, 48, 16, 40, "linear"),
]


@pytest.mark.parametrize("B,H,T,D,Dv,L,N,schedule", AWKWARD)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_op_equals_reference_on_awkward_shapes(B, H, T, D, Dv, L, N, schedule, dtype, tol):
    q, k, v = qkv(B, H, T, D, Dv, dtype=dtype, seed=T)
    scale = torch.linspace(0.5, 8.0, H, dtype=dtype)
    config = OVQConfig(chunk_size=L, capacity=N, schedule=schedule)
    out, state = ovq_attention(q, k, v, scale, config)
    ref_out, keys, values, counts, size, _ = reference_ovq_attention(q, k, v, scale, config)
    assert state.size == size
    assert torch.equal(state.counts[:, :, :size], counts[:, :, :size])
    torch.testing.assert_close(out, ref_out, rtol=0, atol=tol)
    torch.testing.assert_close(state.keys[:, :, :size], keys[:, :, :size], rtol=0, atol=tol)
    torch.testing.assert_close(state.values[:, :, :size], values[:, :, :size], rtol=0, atol=tol)


def test_first_chunk_is_plain_causal_attention_over_the_chunk():
    q, k, v = qkv(1, 2, 16, 8)
    out, _ = ovq_attention(q, k, v, 4.0, OVQConfig(chunk_size=16, capacity=4))
    torch.testing.assert_close(out, causal_attention(q, k, v, 4.0), rtol=0, atol=1e-12)


def test_queries_see_the_dictionary_with_log_count_bias_and_their_chunk_causally():
    # Second chunk's queries: dictionary from chunk 0 (bias log count) ++ causal keys of chunk 1.
    q, k, v = qkv(1, 1, 8, 4, seed=9)
    config = OVQConfig(chunk_size=4, capacity=3)
    out, state = ovq_attention(q, k, v, 2.0, config)
    from ovq.memory.op import l2_normalise

    _, state0 = ovq_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], 2.0, config)
    n = state0.size
    qn, kn = l2_normalise(q)[0, 0], l2_normalise(k)[0, 0]
    for t in range(4, 8):
        logits = torch.cat(
            [
                2.0 * state0.keys[0, 0, :n] @ qn[t] + state0.counts[0, 0, :n].double().log(),
                2.0 * kn[4 : t + 1] @ qn[t],
            ]
        )
        vals = torch.cat([state0.values[0, 0, :n], v[0, 0, 4 : t + 1]])
        torch.testing.assert_close(out[0, 0, t], torch.softmax(logits, 0) @ vals, rtol=0, atol=1e-12)


def test_ties_go_to_earlier_positions_and_lower_slots():
    # All keys identical: every coverage ties, every assignment ties.
    k = torch.ones(1, 1, 8, 2, dtype=torch.float64)
    q = torch.randn(1, 1, 8, 2, dtype=torch.float64)
    v = torch.arange(16, dtype=torch.float64).reshape(1, 1, 8, 2)
    config = OVQConfig(chunk_size=4, capacity=4, schedule="plateau")  # S(4)=2, S(8)=2
    _, state = ovq_attention(q, k, v, 1.0, config)
    _, _, _, _, _, assign = reference_ovq_attention(q, k, v, 1.0, config)
    # chunk 0: token 0 then token 1 seed slots 0, 1; tokens 2, 3 tie -> slot 0. chunk 1: no new slot.
    assert assign[0][0] == [0, 1, 0, 0, 0, 0, 0, 0]
    assert state.counts[0, 0, :2].tolist() == [7, 1]
    torch.testing.assert_close(state.values[0, 0, 0], v[0, 0, [0, 2, 3, 4, 5, 6, 7]].mean(0))
    torch.testing.assert_close(state.values[0, 0, 1], v[0, 0, 1])


def test_new_slots_are_seeded_by_least_covered_tokens_in_order_of_coverage():
    # Chunk 0 seeds from e0; chunk 1 holds keys at decreasing similarity to it: the least covered
    # (most dissimilar) token must seed the first new slot.
    e = torch.eye(3, dtype=torch.float64)
    chunk0 = torch.stack([e[0], e[0], e[0], e[0]])
    chunk1 = torch.stack([e[0], e[0] + 0.2 * e[1], -e[0], e[0] + 2.0 * e[2]])
    k = torch.cat([chunk0, chunk1]).reshape(1, 1, 8, 3)
    v = torch.arange(24, dtype=torch.float64).reshape(1, 1, 8, 3)
    config = OVQConfig(chunk_size=4, capacity=6, schedule="linear")
    _, state = ovq_attention(k, k, v, 1.0, config)  # S(4)=4, S(8)=6: chunk 1 opens 2 slots
    from ovq.memory.op import l2_normalise

    kn = l2_normalise(k)[0, 0]
    assert state.size == 6
    torch.testing.assert_close(state.keys[0, 0, 4], kn[6])  # coverage -1: least covered
    torch.testing.assert_close(state.keys[0, 0, 5], kn[7])  # coverage 1/sqrt(5)
