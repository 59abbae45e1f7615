"""The hybrid language model: pre-norm blocks of (attention layer, SwiGLU MLP), tied embeddings.

Layer kinds (ModelConfig.layers, e.g. "swa,ovq,swa,ovq"):
  swa     sliding-window attention with RoPE (window W): exact local context and order
  ovq     OVQ attention (NoPE): bounded long-range memory (memory.OVQAttention)
  full    causal attention with RoPE over at most `full_context` tokens (baseline)
  nope    the same without positional encoding (the "SWA + full NoPE" baseline)
  linear  gated linear attention (baseline)
  conv    short causal convolution over the last K positions (agent.conv): n-gram features
One forward `(tokens, state) -> (logits, state)` serves training and streaming.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ovq.agent.model.attention import WindowAttention, WindowState
from ovq.agent.model.conv import ConvState, ShortConv
from ovq.agent.model.linear_attention import GatedLinearAttention, LinearState
from ovq.agent.model.tokenizer import ChatFormat, chat_format
from ovq.memory import OVQConfig, OVQState
from ovq.memory.layer import OVQAttention
from ovq.memory.stats import memory_stats

LAYER_KINDS = ("swa", "ovq", "full", "nope", "linear", "conv")


def layer_kinds(layers: str) -> list[str]:
    """'swa, ovq,' -> ['swa', 'ovq']: the kinds of a layer pattern, in order."""
    return [k.strip() for k in layers.split(",") if k.strip()]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    layers: str = "swa,ovq,swa,ovq"
    window: int = 128  # SWA window W
    ovq: OVQConfig = field(default_factory=lambda: OVQConfig(chunk_size=64, capacity=512))
    full_context: int = 8192  # bound of `full` / `nope` layers
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = round_up(ratio * d_model, 64)
    rope_base: float = 10000.0
    conv_kernel: int = 4  # K of `conv` layers
    chat_format: str = "plain"  # agent.tokenizer.CHAT_FORMATS: how its training data wrote turns

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        unknown = [k for k in self.kinds if k not in LAYER_KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"layers must be a comma list of {LAYER_KINDS}, got {self.layers!r}")
        if self.window < 1 or self.full_context < 1:
            raise ValueError("window and full_context must be >= 1")
        if self.conv_kernel < 2:
            raise ValueError(
                f"conv_kernel must be >= 2 (1 would see only its own position), got {self.conv_kernel}"
            )
        chat_format(self.chat_format)  # raises on an unknown name

    @property
    def chat(self) -> ChatFormat:
        return chat_format(self.chat_format)

    @property
    def kinds(self) -> list[str]:
        return layer_kinds(self.layers)

    @property
    def d_ff(self) -> int:
        return -(-int(self.mlp_ratio * self.d_model) // 64) * 64

    def to_json(self) -> str:
        d = asdict(self)
        # fields at the value they had before they existed are left out: older models keep their JSON
        # and fingerprint
        for name, old in (("chat_format", "plain"), ("conv_kernel", 4)):
            if d[name] == old:
                del d[name]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        d = json.loads(text)
        return cls(**{**d, "ovq": OVQConfig(**d["ovq"])})

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> ModelConfig:
        """Named presets: tiny (tests), small (the reproduction), default (the shipped model),
        base and large (GPU users)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name](vocab_size), **overrides)


PRESETS = {
    "tiny": lambda V: ModelConfig(
        V,
        d_model=32,
        n_heads=2,
        layers="swa,ovq",
        window=8,
        ovq=OVQConfig(chunk_size=8, capacity=24),
        full_context=512,
    ),
    # the small-scale reproduction of the paper's comparison (README): OVQ and baselines share it
    "small": lambda V: ModelConfig(
        V, d_model=64, n_heads=2, layers="swa,ovq", window=32, ovq=OVQConfig(32, 128), full_context=4096
    ),
    "default": lambda V: ModelConfig(V, d_model=192, ovq=OVQConfig(chunk_size=256, capacity=1024)),
    "base": lambda V: ModelConfig(
        V, d_model=768, n_heads=12, layers=",".join(["swa", "ovq"] * 6), window=512, ovq=OVQConfig(256, 1024)
    ),
    "large": lambda V: ModelConfig(
        V,
        d_model=1024,
        n_heads=16,
        layers=",".join(["swa", "swa", "ovq"] * 8),
        window=1024,
        ovq=OVQConfig(256, 2048),
    ),
}

LayerState = WindowState | OVQState | LinearState | ConvState


