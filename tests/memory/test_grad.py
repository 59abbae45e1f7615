"""Gradients flow through the dictionary means into k and v (docs/ovq.md 4.5)."""

import torch

from ovq.memory import OVQConfig, ovq_attention
from tests.memory.helpers import qkv


def test_gradcheck_through_reads_and_folds_float64():
    q, k, v = qkv(1, 2, 13, 3, seed=1)
    scale = torch.tensor([1.5, 4.0], dtype=torch.float64)
    config = OVQConfig(chunk_size=4, capacity=5)  # three folds, a partial last chunk
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v, scale))
    assert torch.autograd.gradcheck(lambda q, k, v, s: ovq_attention(q, k, v, s, config)[0], inputs)


def test_gradcheck_across_calls_through_the_returned_state():
    q, k, v = qkv(1, 1, 10, 3, seed=2)
    config = OVQConfig(chunk_size=4, capacity=5)

    def two_calls(q, k, v):
        out1, state = ovq_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], 2.0, config)
        out2, state = ovq_attention(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], 2.0, config, state)
        n = state.size  # rows past size are unwritten (poisoned in these tests)
        return torch.cat([out1, out2], 2), state.keys[:, :, :n], state.values[:, :, :n], state.pending_k

    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(two_calls, inputs)


def test_memory_gradient_reaches_earlier_chunks_unless_detached():
    q, k, v = qkv(1, 1, 12, 4, seed=3)
    for detach, expect_grad in [(False, True), (True, False)]:
        config = OVQConfig(chunk_size=4, capacity=6, detach_memory=detach)
        kk, vv = k.clone().requires_grad_(), v.clone().requires_grad_()
        out, _ = ovq_attention(q, kk, vv, 3.0, config)
        out[:, :, 8:].sum().backward()  # chunk 2 sees chunks 0, 1 only through the dictionary
        assert bool(vv.grad[:, :, :8].abs().sum() > 0) == expect_grad
        assert bool(kk.grad[:, :, :8].abs().sum() > 0) == expect_grad


def test_autograd_leaves_the_given_state_untouched_and_matches_the_inplace_path():
    q, k, v = qkv(1, 2, 30, 4, seed=4)
    config = OVQConfig(chunk_size=8, capacity=10)
    with torch.no_grad():
        _, state = ovq_attention(q[:, :, :11], k[:, :, :11], v[:, :, :11], 2.0, config)
    before = state.clone()
    kk = k[:, :, 11:].clone().requires_grad_()
    out_g, state_g = ovq_attention(q[:, :, 11:], kk, v[:, :, 11:], 2.0, config, state)
    for name, t in before.tensors().items():
        assert torch.equal(t.nan_to_num(), getattr(state, name).nan_to_num()), name
    with torch.no_grad():
        out_n, state_n = ovq_attention(q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], 2.0, config, before)
    # the inference read merges two flash passes; the autograd read is one SDPA call
    torch.testing.assert_close(out_g.detach(), out_n, rtol=0, atol=1e-12)
    n = state_n.size
    assert torch.equal(state_g.keys[:, :, :n].detach(), state_n.keys[:, :, :n])  # bit for bit
    assert torch.equal(state_g.values[:, :, :n].detach(), state_n.values[:, :, :n])
    assert torch.equal(state_g.counts[:, :, :n], state_n.counts[:, :, :n])
