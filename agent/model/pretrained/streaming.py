"""RetrofitLM: a pretrained Llama-family model reading an unbounded stream with a bounded state.

The weights are the checkpoint's, unchanged; only attention differs from `LlamaLM`: every layer reads
its sinks, its exact window and (in memory layers) its OVQ dictionary (retrofit.py). The runtime
drives it like the hybrid model: `(tokens, state) -> (logits, state)`, one typed state per layer,
allocated once at its bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ovq.agent.model.pretrained.chat_template import CHATML, TemplateChat
from ovq.agent.model.pretrained.checkpoint import Checkpoint
from ovq.agent.model.pretrained.config import LlamaConfig, rope_inv_freq
from ovq.agent.model.pretrained.llama import LlamaLM
from ovq.agent.model.pretrained.memory_read import MemoryReadParams
from ovq.agent.model.pretrained.retrofit import (
    LayerPlan,
    RetrofitConfig,
    Rotary,
    WindowMemoryState,
    window_memory_attention,
)
from ovq.memory.stats import dictionary_stats

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RetrofitModelConfig:
    """A pretrained model as the runtime runs it: its shape, the retrofit, the weights' dtype."""

    llama: LlamaConfig
    retrofit: RetrofitConfig
    dtype: str = "bfloat16"  # weights and activations; attention and its state stay float32
    # how turns are written (the checkpoint's template; its text is in the checkpoint's fingerprint)
    chat: TemplateChat = field(default_factory=lambda: TemplateChat(CHATML), compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        self.retrofit.layer_mask(self.llama.n_layers)  # memory_layers must fit the model

    @property
    def vocab_size(self) -> int:
        return self.llama.vocab_size

    @property
    def plans(self) -> list[LayerPlan]:
        return LayerPlan.resolve(self.retrofit, self.llama.n_layers, self.llama.max_context)

    @property
    def kinds(self) -> list[str]:
        """Each layer's kind as snapshots record it: memory, window or full."""
        return [p.kind for p in self.plans]

    def to_json(self) -> str:
        return json.dumps(
            {
                "llama": json.loads(self.llama.to_json()),
                "retrofit": self.retrofit.to_dict(),
                "dtype": self.dtype,
            },
            sort_keys=True,
        )


@dataclass
class RetrofitState:
    """The whole streaming state: one WindowMemoryState per layer, bounded by the config."""

    layers: list[WindowMemoryState]
    pos: int  # tokens seen

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.layers)

    def clone(self) -> RetrofitState:
        return RetrofitState([s.clone() for s in self.layers], self.pos)


