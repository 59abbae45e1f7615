"""Chunk read: queries of one chunk attend to [dictionary (+log count bias)] ++ [causal chunk keys].

One softmax over the union (docs/ovq.md section 3). The torch twin is the CPU path and the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# CPU flash attention that also returns the log-sum-exp; lets the inference path attend to the
# dictionary and to the chunk separately and merge exactly, without a [p, n+c] bias in memory.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


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
    B, H, p, D = q.shape
    n, c = dict_k.shape[2], chunk_k.shape[2]
    qs = q * scale.view(1, H, 1, 1)  # per-head scale folded into q; attention then uses scale 1
    if n > 0 and _can_split(q, dict_k, dict_v, chunk_k, chunk_v, scale):
        square = q_offset == 0 and p == c  # then the causal mask is the kernel's own
        causal = None if square else _causal_bias(p, c, q_offset, q.dtype, q.device)
        # the count bias broadcasts over queries: a [B, H, 1, n] mask, not one expanded to [B, H, p, n],
        # spares the kernel a p-fold larger mask read (about 10% of this call at n=1024)
        out_d, lse_d = _FLASH_CPU(qs, dict_k, dict_v, attn_mask=dict_logc.unsqueeze(-2), scale=1.0)
        out_c, lse_c = _FLASH_CPU(qs, chunk_k, chunk_v, is_causal=square, attn_mask=causal, scale=1.0)
        # one softmax over the union: the chunk's share of the total mass is sigmoid(lse_c - lse_d)
        w_c = torch.sigmoid(lse_c - lse_d).unsqueeze(-1)  # [B, H, p, 1]
        return torch.lerp(out_d, out_c, w_c)
    # query i sits at chunk position q_offset+i and sees chunk keys j <= q_offset+i
    causal = _causal_bias(p, c, q_offset, q.dtype, q.device)
    if n == 0:
        return F.scaled_dot_product_attention(qs, chunk_k, chunk_v, attn_mask=causal, scale=1.0)
    bias = torch.cat([dict_logc.unsqueeze(-2).expand(B, H, p, n), causal.expand(B, H, p, c)], dim=-1)
    keys, values = torch.cat([dict_k, chunk_k], dim=2), torch.cat([dict_v, chunk_v], dim=2)
    return F.scaled_dot_product_attention(qs, keys, values, attn_mask=bias, scale=1.0)


def _causal_bias(p: int, c: int, q_offset: int, dtype, device) -> torch.Tensor:  # [p, c]
    j = torch.arange(c, device=device)
    i = torch.arange(p, device=device).unsqueeze(-1) + q_offset
    return torch.zeros(p, c, dtype=dtype, device=device).masked_fill_(j > i, float("-inf"))


def _can_split(q, dict_k, dict_v, chunk_k, chunk_v, scale) -> bool:
    """The split read is for CPU inference: the flash op's log-sum-exp carries no trusted gradient,
    and it needs value and key dims equal."""
    tensors = (q, dict_k, dict_v, chunk_k, chunk_v, scale)
    return (
        _FLASH_CPU is not None
        and q.device.type == "cpu"
        and q.shape[-1] == dict_v.shape[-1]
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


# ---- Triton kernel, appended below the twin (so its imports sit here). Forward only; triton itself is
# imported on first use, never at `import kernels`.
import functools  # noqa: E402

from ovq.kernels import _triton  # noqa: E402

tl = None  # triton.language, bound by _chunk_read_jit()


def chunk_read_triton(
    q: torch.Tensor,  # [B, H, p, D]
    dict_k: torch.Tensor,  # [B, H, n, D]
    dict_v: torch.Tensor,  # [B, H, n, Dv]
    dict_logc: torch.Tensor,  # [B, H, n]
    chunk_k: torch.Tensor,  # [B, H, q_offset+p, D]
    chunk_v: torch.Tensor,  # [B, H, q_offset+p, Dv]
    scale: torch.Tensor,  # [H]
    q_offset: int,
) -> torch.Tensor:  # [B, H, p, Dv]
    """chunk_read_torch as one flash-style Triton pass. Forward only: while autograd records, the
    torch twin runs instead (one SDPA call, which has a fused backward)."""
    operands = (q, dict_k, dict_v, dict_logc, chunk_k, chunk_v, scale)
    if _triton.recording(*operands):
        return chunk_read_torch(q, dict_k, dict_v, dict_logc, chunk_k, chunk_v, scale, q_offset)
    _triton.check_device(*operands)
    B, H, p, D = q.shape
    n, c, Dv = dict_k.shape[2], chunk_k.shape[2], chunk_v.shape[-1]
    if c != q_offset + p:
        raise ValueError(f"chunk_k holds {c} keys, expected q_offset + p = {q_offset} + {p}")
    out = q.new_empty(B, H, p, Dv)
    if p == 0:
        return out
    BLOCK_M = _triton.block(min(p, 64))
    BLOCK_N = 32 if q.dtype == torch.float64 or D > 64 else 64
    grid = (-(-p // BLOCK_M), B * H)
    _chunk_read_jit()[grid](
        q, dict_k, dict_v, dict_logc, chunk_k, chunk_v, scale, out,
        *q.stride(), *dict_k.stride(), *dict_v.stride(), *dict_logc.stride(),
        *chunk_k.stride(), *chunk_v.stride(), scale.stride(0), *out.stride(),
        H, n, q_offset, p, D, Dv,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_triton.block(D), BLOCK_DV=_triton.block(Dv),
    )  # fmt: skip
    return out


@functools.cache
def _chunk_read_jit():
    global tl
    triton, tl = _triton.load()
    # lengths vary call to call: don't compile a variant per "== 1" / "% 16 == 0" value
    return triton.jit(_chunk_read_kernel, do_not_specialize=["n", "q_offset", "p"])


def _chunk_read_kernel(
    Q, DK, DV, LOGC, CK, CV, S, OUT,
    sq_b, sq_h, sq_t, sq_d,
    sdk_b, sdk_h, sdk_n, sdk_d,
    sdv_b, sdv_h, sdv_n, sdv_d,
    slc_b, slc_h, slc_n,
    sck_b, sck_h, sck_t, sck_d,
    scv_b, scv_h, scv_t, scv_d,
    s_h,
    so_b, so_h, so_t, so_d,
    H, n, q_offset, p, D, Dv,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_M queries of one (batch, head); keys stream through in BLOCK_N tiles
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok, d_ok, dv_ok = rows < p, offs_d < D, offs_dv < Dv

    q_ptrs = Q + b * sq_b + h * sq_h + rows[:, None] * sq_t + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = q * tl.load(S + h * s_h)  # the twin scales q before its dot products too
    m_i = tl.full([BLOCK_M], float("-inf"), q.dtype)  # running row max
    l_i = tl.zeros([BLOCK_M], q.dtype)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_DV], q.dtype)

    # dictionary: every query sees every centroid, logit + log(count). Each tile holds at least one
    # real centroid, so the running max is finite after the first tile.
    for start in range(0, n, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n
        kt = tl.load(
            DK + b * sdk_b + h * sdk_h + cols[None, :] * sdk_n + offs_d[:, None] * sdk_d,
            mask=col_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # [BLOCK_D, BLOCK_N]
        v = tl.load(
            DV + b * sdv_b + h * sdv_h + cols[:, None] * sdv_n + offs_dv[None, :] * sdv_d,
            mask=col_ok[:, None] & dv_ok[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_DV]
        bias = tl.load(LOGC + b * slc_b + h * slc_h + cols * slc_n, mask=col_ok, other=float("-inf"))
        s = tl.dot(q, kt, input_precision="ieee") + bias[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        pr = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = acc * alpha[:, None] + tl.dot(pr, v, input_precision="ieee")
        m_i = m_new

    # chunk: query at chunk position q_offset+i sees keys j <= q_offset+i. Key 0 is in the first
    # tile and seen by every row, so the running max is finite after it even when n = 0.
    hi = tl.minimum(q_offset + p, q_offset + (pid_m + 1) * BLOCK_M)  # no row of this block sees past
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < hi
        kt = tl.load(
            CK + b * sck_b + h * sck_h + cols[None, :] * sck_t + offs_d[:, None] * sck_d,
            mask=col_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        v = tl.load(
            CV + b * scv_b + h * scv_h + cols[:, None] * scv_t + offs_dv[None, :] * scv_d,
            mask=col_ok[:, None] & dv_ok[None, :],
            other=0.0,
        )
        seen = col_ok[None, :] & (cols[None, :] <= q_offset + rows[:, None])
        s = tl.where(seen, tl.dot(q, kt, input_precision="ieee"), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        pr = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = acc * alpha[:, None] + tl.dot(pr, v, input_precision="ieee")
        m_i = m_new

    o_ptrs = OUT + b * so_b + h * so_h + rows[:, None] * so_t + offs_dv[None, :] * so_d
    tl.store(o_ptrs, acc / l_i[:, None], mask=row_ok[:, None] & dv_ok[None, :])
