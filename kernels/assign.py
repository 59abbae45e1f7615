"""Coverage + assignment: which chunk tokens seed new slots, and where every other token goes.

docs/ovq.md 4.1-4.3. Selections carry no gradient.
"""

from __future__ import annotations

import torch


def coverage_assign_torch(
    chunk_k: torch.Tensor,  # [B, H, L, D] normalised keys of a complete chunk
    dict_k: torch.Tensor,  # [B, H, n, D] centroid keys before this chunk
    m: int,  # new slots this chunk opens
) -> tuple[torch.Tensor, torch.Tensor]:  # seeds [B, H, m], assign [B, H, L] (int64 slots)
    return select_and_assign(chunk_k.detach(), dict_k.detach(), m, _rowmax_torch)


def _rowmax_torch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ y^T).max(dim=-1): values and first argmax (ties: lowest index), [B, H, L] each."""
    return first_max(x @ y.transpose(-1, -2))


def first_max(s: torch.Tensor, G: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """s.max(dim=-1) (values, and the first index of the max) in two cheap passes.

    On CPU a max that tracks indices runs about 8x slower than `amax`. So: `amax` over blocks of G
    columns, the index of the first block that holds the row's max, then an index search inside
    that block only. The result is the same, ties included (the lowest index wins).
    """
    *lead, R = s.shape
    R0 = R - R % G  # whole blocks; the tail (R % G columns) is compared separately, no padding copy
    if R0 == 0:
        return s.max(dim=-1)
    blocks = s[..., :R0].view(*lead, R0 // G, G)  # [..., R0/G, G]
    best, b = blocks.amax(dim=-1).max(dim=-1)  # first block holding the max
    inner = torch.gather(blocks, -2, b[..., None, None].expand(*lead, 1, G)).squeeze(-2)  # [..., G]
    arg = b * G + inner.argmax(dim=-1)
    if R0 < R:
        tail_best, tail_arg = s[..., R0:].max(dim=-1)
        later = tail_best > best  # strictly: on a tie the earlier block keeps the lower index
        best, arg = torch.where(later, tail_best, best), torch.where(later, tail_arg + R0, arg)
    return best, arg


def select_and_assign(chunk_k, dict_k, m: int, rowmax) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection rules, shared by the twin and the kernel (which differ only in `rowmax`)."""
    B, H, L, D = chunk_k.shape
    n = dict_k.shape[2]
    if n:
        coverage, assign = rowmax(chunk_k, dict_k)  # [B, H, L] each
    else:
        # empty dictionary: token 0 is the first seed, coverage is similarity to it
        coverage = rowmax(chunk_k, chunk_k[:, :, :1])[0]
        coverage[:, :, 0] = float("-inf")
    if m == 0:
        if n == 0:
            raise ValueError("a chunk folded into an empty dictionary must open at least one slot")
        return assign.new_empty(B, H, 0), assign
    # smallest coverage first; the stable sort keeps earlier positions first among ties
    seeds = torch.sort(coverage, dim=-1, stable=True).indices[:, :, :m]  # [B, H, m]
    seed_k = torch.gather(chunk_k, 2, seeds.unsqueeze(-1).expand(-1, -1, -1, D))  # [B, H, m, D]
    best_new, slot_new = rowmax(chunk_k, seed_k)  # first max: lowest new slot
    # old slots are numbered below new ones, so a tie stays with the old slot
    assign = n + slot_new if n == 0 else torch.where(best_new > coverage, n + slot_new, assign)
    own = torch.arange(n, n + m, device=chunk_k.device).expand(B, H, m)
    return seeds, assign.scatter(2, seeds, own)


# ---- Triton kernel, appended below the twin (so its imports sit here). Triton itself is imported on
# first use, never at `import kernels`.
import functools  # noqa: E402

from ovq.kernels import _triton  # noqa: E402

tl = None  # triton.language, bound by _rowmax_jit()


def coverage_assign_triton(
    chunk_k: torch.Tensor,  # [B, H, L, D]
    dict_k: torch.Tensor,  # [B, H, n, D]
    m: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # seeds [B, H, m], assign [B, H, L] (int64 slots)
    """coverage_assign_torch with its two similarity-max passes (chunk x dictionary, chunk x seeds)
    as one fused Triton kernel each; the seed sort and the final where/scatter stay in torch."""
    chunk_k, dict_k = chunk_k.detach(), dict_k.detach()
    _triton.check_device(chunk_k, dict_k)
    return select_and_assign(chunk_k, dict_k, m, _rowmax)


def _rowmax(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ y^T).max(dim=-1) without the [L, R] matrix: values and first argmax, [B, H, L] each."""
    B, H, L, D = x.shape
    R = y.shape[2]
    best = x.new_empty(B, H, L)
    arg = torch.empty(B, H, L, dtype=torch.int64, device=x.device)
    if L == 0:
        return best, arg
    BLOCK_L = _triton.block(min(L, 64))
    BLOCK_R = 32 if x.dtype == torch.float64 or D > 64 else 64
    grid = (-(-L // BLOCK_L), B * H)
    _rowmax_jit()[grid](
        x, y, best, arg,
        *x.stride(), *y.stride(), *best.stride(), *arg.stride(),
        H, L, R, D,
        BLOCK_L=BLOCK_L, BLOCK_R=BLOCK_R, BLOCK_D=_triton.block(D),
    )  # fmt: skip
    return best, arg


@functools.cache
def _rowmax_jit():
    global tl
    triton, tl = _triton.load()
    return triton.jit(_rowmax_kernel, do_not_specialize=["L", "R"])


def _rowmax_kernel(
    X, Y, BEST, ARG,
    sx_b, sx_h, sx_t, sx_d,
    sy_b, sy_h, sy_r, sy_d,
    sb_b, sb_h, sb_t,
    sa_b, sa_h, sa_t,
    H, L, R, D,
    BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_L rows of x of one (batch, head) against all R rows of y, tile by tile
    pid_l, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok, d_ok = rows < L, offs_d < D
    x = tl.load(
        X + b * sx_b + h * sx_h + rows[:, None] * sx_t + offs_d[None, :] * sx_d,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    best = tl.full([BLOCK_L], float("-inf"), x.dtype)
    arg = tl.zeros([BLOCK_L], tl.int64)
    for start in range(0, R, BLOCK_R):
        cols = start + offs_r
        col_ok = cols < R
        yt = tl.load(
            Y + b * sy_b + h * sy_h + cols[None, :] * sy_r + offs_d[:, None] * sy_d,
            mask=col_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # [BLOCK_D, BLOCK_R]
        s = tl.where(col_ok[None, :], tl.dot(x, yt, input_precision="ieee"), float("-inf"))
        tile_best = tl.max(s, 1)
        tile_arg = start + tl.argmax(s, 1, tie_break_left=True)  # first max within the tile
        # strictly greater: on a tie the earlier tile, hence the lowest slot, wins
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        arg = tl.where(better, tile_arg.to(tl.int64), arg)
    tl.store(BEST + b * sb_b + h * sb_h + rows * sb_t, best, mask=row_ok)
    tl.store(ARG + b * sa_b + h * sa_h + rows * sa_t, arg, mask=row_ok)