@dataclass
class ModelState:
    """The whole streaming state of a model: one entry per layer, bounded by configuration."""

    layers: list[LayerState]
    pos: int  # tokens seen

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.layers)

    def clone(self) -> ModelState:
        return ModelState([s.clone() for s in self.layers], self.pos)

    def detach(self) -> ModelState:
        return ModelState([s.detach() for s in self.layers], self.pos)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def make_mixer(kind: str, config: ModelConfig) -> nn.Module:
    d, h = config.d_model, config.n_heads
    if kind == "swa":
        return WindowAttention(d, h, config.window, use_rope=True, rope_base=config.rope_base)
    if kind in ("full", "nope"):
        return WindowAttention(d, h, config.full_context, use_rope=kind == "full", bounded=True)
    if kind == "ovq":
        return OVQAttention(d, h, config.ovq)
    if kind == "conv":
        return ShortConv(d, config.conv_kernel)
    return GatedLinearAttention(d, h)


class Block(nn.Module):
    def __init__(self, kind: str, config: ModelConfig) -> None:
        super().__init__()
        self.kind = kind
        self.attn_norm, self.mlp_norm = nn.RMSNorm(config.d_model), nn.RMSNorm(config.d_model)
        self.mixer = make_mixer(kind, config)
        self.mlp = MLP(config.d_model, config.d_ff)

    def forward(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        h, state = self.mixer(self.attn_norm(x), state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class HybridLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(kind, config) for kind in config.kinds)
        self.norm = nn.RMSNorm(config.d_model)
        self.apply(_init_weights)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def kv_cache_bytes(self, tokens: int) -> int:
        """What a float32 KV cache of every attention layer would hold for `tokens` tokens."""
        return 2 * tokens * self.config.d_model * 4 * sum(k != "conv" for k in self.config.kinds)

    def validate_layer_state(self, i: int, state: LayerState) -> None:
        """Raise ValueError if a restored layer state is inconsistent (OVQ layers check their own)."""
        if isinstance(state, OVQState):
            state.validate()

    def layer_stats(self, i: int, state: LayerState) -> dict:
        """Layer i's entry of Session.stats(): its kind, bytes and (OVQ layers) dictionary statistics."""
        entry = {"kind": self.config.kinds[i], "state_bytes": state.nbytes}
        if isinstance(state, OVQState):
            entry["memory"] = memory_stats(state).to_dict()
        return entry

    def init_state(self, B: int = 1, dtype: torch.dtype = torch.float32, device=None) -> ModelState:
        device = self.embed.weight.device if device is None else device
        return ModelState([b.mixer.init_state(B, dtype=dtype, device=device) for b in self.blocks], 0)

    def forward(
        self,
        tokens: torch.Tensor,
        state: ModelState | None = None,
        last_only: bool = False,
        keep_state: bool = True,
    ) -> tuple[torch.Tensor, ModelState | None]:
        """tokens [B, T] (int64) -> logits [B, T, V], state. Continues `state`'s stream if given.
        `last_only` gives logits [B, 1, V] for the last position only: streaming needs no more, and
        the vocabulary projection of every fed position would be wasted work.
        `keep_state=False` (training): a fresh stream whose final state is not wanted; attention
        layers then build no cache, the logits are the same, and the returned state is None.

        Always use the returned state. Without autograd it is the given state, updated in place;
        with autograd a new state is returned and the given one is left as it was."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        B, T = tokens.shape
        if not keep_state and state is not None:
            raise ValueError("keep_state=False runs a fresh stream: pass no state")
        if state is None:
            state = self._fresh_state(B, keep_state)
        elif len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.blocks)}")
        if T == 0:  # nothing to read: no logits, and the stream is where it was
            return self.embed.weight.new_empty(B, 0, self.config.vocab_size), state if keep_state else None
        x = self.embed(tokens)
        layers = []
        for block, s in zip(self.blocks, state.layers):
            x, s = block(x, s)
            layers.append(s)
        if last_only:
            x = x[:, -1:]
        logits = F.linear(self.norm(x), self.embed.weight)  # tied embeddings
        if not keep_state:
            return logits, None
        if not any(new is old for new, old in zip(layers, state.layers)):
            return logits, ModelState(layers, state.pos + T)  # rebuilt (autograd): the given one is intact
        state.layers, state.pos = layers, state.pos + T  # updated in place: keep the given one consistent
        return logits, state

    def _fresh_state(self, B: int, keep_state: bool) -> ModelState:
        if keep_state:
            return self.init_state(B, dtype=self.embed.weight.dtype)
        # window and conv layers build no cache (None); the others need their (small) state to run at all
        dtype, device = self.embed.weight.dtype, self.embed.weight.device
        mixers = [b.mixer for b in self.blocks]
        windowed = [isinstance(m, WindowAttention | ShortConv) for m in mixers]
        return ModelState(
            [None if w else m.init_state(B, dtype=dtype, device=device) for m, w in zip(mixers, windowed)], 0
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Conv1d):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
