"""`OVQAttention`: the OVQ attention layer (projections, heads, learned positive per-head scale)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ovq.memory.config import OVQConfig
from ovq.memory.op import ovq_attention
from ovq.memory.state import OVQState


class OVQAttention(nn.Module):
    """Multi-head OVQ attention with no positional encoding (NoPE), `(x, state) -> (y, state)`.

    x: [B, T, d_model]. Heads have dimension head_dim (default d_model // n_heads); the logit scale
    of each head is exp(log_scale), initialised at `init_scale` (default sqrt(head_dim)), since
    q and k are unit vectors and their dot products lie in [-1, 1].
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        config: OVQConfig,
        head_dim: int | None = None,
        init_scale: float | None = None,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be >= 1, got {d_model}, {n_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass head_dim")
            head_dim = d_model // n_heads
        self.config, self.n_heads, self.head_dim = config, n_heads, head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        s0 = math.sqrt(head_dim) if init_scale is None else init_scale
        if not s0 > 0:
            raise ValueError(f"init_scale must be positive, got {s0}")
        self.log_scale = nn.Parameter(torch.full((n_heads,), math.log(s0)))

    @property
    def scale(self) -> torch.Tensor:
        """Positive per-head logit scale [H]."""
        return self.log_scale.exp()

    def init_state(self, B: int, dtype: torch.dtype = torch.float32, device=None) -> OVQState:
        device = self.q_proj.weight.device if device is None else device
        return OVQState.empty(self.config, B, self.n_heads, self.head_dim, dtype=dtype, device=device)

    def forward(
        self, x: torch.Tensor, state: OVQState | None = None, backend: str = "auto"
    ) -> tuple[torch.Tensor, OVQState]:
        if x.dim() != 3 or x.shape[-1] != self.q_proj.in_features:
            raise ValueError(f"x must be [B, T, {self.q_proj.in_features}], got {tuple(x.shape)}")
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, D).transpose(1, 2)  # [B, T, H*D] -> [B, H, T, D]

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        o, state = ovq_attention(q, k, v, self.scale, self.config, state, backend)
        o = o.transpose(1, 2).reshape(B, T, H * D)  # [B, H, T, D] -> [B, T, H*D]
        return self.o_proj(o), state
