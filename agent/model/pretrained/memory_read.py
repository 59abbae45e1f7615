"""The memory's own parameters: how each layer reads its OVQ dictionary, learned; nothing else changes.

A retrofit reads centroids with a rule written by hand (retrofit.py): logit s * q.mu + alpha * log(count),
in the same softmax as the exact tokens. A centroid is a mean of many keys, so its logit is not what a
trained head would give the tokens it stands for; three numbers per head let a short fine-tune correct
that, with the checkpoint's weights untouched:

  log_scale [layers, Hq]   the centroid logit's temperature, exp(.) * s * q.mu
  bias      [layers, Hq]   added to every centroid logit: e^bias the memory's share of the mass
  log_gain  [layers, Hkv]  exp(.) * alpha * log(count)

All zero is the hand-written rule exactly. The file is a few kilobytes of safetensors beside a small
JSON naming the base model and retrofit it was trained for (`ovq train --init <pretrained>` writes it;
`load_model(<that directory>)` applies it; its bytes are part of the model's fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ovq.agent.model import names
from ovq.agent.model.pretrained.retrofit import MemoryRead

ADAPTER = "memory_read.safetensors"
# {"base": model name or path, "retrofit": {...}, "dtype": ...}; named in names.py, which is torch-free
ADAPTER_CONFIG = names.ADAPTER_CONFIG
NAMES = ("log_scale", "bias", "log_gain")


class MemoryReadParams(nn.Module):
    def __init__(self, n_layers: int, Hq: int, Hkv: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(n_layers, Hq))
        self.bias = nn.Parameter(torch.zeros(n_layers, Hq))
        self.log_gain = nn.Parameter(torch.zeros(n_layers, Hkv))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.log_scale.shape[0], self.log_scale.shape[1], self.log_gain.shape[1]

    def layer(self, i: int) -> MemoryRead:
        return MemoryRead(self.log_scale[i], self.bias[i], self.log_gain[i])

    def save(self, path: str | Path) -> None:
        save_file({n: getattr(self, n).detach().cpu().contiguous() for n in NAMES}, str(path))

    @classmethod
    def load(cls, path: str | Path, n_layers: int, Hq: int, Hkv: int) -> MemoryReadParams:
        """Read an adapter file for a model of this shape; ValueError naming the file and the cause."""
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable memory-read adapter ({e})") from None
        params = cls(n_layers, Hq, Hkv)
        if set(tensors) != set(NAMES):
            raise ValueError(f"{path}: expected tensors {list(NAMES)}, found {sorted(tensors)}")
        for name in NAMES:
            want, got = getattr(params, name).shape, tensors[name].shape
            if got != want:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(got)}, the model needs {tuple(want)} "
                    "(an adapter trained for another model)"
                )
            if not torch.isfinite(tensors[name]).all():
                raise ValueError(f"{path}: {name} holds non-finite values")
            getattr(params, name).data.copy_(tensors[name].float())
        return params.requires_grad_(False)


def read_adapter_config(directory: Path) -> dict:
    """The JSON beside an adapter; ValueError naming the file when it is unreadable or incomplete."""
    path = directory / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable adapter config ({e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("base"), str)
        or not isinstance(data.get("retrofit"), dict)
    ):
        raise ValueError(f"{path}: needs 'base' (a model name or path) and 'retrofit' (its settings)")
    return data


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER).is_file() and (path / ADAPTER_CONFIG).is_file()
