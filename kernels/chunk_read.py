"""Chunk read: queries of one chunk attend to [dictionary (+log count bias)] ++ [causal chunk keys].

One softmax over the union (docs/ovq.md section 3). The torch twin is the CPU path and the oracle;
it runs as one fused SDPA call with an additive bias (log counts, causal -inf), so it has a
flash-style backward on CPU and GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_read_torch(
    q: torch.Tensor,  # [B, H, p, D]   normalised queries at chunk offsets q_offset .. q_offset+p-1
    dict_k: torch.Tensor,  # [B, H, n, D]   centroid keys in use
    dict_v: torch.Tensor,  # [B, H, n, Dv]
    dict_logc: torch.Tensor,  # [B, H, n]      log(count) per centroid
    chunk_k: torch.Tensor,  # [B, H, q_offset+p, D]  normalised keys of the chunk so far
    chunk_v: torch.Tensor,  # [B, H, q_offset+p, Dv]
    scale: torch.Tensor,  # [H] positive logit scale
    q_offset: int,
) -> torch.Tensor:  # [B, H, p, Dv]
    B, H, p, _ = q.shape
    n, c = dict_k.shape[2], chunk_k.shape[2]
    # query i sits at chunk position q_offset+i and sees chunk keys j <= q_offset+i
    j = torch.arange(c, device=q.device)
    i = torch.arange(p, device=q.device).unsqueeze(-1) + q_offset
    causal = torch.zeros(p, c, dtype=q.dtype, device=q.device).masked_fill_(j > i, float("-inf"))
    if n:
        bias = torch.cat([dict_logc.unsqueeze(-2).expand(B, H, p, n), causal.expand(B, H, p, c)], dim=-1)
        keys, values = torch.cat([dict_k, chunk_k], dim=2), torch.cat([dict_v, chunk_v], dim=2)
    else:
        bias, keys, values = causal, chunk_k, chunk_v
    qs = q * scale.view(1, H, 1, 1)  # per-head scale folded into q; SDPA then uses scale 1
    return F.scaled_dot_product_attention(qs, keys, values, attn_mask=bias, scale=1.0)