class RetrofitLM(nn.Module):
    def __init__(self, llama: LlamaLM, config: RetrofitModelConfig, backend: str = "torch") -> None:
        super().__init__()
        self.llama, self.config, self.backend = llama, config, backend
        self._plans = config.plans
        self.memory_read: MemoryReadParams | None = None  # learned dictionary reading (memory_read.py)
        # [D/2] rotary frequencies, float64 for exact angles at any stream position
        self.register_buffer("inv_freq", rope_inv_freq(config.llama).to(torch.float64), persistent=False)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: Checkpoint,
        retrofit: RetrofitConfig,
        dtype: str = "bfloat16",
        chat: TemplateChat | None = None,
    ) -> RetrofitLM:
        config = RetrofitModelConfig(ckpt.config, retrofit, dtype, chat or TemplateChat(CHATML))
        return cls(LlamaLM.from_checkpoint(ckpt, DTYPES[dtype]), config)

    @property
    def device(self) -> torch.device:
        return self.llama.model.embed_tokens.weight.device

    def init_state(self, B: int = 1, dtype: torch.dtype = torch.float32, device=None) -> RetrofitState:
        c = self.config.llama
        device = self.device if device is None else device
        return RetrofitState(
            [WindowMemoryState.allocate(p, B, c.n_kv_heads, c.head_dim, dtype, device) for p in self._plans],
            0,
        )

    def validate_layer_state(self, i: int, state: WindowMemoryState) -> None:
        state.validate(self._plans[i])

    def layer_stats(self, i: int, state: WindowMemoryState) -> dict:
        """Layer i's entry of Session.stats(): kind, bytes, window and sinks held, and (memory layers)
        the dictionary's statistics."""
        plan = self._plans[i]
        entry = {"kind": plan.kind, "state_bytes": state.nbytes}
        entry["window"], entry["sinks"] = state.buf_len, min(state.pos, plan.S)
        if plan.N:
            B, Hkv, D = state.keys.shape[0], state.keys.shape[1], state.keys.shape[-1]
            entry["memory"] = dictionary_stats(
                state.counts, state.size, plan.N, tokens_seen=state.pos, tokens_folded=state.folded,
                chunk=plan.L, pending=state.buf_len, state_bytes=state.nbytes,
                kv_cache_bytes=2 * B * Hkv * state.pos * D * state.k_buf.element_size(),
            ).to_dict()  # fmt: skip
        if plan.X:
            entry["exact"] = {"held": state.exact_len, "capacity": plan.X, "per_chunk": plan.exact}
        return entry

    def kv_cache_bytes(self, tokens: int) -> int:
        """What full attention's float32 KV cache would hold for `tokens` tokens."""
        c = self.config.llama
        return 2 * tokens * c.n_kv_heads * c.head_dim * 4 * c.n_layers

    def attach_memory_read(self, params: MemoryReadParams | None) -> None:
        """Read the dictionaries with learned parameters (None: the hand-written rule)."""
        c = self.config.llama
        if params is not None and params.shape != (c.n_layers, c.n_heads, c.n_kv_heads):
            raise ValueError(f"memory-read parameters of shape {params.shape} do not fit this model")
        self.memory_read = None if params is None else params.to(self.device)

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, state: RetrofitState | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, RetrofitState]:
        """tokens [B, T] (int64) -> logits [B, T, V] ([B, 1, V] with `last_only`; float32, float64 for
        a float64 model), and the state, updated in place (a fresh one when None is given)."""
        return self.stream(tokens, state, last_only)

    def stream(
        self,
        tokens: torch.Tensor,
        state: RetrofitState | None = None,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RetrofitState]:
        """`forward` under the caller's grad mode (training the memory's reading); `positions` [P]
        (indices into T) computes logits only there, [B, P, V]."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
        V = self.config.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
            raise ValueError(f"token ids must lie in [0, {V})")
        B, T = tokens.shape
        if state is None:
            state = self.init_state(B)
        elif len(state.layers) != len(self._plans):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self._plans)}")
        if T == 0:
            return torch.empty(B, 0, V, device=tokens.device), state
        body = self.llama.model
        x = body.embed_tokens(tokens)  # [B, T, C]
        rotary = Rotary(self.inv_freq)  # one set of rotation tables for all layers of this call
        for i, (block, s, plan) in enumerate(zip(body.layers, state.layers, self._plans)):
            attn = block.self_attn
            h = block.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, attn.Hq, attn.D).transpose(1, 2)  # [B, Hq, T, D]
            k = attn.k_proj(h).view(B, T, attn.Hkv, attn.D).transpose(1, 2)  # [B, Hkv, T, D]
            v = attn.v_proj(h).view(B, T, attn.Hkv, attn.D).transpose(1, 2)
            read = self.memory_read.layer(i) if self.memory_read is not None and plan.N else None
            o, _ = window_memory_attention(q, k, v, s, plan, self.inv_freq, self.backend, rotary, read)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, attn.Hq * attn.D))
            x = x + block.mlp(block.post_attention_layernorm(x))
        if last_only:
            x = x[:, -1:]
        elif positions is not None:
            x = x[:, positions]
        x = body.norm(x)
        head = body.embed_tokens.weight if self.llama.lm_head is None else self.llama.lm_head.weight
        state.pos += T
        logits = F.linear(x, head)
        return (logits if logits.dtype == torch.float64 else logits.float()), state  # bf16 -> float32

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
