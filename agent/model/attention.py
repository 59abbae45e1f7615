"""Softmax attention over a bounded window of recent tokens: the `swa` layer (RoPE, window W) and the
`full` / `nope` baselines (causal attention over at most C tokens, with or without RoPE).

Streaming state is a ring buffer of the last W keys/values, allocated once. Keys are stored without
rotation and RoPE is applied at read time with positions relative to the block being read, so angles
stay small and exact however long the stream runs (RoPE depends only on position differences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WindowState:
    """Ring buffer of the last `window` keys/values: slot of stream position t is t % window."""

    keys: torch.Tensor  # [B, H, W, D] unrotated
    values: torch.Tensor  # [B, H, W, D]
    pos: int  # tokens seen
    bounded: bool  # True: a full-attention layer that refuses to pass `window` tokens

    @property
    def window(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def scalars(self) -> dict[str, int]:
        """The ints a snapshot records beside the tensors."""
        return {"pos": self.pos}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values}

    def clone(self) -> WindowState:
        return WindowState(self.keys.detach().clone(), self.values.detach().clone(), self.pos, self.bounded)

    def detach(self) -> WindowState:
        return WindowState(self.keys.detach(), self.values.detach(), self.pos, self.bounded)

    def recent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the last min(pos, W) positions, oldest first: [B, H, w, D]."""
        W = self.window
        w = min(self.pos, W)
        idx = torch.arange(self.pos - w, self.pos, device=self.keys.device) % W
        return self.keys.index_select(2, idx), self.values.index_select(2, idx)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x [B, H, T, D] by angle position * base^(-2i/D)."""
    D = x.shape[-1]
    half = D // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) * 2 / D)
    angles = (positions.to(torch.float64).unsqueeze(-1) * inv_freq).to(x.dtype)  # [T, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1) if D % 2 else rotated


class WindowAttention(nn.Module):
    """Causal multi-head attention where each query sees the last `window` tokens (itself included).

    `bounded=True` makes it full causal attention over a context of at most `window` tokens (the
    `full` baseline): a stream longer than that raises instead of silently forgetting.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int,
        use_rope: bool = True,
        bounded: bool = False,
        rope_base=1e4,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.n_heads, self.head_dim, self.window = n_heads, d_model // n_heads, window
        self.use_rope, self.bounded, self.rope_base = use_rope, bounded, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, B: int, dtype=torch.float32, device=None) -> WindowState:
        device = self.qkv.weight.device if device is None else device
        shape = (B, self.n_heads, self.window, self.head_dim)
        return WindowState(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            0,
            self.bounded,
        )

    def forward(self, x: torch.Tensor, state: WindowState | None) -> tuple[torch.Tensor, WindowState | None]:
        """`state` None: a fresh stream whose state is not wanted (training), so no cache is built
        (for a `full` layer that would be its whole bound, copied under autograd); returns None."""
        B, T, _ = x.shape
        H, D, W = self.n_heads, self.head_dim, self.window
        pos = 0 if state is None else state.pos
        if self.bounded and pos + T > W:
            raise ValueError(
                f"full-attention layer context is bounded at {W} tokens; {pos} seen + {T} new exceeds it"
            )
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        if state is None:
            w, keys, values = 0, k, v
        else:
            past_k, past_v = state.recent()
            w = past_k.shape[2]
            keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)  # positions pos-w .. pos+T-1
        out = torch.cat([self._block(q, keys, values, w, b, min(b + W, T)) for b in range(0, T, W)], dim=2)
        y = self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))  # [B, H, T, D] -> [B, T, H*D]
        return y, None if state is None else self._write(state, k, v, T)

    def _block(self, q, keys, values, w, b, e) -> torch.Tensor:
        """Queries b..e-1 of this call; keys indexed from the start of `keys` (stream pos - w)."""
        qi = torch.arange(w + b, w + e, device=q.device)  # query indices into keys
        lo = max(0, w + b - self.window + 1)
        kj = torch.arange(lo, w + e, device=q.device)
        qb, kb, vb = q[:, :, b:e], keys[:, :, lo : w + e], values[:, :, lo : w + e]
        if self.use_rope:  # positions relative to the block's first key
            qb, kb = rope(qb, qi - lo, self.rope_base), rope(kb, kj - lo, self.rope_base)
        visible = (kj <= qi.unsqueeze(-1)) & (qi.unsqueeze(-1) - kj < self.window)  # [e-b, keys]
        return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=visible)

    def _write(self, state: WindowState, k, v, T) -> WindowState:
        W = self.window
        n = min(T, W)
        slots = torch.arange(state.pos + T - n, state.pos + T, device=k.device) % W
        new_k, new_v = k[:, :, T - n :].to(state.keys.dtype), v[:, :, T - n :].to(state.values.dtype)
        if torch.is_grad_enabled() and (new_k.requires_grad or state.keys.requires_grad):
            keys = state.keys.clone().index_copy(2, slots, new_k)
            values = state.values.clone().index_copy(2, slots, new_v)
            return WindowState(keys, values, state.pos + T, state.bounded)
        state.keys.index_copy_(2, slots, new_k.detach())
        state.values.index_copy_(2, slots, new_v.detach())
        state.pos += T
        return state
