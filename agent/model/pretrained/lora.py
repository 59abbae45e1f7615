"""Low-rank adapters (LoRA) on a pretrained model's projections: what a fine-tune with the memory in the
forward pass changes, a few MB beside the checkpoint's weights, which stay as they are on disk.

Each adapted linear W [out, in] gains a low-rank update: y = W x + (alpha / r) * B (A x), with
A [r, in] (random at the start) and B [out, r] (zero at the start: an untrained adapter is the base
model exactly). Training runs the update beside W (`attach`, float32 whatever the weights' dtype);
inference folds it into W once (`merge`), so a tuned model runs at the base model's speed.

The file is safetensors, one A and one B per adapted module, named by the module's path
("model.layers.3.self_attn.q_proj.A"); rank, alpha and targets are in the JSON beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

LORA = "lora.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGET_GROUPS = {"attn": ATTENTION, "mlp": MLP}


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ATTENTION + MLP  # module names inside each decoder layer

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        known = ATTENTION + MLP
        if not self.targets or any(t not in known for t in self.targets):
            raise ValueError(f"LoRA targets must be among {list(known)}, got {list(self.targets)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> LoRAConfig:
        if not isinstance(data, dict) or set(data) != {"rank", "alpha", "targets"}:
            raise ValueError(f"LoRA settings need rank, alpha and targets, got {data!r}")
        return cls(data["rank"], float(data["alpha"]), tuple(data["targets"]))


def parse_targets(spec: str) -> tuple[str, ...]:
    """'attn,mlp' or module names ('q_proj,v_proj') -> the module names, in the model's order."""
    names: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        names += TARGET_GROUPS.get(part, (part,))
    known = ATTENTION + MLP
    if not names or any(n not in known for n in names):
        raise ValueError(f"--lora-targets takes attn, mlp or names among {list(known)}, got {spec!r}")
    return tuple(n for n in known if n in names)


class LoRALinear(nn.Module):
    """A frozen linear and its low-rank update, computed beside it in float32 (training)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale, self.enabled = base, scale, True
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        return y + (F.linear(F.linear(x.float(), self.A), self.B) * self.scale).to(y.dtype)


def _layer_modules(llama: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path, parent, name) of every projection a LoRA may adapt, layer by layer."""
    out = []
    for i, block in enumerate(llama.model.layers):
        for parent_name, parent in (("self_attn", block.self_attn), ("mlp", block.mlp)):
            for name in ATTENTION if parent_name == "self_attn" else MLP:
                out.append((f"model.layers.{i}.{parent_name}.{name}", parent, name))
    return out


def attach(llama: nn.Module, config: LoRAConfig) -> dict[str, LoRALinear]:
    """Wrap the targeted projections of `llama` in LoRALinear (in place); returns them by path."""
    wrapped = {}
    for path, parent, name in _layer_modules(llama):
        if name not in config.targets:
            continue
        module = getattr(parent, name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"{path} already carries a LoRA")
        wrapped[path] = LoRALinear(module, config.rank, config.scale)
        setattr(parent, name, wrapped[path])
    return wrapped


def set_enabled(wrapped: dict[str, LoRALinear], enabled: bool) -> None:
    """Switch every update off (the base model: a teacher) or on."""
    for m in wrapped.values():
        m.enabled = enabled


def state_dict(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    out = {}
    for path, m in wrapped.items():
        out[f"{path}.A"], out[f"{path}.B"] = m.A.detach().cpu().contiguous(), m.B.detach().cpu().contiguous()
    return out


def save(wrapped: dict[str, LoRALinear], path: str | Path) -> None:
    save_file(state_dict(wrapped), str(path))


def load_tensors(path: str | Path, llama: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """An adapter file checked against the model and settings; ValueError naming the file and cause."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable LoRA adapter ({e})") from None
    expected = {}
    for p, parent, name in _layer_modules(llama):
        if name in config.targets:
            base = getattr(parent, name)
            base = base.base if isinstance(base, LoRALinear) else base
            expected[f"{p}.A"] = (config.rank, base.in_features)
            expected[f"{p}.B"] = (base.out_features, config.rank)
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(
            f"{path}: LoRA tensors do not fit the model (missing {missing[:3]}, extra {extra[:3]})"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model needs {shape}")
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{path}: {key} holds non-finite values")
    return tensors


def merge(llama: nn.Module, config: LoRAConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Fold the updates into the weights, in place: W <- W + scale * B A, computed in float32 and
    rounded once to the weights' dtype."""
    for path, parent, name in _layer_modules(llama):
        if name not in config.targets:
            continue
        linear = getattr(parent, name)
        A, B = tensors[f"{path}.A"].float(), tensors[f"{path}.B"].float()
        W = linear.weight
        delta = (B @ A) * config.scale  # [out, in]
        linear.weight = nn.Parameter(
            (W.detach().float() + delta.to(W.device)).to(W.dtype), requires_grad=False
        )


def load_into(wrapped: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Resume: copy saved A and B into attached modules."""
    for path, m in wrapped.items():
        m.A.data.copy_(tensors[f"{path}.A"])
        m.B.data.copy_(tensors[f"{path}.B"])
