"""The typed streaming state of one OVQ layer (docs/ovq.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ovq.memory.config import OVQConfig


def allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The one place OVQ state storage is allocated. Zero-filled so that snapshots of unused slots
    are deterministic; the memory tests replace it with a NaN-poisoning allocator."""
    return torch.zeros(shape, dtype=dtype, device=device)


@dataclass
class OVQState:
    """Bounded state of one OVQ layer, allocated once at capacity.

    keys/values hold the dictionary (rows < size in use); counts the tokens each centroid represents.
    chunk_k/chunk_v hold the current, incomplete chunk (rows < seen % L in use): its keys are stored
    L2-normalised, its values as given. Bytes never change as the stream grows.
    """

    config: OVQConfig
    keys: torch.Tensor  # [B, H, N, D]
    values: torch.Tensor  # [B, H, N, Dv]
    counts: torch.Tensor  # [B, H, N] int64 (exact at any stream length)
    chunk_k: torch.Tensor  # [B, H, L, D]
    chunk_v: torch.Tensor  # [B, H, L, Dv]
    size: int  # slots in use, the same for every head: S(tokens folded)
    seen: int  # tokens processed

    @classmethod
    def empty(
        cls,
        config: OVQConfig,
        B: int,
        H: int,
        D: int,
        Dv: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> OVQState:
        """A fresh state for batch B, H heads, key dim D and value dim Dv (default D)."""
        Dv = D if Dv is None else Dv
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"OVQ state dtype must be float32 or float64, got {dtype}")
        N, L = config.capacity, config.chunk_size
        return cls(
            config=config,
            keys=allocate((B, H, N, D), dtype, device),
            values=allocate((B, H, N, Dv), dtype, device),
            counts=allocate((B, H, N), torch.int64, device),
            chunk_k=allocate((B, H, L, D), dtype, device),
            chunk_v=allocate((B, H, L, Dv), dtype, device),
            size=0,
            seen=0,
        )

    # Derived views: the "pending" tokens of the incomplete chunk, [B, H, P, D] with P < L.
    @property
    def pending(self) -> int:
        return self.seen % self.config.chunk_size

    @property
    def pending_k(self) -> torch.Tensor:
        return self.chunk_k[:, :, : self.pending]

    @property
    def pending_v(self) -> torch.Tensor:
        return self.chunk_v[:, :, : self.pending]

    @property
    def folded(self) -> int:
        """Tokens folded into the dictionary (complete chunks only)."""
        return self.seen - self.pending

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, D, Dv)."""
        B, H, _, D = self.keys.shape
        return B, H, D, self.values.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def scalars(self) -> dict[str, int]:
        """The ints a snapshot records beside the tensors."""
        return {"size": self.size, "seen": self.seen}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "keys": self.keys,
            "values": self.values,
            "counts": self.counts,
            "chunk_k": self.chunk_k,
            "chunk_v": self.chunk_v,
        }

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage; constant for a given config, batch and head shape."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def clone(self) -> OVQState:
        """An independent copy (tensors cloned, detached from any autograd graph)."""
        copies = {name: t.detach().clone() for name, t in self.tensors().items()}
        return OVQState(config=self.config, size=self.size, seen=self.seen, **copies)

    def detach(self) -> OVQState:
        """The same storage without autograd history (truncated backprop through time)."""
        views = {name: t.detach() for name, t in self.tensors().items()}
        return OVQState(config=self.config, size=self.size, seen=self.seen, **views)

    def validate(self) -> None:
        """Raise ValueError if the fields contradict each other or the config."""
        cfg = self.config
        B, H, D, Dv = self.shape
        N, L = cfg.capacity, cfg.chunk_size
        expected = {
            "keys": (B, H, N, D),
            "values": (B, H, N, Dv),
            "counts": (B, H, N),
            "chunk_k": (B, H, L, D),
            "chunk_v": (B, H, L, Dv),
        }
        for name, t in self.tensors().items():
            if tuple(t.shape) != expected[name]:
                raise ValueError(
                    f"OVQState.{name} has shape {tuple(t.shape)}, expected {expected[name]} "
                    f"for capacity N={N}, chunk_size L={L}"
                )
            if t.device != self.device:
                raise ValueError(f"OVQState.{name} is on {t.device}, keys are on {self.device}")
        if self.keys.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"OVQState dtype must be float32 or float64, got {self.keys.dtype}")
        for name in ("values", "chunk_k", "chunk_v"):
            if getattr(self, name).dtype != self.keys.dtype:
                raise ValueError(
                    f"OVQState.{name} is {getattr(self, name).dtype}, keys are {self.keys.dtype}"
                )
        if self.counts.dtype != torch.int64:
            raise ValueError(f"OVQState.counts must be int64, got {self.counts.dtype}")
        if self.seen < 0:
            raise ValueError(f"OVQState.seen must be >= 0, got {self.seen}")
        if self.size != cfg.size_after(self.folded):
            raise ValueError(
                f"OVQState.size={self.size} but {self.folded} folded tokens give "
                f"S={cfg.size_after(self.folded)} under schedule {cfg.schedule!r}"
            )
