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
    B, H, N, D = keys.shape
    Dv = values.shape[-1]
    # new slots start empty; their seed is one of their members
    keys[:, :, n:M], values[:, :, n:M], counts[:, :, n:M] = 0, 0, 0
    # rows of the flattened [B*H*N, D] buffers: whole-row index ops are far cheaper than gathers
    rows = (assign + N * torch.arange(B * H, device=assign.device).view(B, H, 1)).flatten()  # [B*H*L]
    flat_k, flat_v, flat_c = keys.view(-1, D), values.view(-1, Dv), counts.view(-1)
    sum_k = chunk_k.new_zeros(B * H * N, D).index_add_(0, rows, chunk_k.reshape(-1, D))
    sum_v = chunk_v.new_zeros(B * H * N, Dv).index_add_(0, rows, chunk_v.reshape(-1, Dv))
    members = counts.new_zeros(B * H * N).index_add_(0, rows, torch.ones_like(rows))
    # per token, the new mean of its slot; tokens sharing a slot write identical rows
    c_old = flat_c.index_select(0, rows)  # [B*H*L]
    c_new = c_old + members.index_select(0, rows)
    co, cn = c_old.unsqueeze(-1).to(keys.dtype), c_new.unsqueeze(-1).to(keys.dtype)
    flat_k.index_copy_(0, rows, (co * flat_k.index_select(0, rows) + sum_k.index_select(0, rows)) / cn)
    flat_v.index_copy_(0, rows, (co * flat_v.index_select(0, rows) + sum_v.index_select(0, rows)) / cn)
    flat_c.index_copy_(0, rows, c_new)
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


# ---- Triton kernel, appended below the twin (so its imports sit here). Triton itself is imported on
# first use, never at `import kernels`.
import functools  # noqa: E402

from ovq.kernels import _triton  # noqa: E402

tl = None  # triton.language, bound by _fold_jit()


def fold_update_triton(
    keys: torch.Tensor,  # [B, H, N, D]
    values: torch.Tensor,  # [B, H, N, Dv]
    counts: torch.Tensor,  # [B, H, N] int64
    n: int,
    chunk_k: torch.Tensor,  # [B, H, L, D]
    chunk_v: torch.Tensor,  # [B, H, L, Dv]
    assign: torch.Tensor,  # [B, H, L]
    M: int,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fold_update_torch in place, as one Triton kernel: one program per (batch*head, block of
    slots) walks the chunk in position order and adds each token to its slot, so the sums are
    deterministic (no float atomics) and in the twin's order. Out of place (autograd), the torch twin
    runs instead."""
    if not inplace:
        return fold_update_torch(keys, values, counts, n, chunk_k, chunk_v, assign, M, False)
    _triton.check_device(keys, values, counts, chunk_k, chunk_v, assign)
    B, H, L, D = chunk_k.shape
    Dv = values.shape[-1]
    if M == 0:
        return keys, values, counts
    BLOCK_S = 16
    grid = (-(-M // BLOCK_S), B * H)
    _fold_jit()[grid](
        keys, values, counts, chunk_k, chunk_v, assign,
        *keys.stride(), *values.stride(), *counts.stride(), *chunk_k.stride(), *chunk_v.stride(),
        *assign.stride(),
        H, n, M, L, D, Dv,
        BLOCK_S=BLOCK_S, BLOCK_D=_triton.block(D), BLOCK_DV=_triton.block(Dv),
        F32=keys.dtype == torch.float32,
        enable_fp_fusion=False,  # the twin rounds c*mu before adding the sum: no fused multiply-add
    )  # fmt: skip
    return keys, values, counts


@functools.cache
def _fold_jit():
    global tl
    triton, tl = _triton.load()
    return triton.jit(_fold_kernel, do_not_specialize=["n", "M", "L"])


def _fold_kernel(
    K, V, C, CK, CV, A,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sc_b, sc_h, sc_n,
    sck_b, sck_h, sck_t, sck_d,
    scv_b, scv_h, scv_t, scv_d,
    sa_b, sa_h, sa_t,
    H, n, M, L, D, Dv,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, F32: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_S slots of one (batch, head); it alone writes them
    pid_s, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    slots = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    slot_ok, d_ok, dv_ok = slots < M, offs_d < D, offs_dv < Dv

    sum_k = tl.zeros([BLOCK_S, BLOCK_D], K.dtype.element_ty)
    sum_v = tl.zeros([BLOCK_S, BLOCK_DV], V.dtype.element_ty)
    members = tl.zeros([BLOCK_S], tl.int32)
    # every token of the chunk, in position order, into the slot it is assigned to (if it is one of
    # this block's): each slot adds its members in the order of the twin's sequential scatter.
    # Adding 0.0 to the other rows leaves them exact.
    for t in range(0, L):
        a = tl.load(A + b * sa_b + h * sa_h + t * sa_t)
        hit = slots == a  # [BLOCK_S]
        row_k = tl.load(CK + b * sck_b + h * sck_h + t * sck_t + offs_d * sck_d, mask=d_ok, other=0.0)
        row_v = tl.load(CV + b * scv_b + h * scv_h + t * scv_t + offs_dv * scv_d, mask=dv_ok, other=0.0)
        sum_k += tl.where(hit[:, None], row_k[None, :], 0.0)
        sum_v += tl.where(hit[:, None], row_v[None, :], 0.0)
        members += hit.to(tl.int32)

    # new slots [n, M) start at count 0 and centroid 0 (their seed is a member); never read them
    old = slot_ok & (slots < n)
    k_ptrs = K + b * sk_b + h * sk_h + slots[:, None] * sk_n + offs_d[None, :] * sk_d
    v_ptrs = V + b * sv_b + h * sv_h + slots[:, None] * sv_n + offs_dv[None, :] * sv_d
    c_ptrs = C + b * sc_b + h * sc_h + slots * sc_n
    c_old = tl.load(c_ptrs, mask=old, other=0)
    mu_k = tl.load(k_ptrs, mask=old[:, None] & d_ok[None, :], other=0.0)
    mu_v = tl.load(v_ptrs, mask=old[:, None] & dv_ok[None, :], other=0.0)
    c_new = c_old + members
    touched = members > 0
    co, cn = c_old.to(K.dtype.element_ty)[:, None], c_new.to(K.dtype.element_ty)[:, None]
    cn = tl.where(touched[:, None], cn, 1.0)  # memberless slots are not divided (new ones stay 0)
    if F32:  # `/` may lower to an approximate fp32 division on GPU; torch's is IEEE-rounded
        new_k = tl.math.div_rn(co * mu_k + sum_k, cn)
        new_v = tl.math.div_rn(co * mu_v + sum_v, cn)
    else:  # fp64 division is IEEE-rounded anyway (and div_rn is fp32 only)
        new_k = (co * mu_k + sum_k) / cn
        new_v = (co * mu_v + sum_v) / cn
    new_k = tl.where(touched[:, None], new_k, 0.0)
    new_v = tl.where(touched[:, None], new_v, 0.0)
    # untouched old slots are left alone, bit for bit; every new slot is written
    write = slot_ok & (touched | (slots >= n))
    tl.store(k_ptrs, new_k, mask=write[:, None] & d_ok[None, :])
    tl.store(v_ptrs, new_v, mask=write[:, None] & dv_ok[None, :])
    tl.store(c_ptrs, c_new, mask=write)
