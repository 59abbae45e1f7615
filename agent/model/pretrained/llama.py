"""LlamaLM: the Llama / Qwen2 decoder forward pass in plain torch, numerically as HF computes it.

Pre-norm blocks of (causal self-attention with RoPE and GQA, SwiGLU MLP), RMSNorm, optional
tied head. Module names equal HF parameter names, so a Checkpoint loads with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovq.agent.model.pretrained.checkpoint import Checkpoint
from ovq.agent.model.pretrained.config import LlamaConfig, rope_inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalized in float32 whatever the weight dtype, then scaled in it (as HF's LlamaRMSNorm).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x [B,H,T,D] by angle positions[..., t] * inv_freq[i] on each pair (x_i, x_{i+D/2}).

    HF's rotate_half convention (pairs are the two halves, not adjacent entries).
    positions: [T] or [B,T] integer positions; inv_freq: [D/2] float32.
    """
    angles = positions.float()[..., None] * inv_freq  # [(B,)T,D/2], float32 for long contexts
    emb = torch.cat([angles, angles], dim=-1)  # [(B,)T,D]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    if emb.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # [B,1,T,D]: broadcast over heads
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        C, Hq, Hkv, D = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
        self.Hq, self.Hkv, self.D = Hq, Hkv, D
        bias = config.attention_bias
        self.q_proj = nn.Linear(C, Hq * D, bias=bias)
        self.k_proj = nn.Linear(C, Hkv * D, bias=bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=bias)
        self.o_proj = nn.Linear(Hq * D, C, bias=False)
        with torch.device("cpu"):  # real numbers even while the model is built on the meta device
            self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.Hq, self.D).transpose(1, 2)  # [B,Hq,T,D]
        k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # [B,Hkv,T,D]
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # [B,Hkv,T,D]
        o = self.attend(q, k, v, positions)  # [B,Hq,T,D]
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.Hq * self.D))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Full causal attention over the T positions given: q [B,Hq,T,D], k, v [B,Hkv,T,D] -> [B,Hq,T,D].

        The one place that decides what a query sees; RoPE is applied here, to q and k.
        """
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        # GQA: query head h reads KV head h // (Hq / Hkv), as HF's repeat_kv.
        group = self.Hq // self.Hkv
        k = k.repeat_interleave(group, dim=1)  # [B,Hq,T,D]
        v = v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(D)


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        # Given a weight, Embedding skips its random init, which on the meta device (from_checkpoint)
        # imports torch._dynamo: 2.5-5 s of the time `ovq chat` takes to get ready. Real weights (a
        # model built to be trained or tested) get the usual init.
        weight = torch.empty(config.vocab_size, config.d_model)
        if weight.device.type != "meta":
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, _weight=weight)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_eps)


class LlamaLM(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Body(config)  # HF names: model.embed_tokens, model.layers.N..., model.norm
        self.lm_head = (
            None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, dtype: torch.dtype = torch.float32) -> LlamaLM:
        """The model with the checkpoint's weights cast (copied) to `dtype`, in eval mode."""
        with torch.device("meta"):  # no random init of weights that are overwritten at once
            model = cls(ckpt.config)
        state = {name: w.to(dtype, copy=True) for name, w in ckpt.weights.items()}
        model.load_state_dict(state, strict=True, assign=True)
        for layer in model.model.layers:
            layer.self_attn.inv_freq = rope_inv_freq(ckpt.config)  # buffers are not in the state dict
        return model.eval()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B,T] -> logits [B,T,V] (float32). positions [T] or [B,T]; default 0..T-1."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device)
        x = self.model.embed_tokens(tokens)  # [B,T,C]
        for layer in self.model.layers:
            x = layer(x, positions)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, head).float()
