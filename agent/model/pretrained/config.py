"""LlamaConfig: the shape and numerics of a Llama-family decoder (Llama 1-3, SmolLM, Qwen2).

Llama and Qwen2 share one forward pass; Qwen2 differs only in biases on the q/k/v
projections (`attention_bias`) and in how llama.cpp stores its Q/K weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

ARCHS = ("llama", "qwen2")


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1's "llama3" RoPE scaling: long wavelengths slowed by `factor`, short ones kept."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    type: str = "llama3"

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.original_max_position_embeddings <= 0:
            raise ValueError(f"llama3 rope scaling needs positive factor and context, got {self}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got {self}")


@dataclass(frozen=True)
class RopeFreqFactors:
    """llama.cpp's `rope_freqs` tensor: inv_freq[i] is divided by factors[i].

    This is how llama.cpp's converter stores Llama-3.1's llama3 scaling in a GGUF: as the
    computed per-frequency divisors, not the four parameters (which cannot be recovered).
    """

    factors: tuple[float, ...]
    type: str = "freq_factors"


RopeScaling = Llama3RopeScaling | RopeFreqFactors


@dataclass(frozen=True)
class LlamaConfig:
    arch: str  # "llama" | "qwen2"
    vocab_size: int  # V: rows of the embedding and of the head
    d_model: int
    n_layers: int
    n_heads: int  # Hq
    n_kv_heads: int  # Hkv: each KV head serves Hq / Hkv query heads (GQA)
    head_dim: int  # D
    d_ff: int
    rope_theta: float
    rope_scaling: RopeScaling | None
    rms_eps: float
    max_context: int  # the context the model was trained for
    tie_embeddings: bool  # head = embedding matrix
    attention_bias: bool  # biases on q/k/v projections (Qwen2)
    bos_id: int | None
    eos_ids: tuple[int, ...]  # any of these ends a reply

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported architecture {self.arch!r} (supported: {', '.join(ARCHS)})")
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "max_context",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if not (self.rope_theta > 0 and self.rms_eps > 0):
            raise ValueError(
                f"rope_theta and rms_eps must be positive, got {self.rope_theta}, {self.rms_eps}"
            )
        if (
            isinstance(self.rope_scaling, RopeFreqFactors)
            and len(self.rope_scaling.factors) != self.head_dim // 2
        ):
            raise ValueError(
                f"rope_freqs has {len(self.rope_scaling.factors)} factors, head_dim/2 = {self.head_dim // 2}"
            )
        if not self.eos_ids:
            raise ValueError("no end-of-sequence token id")
        ids = (*self.eos_ids, *(() if self.bos_id is None else (self.bos_id,)))
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"special token ids {ids} are outside the vocabulary of {self.vocab_size}")

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def to_json(self) -> str:
        # Sorted keys and fixed separators: the text is hashed into the model fingerprint.
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LlamaConfig:
        d = json.loads(text)
        scaling = d.pop("rope_scaling")
        if scaling is not None:
            kind = scaling.pop("type")
            if kind == "llama3":
                scaling = Llama3RopeScaling(**scaling)
            elif kind == "freq_factors":
                scaling = RopeFreqFactors(tuple(scaling["factors"]))
            else:
                raise ValueError(f"unsupported rope scaling type {kind!r}")
        d["eos_ids"] = tuple(d["eos_ids"])  # JSON has no tuples
        return cls(**d, rope_scaling=scaling)


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Tensor[D/2] of angular frequencies, float32, computed as HF transformers does.

    Default: theta^(-2i/D). llama3: HF's `_compute_llama3_parameters`, op for op, so the
    float32 rounding matches too.
    """
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if isinstance(scaling, RopeFreqFactors):
        return inv_freq / torch.tensor(scaling.factors, dtype=torch.float32)
    factor = scaling.factor
    low_freq_factor, high_freq_factor = scaling.low_freq_factor, scaling.high_freq_factor
    old_context_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (beyond the original context) are slowed by `factor`, short ones kept,
    # and the band between is interpolated smoothly.
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def weight_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold, by Hugging Face name, with its shape."""
    V, C, F = config.vocab_size, config.d_model, config.d_ff
    q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (C,),
            p + "self_attn.q_proj.weight": (q_dim, C),  # nn.Linear layout: (out, in)
            p + "self_attn.k_proj.weight": (kv_dim, C),
            p + "self_attn.v_proj.weight": (kv_dim, C),
            p + "self_attn.o_proj.weight": (C, q_dim),
            p + "post_attention_layernorm.weight": (C,),
            p + "mlp.gate_proj.weight": (F, C),
            p + "mlp.up_proj.weight": (F, C),
            p + "mlp.down_proj.weight": (C, F),
        }
        if config.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q_dim,),
                p + "self_attn.k_proj.bias": (kv_dim,),
                p + "self_attn.v_proj.bias": (kv_dim,),
            }
    return shapes
