"""Shared inputs for memory tests."""

import torch

from ovq.memory.op import l2_normalise


def qkv(B, H, T, D, Dv=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=dtype)
    return q, k, v


def causal_attention(q, k, v, scale):
    """Exact causal softmax attention on L2-normalised q, k with per-head scale [H] or float."""
    s = torch.as_tensor(scale, dtype=q.dtype).reshape(-1, 1, 1) if torch.is_tensor(scale) else scale
    logits = s * (l2_normalise(q) @ l2_normalise(k).transpose(-1, -2))
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1) @ v


def assert_states_equal(a, b):
    assert (a.size, a.seen, a.config) == (b.size, b.seen, b.config)
    n, P = a.size, a.pending
    assert torch.equal(a.keys[:, :, :n], b.keys[:, :, :n])
    assert torch.equal(a.values[:, :, :n], b.values[:, :, :n])
    assert torch.equal(a.counts[:, :, :n], b.counts[:, :, :n])
    assert torch.equal(a.chunk_k[:, :, :P], b.chunk_k[:, :, :P])
    assert torch.equal(a.chunk_v[:, :, :P], b.chunk_v[:, :, :P])
