"""Fold: the exact cumulative-mean update of centroid keys, values and counts (docs/ovq.md 4.4).

    mu <- (count * mu + sum of members) / (count + members);  count += members

Centroids stay differentiable functions (means) of the keys and values; counts carry no gradient.
"""

from __future__ import annotations

import torch


def fold_update_torch(
    keys: torch.Tensor,  # [B, H, N, D]  capacity buffers; rows < n in use
    values: torch.Tensor,  # [B, H, N, Dv]
    counts: torch.Tensor,  # [B, H, N] int64
    n: int,  # slots in use before the fold
    chunk_k: torch.Tensor,  # [B, H, L, D]
    chunk_v: torch.Tensor,  # [B, H, L, Dv]
    assign: torch.Tensor,  # [B, H, L] slot of each chunk token in [0, M); seeds in their own slot
    M: int,  # slots in use after the fold
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # keys, values, counts (capacity shapes)
    """Fold one chunk into rows [0, M). In place: only the assigned slots are touched and the given
    buffers are returned. Otherwise (autograd): new buffers are returned, the given ones untouched.
    Both evaluate the same expression on the same operands, so they agree bit for bit."""
    if inplace:
        return _fold_inplace(keys, values, counts, n, chunk_k, chunk_v, assign, M)
    return _fold_functional(keys, values, counts, n, chunk_k, chunk_v, assign, M)


def _member_sums(chunk_k, chunk_v, assign, M, counts):
    B, H, L, D = chunk_k.shape
    Dv = chunk_v.shape[-1]
    sum_k = chunk_k.new_zeros(B, H, M, D).scatter_add(2, assign.unsqueeze(-1).expand(-1, -1, -1, D), chunk_k)
    sum_v = chunk_v.new_zeros(B, H, M, Dv).scatter_add(
        2, assign.unsqueeze(-1).expand(-1, -1, -1, Dv), chunk_v
    )
    members = counts.new_zeros(B, H, M).scatter_add_(2, assign, torch.ones_like(assign))
    return sum_k, sum_v, members


def _fold_inplace(keys, values, counts, n, chunk_k, chunk_v, assign, M):
    D, Dv = keys.shape[-1], values.shape[-1]
    # new slots start empty; their seed is one of their members
    keys[:, :, n:M], values[:, :, n:M], counts[:, :, n:M] = 0, 0, 0
    sum_k, sum_v, members = _member_sums(chunk_k, chunk_v, assign, M, counts)
    ik = assign.unsqueeze(-1).expand(-1, -1, -1, D)  # [B, H, L, D]
    iv = assign.unsqueeze(-1).expand(-1, -1, -1, Dv)
    # per token, the new mean of its slot; tokens sharing a slot write identical rows
    c_old = counts.gather(2, assign)  # [B, H, L]
    c_new = c_old + members.gather(2, assign)
    co, cn = c_old.unsqueeze(-1).to(keys.dtype), c_new.unsqueeze(-1).to(keys.dtype)
    keys.scatter_(2, ik, (co * keys.gather(2, ik) + sum_k.gather(2, ik)) / cn)
    values.scatter_(2, iv, (co * values.gather(2, iv) + sum_v.gather(2, iv)) / cn)
    counts.scatter_(2, assign, c_new)
    return keys, values, counts


def _fold_functional(keys, values, counts, n, chunk_k, chunk_v, assign, M):
    B, H, _, D = keys.shape
    Dv, m = values.shape[-1], M - n
    sum_k, sum_v, members = _member_sums(chunk_k, chunk_v, assign, M, counts)
    # rows [n, M) are new slots: start them empty without reading their (unwritten) storage
    old_k = torch.cat([keys[:, :, :n], keys.new_zeros(B, H, m, D)], dim=2)  # [B, H, M, D]
    old_v = torch.cat([values[:, :, :n], values.new_zeros(B, H, m, Dv)], dim=2)
    old_c = torch.cat([counts[:, :, :n], counts.new_zeros(B, H, m)], dim=2)
    new_c = old_c + members
    co, cn = old_c.unsqueeze(-1).to(keys.dtype), new_c.unsqueeze(-1).to(keys.dtype)
    touched = (members > 0).unsqueeze(-1)
    # untouched centroids are kept as they are rather than recomputed as (c*mu)/c
    new_k = torch.where(touched, (co * old_k + sum_k) / cn.clamp_min(1), old_k)
    new_v = torch.where(touched, (co * old_v + sum_v) / cn.clamp_min(1), old_v)
    rest = slice(M, None)
    return (
        torch.cat([new_k, keys[:, :, rest]], dim=2),
        torch.cat([new_v, values[:, :, rest]], dim=2),
        torch.cat([new_c, counts[:, :, rest]], dim=2),
    )
