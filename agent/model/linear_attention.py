"""Gated linear attention (the `linear` baseline), in pure torch.

Per head, with L2-normalised q, k and a data-dependent scalar forget gate g_t in (0, 1):
    S_t = g_t S_{t-1} + k_t v_t^T,   o_t = q_t S_t
A fixed-size state S [D, Dv] that every token overwrites: the forgetting that OVQ is built to avoid.
Training runs the chunked parallel form; streaming carries S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 64  # parallel-form chunk length: intra-chunk work is C^2, inter-chunk work is C D^2


@dataclass
class LinearState:
    S: torch.Tensor  # [B, H, D, Dv] float32 (float64 for float64 models)
    pos: int

    @property
    def nbytes(self) -> int:
        return self.S.numel() * self.S.element_size()

    def scalars(self) -> dict[str, int]:
        """The ints a snapshot records beside the tensors."""
        return {"pos": self.pos}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"S": self.S}

    def clone(self) -> LinearState:
        return LinearState(self.S.detach().clone(), self.pos)

    def detach(self) -> LinearState:
        return LinearState(self.S.detach(), self.pos)


class GatedLinearAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, n_heads)
        nn.init.constant_(self.gate.bias, 4.0)  # start with slow forgetting: g = sigmoid(4) ~ 0.98
        self.norm = nn.RMSNorm(self.head_dim)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, B: int, dtype=torch.float32, device=None) -> LinearState:
        device = self.qkv.weight.device if device is None else device
        return LinearState(
            torch.zeros(B, self.n_heads, self.head_dim, self.head_dim, dtype=dtype, device=device), 0
        )

    def forward(self, x: torch.Tensor, state: LinearState) -> tuple[torch.Tensor, LinearState]:
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        log_g = F.logsigmoid(self.gate(x)).transpose(1, 2)  # [B, H, T]
        S, outs = state.S, []
        for c in range(0, T, CHUNK):
            o, S = _chunk(
                q[:, :, c : c + CHUNK],
                k[:, :, c : c + CHUNK],
                v[:, :, c : c + CHUNK],
                log_g[:, :, c : c + CHUNK],
                S,
            )
            outs.append(o)
        out = self.norm(torch.cat(outs, 2)) if outs else v
        y = self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))
        return y, LinearState(S, state.pos + T)


def _chunk(q, k, v, log_g, S):
    """One chunk of the parallel form. a_t = sum_{tau<=t} log g_tau within the chunk."""
    a = log_g.cumsum(-1)  # [B, H, C]
    C = a.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (a.unsqueeze(-1) - a.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()  # [B, H, C, C]
    o = (q @ k.transpose(-1, -2) * decay) @ v + (q * a.exp().unsqueeze(-1)) @ S
    to_end = (a[..., -1:] - a).exp().unsqueeze(-1)  # decay from each token to the chunk's end
    S = a[..., -1, None, None].exp() * S + (k * to_end).transpose(-1, -2) @ v
    return o, S
