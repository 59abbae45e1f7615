"""Memory statistics of an OVQ state, for the UI and for probes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ovq.memory.state import OVQState


@dataclass(frozen=True)
class HeadStats:
    """One head's dictionary. Entropy is of the count distribution, in bits; effective_slots is
    2**entropy (how many equally used slots it is worth). A slot is rarely used when its count is
    below `rare_fraction` of the head's mean count."""

    fill: float
    count_min: int
    count_median: int
    count_max: int
    count_entropy_bits: float
    effective_slots: float
    rare_slots: int


@dataclass(frozen=True)
class MemoryStats:
    """The whole state of one OVQ layer: `heads[b][h]`, sizes and bytes."""

    tokens_seen: int
    tokens_folded: int
    chunks_folded: int
    pending: int
    size: int
    capacity: int
    fill: float
    state_bytes: int
    kv_cache_bytes: int  # a full KV cache for the same stream, same dtype
    heads: list[list[HeadStats]]

    @property
    def compression(self) -> float:
        """kv_cache_bytes / state_bytes: how many times smaller the OVQ state is."""
        return self.kv_cache_bytes / self.state_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "compression": self.compression}


def memory_stats(state: OVQState, rare_fraction: float = 0.1) -> MemoryStats:
    """Statistics of `state` (read only; nothing is changed)."""
    B, H, D, Dv = state.shape
    return dictionary_stats(
        state.counts,
        state.size,
        state.config.capacity,
        tokens_seen=state.seen,
        tokens_folded=state.folded,
        chunk=state.config.chunk_size,
        pending=state.pending,
        state_bytes=state.nbytes,
        kv_cache_bytes=B * H * state.seen * (D + Dv) * state.keys.element_size(),
        rare_fraction=rare_fraction,
    )


def dictionary_stats(
    counts: torch.Tensor,  # [B, H, N]: rows [0, size) in use
    size: int,
    capacity: int,
    *,
    tokens_seen: int,
    tokens_folded: int,
    chunk: int,
    pending: int,
    state_bytes: int,
    kv_cache_bytes: int,
    rare_fraction: float = 0.1,
) -> MemoryStats:
    """Statistics of any OVQ dictionary (the hybrid's OVQ layers, a pretrained model's retrofit)."""
    if not 0 <= rare_fraction <= 1:
        raise ValueError(f"rare_fraction must lie in [0, 1], got {rare_fraction}")
    B, H, _ = counts.shape
    n, N = size, capacity
    heads = [[_empty_head() for _ in range(H)] for _ in range(B)]
    if n:
        c = counts[:, :, :n].detach().to("cpu", torch.float64)  # [B, H, n]
        p = c / c.sum(-1, keepdim=True)
        entropy = -(p * p.log2()).sum(-1)
        rare = (c < rare_fraction * c.mean(-1, keepdim=True)).sum(-1)
        cmin, cmed, cmax = c.amin(-1), c.median(-1).values, c.amax(-1)
        heads = [
            [
                HeadStats(
                    fill=n / N,
                    count_min=int(cmin[b, h]),
                    count_median=int(cmed[b, h]),
                    count_max=int(cmax[b, h]),
                    count_entropy_bits=float(entropy[b, h]),
                    effective_slots=float(2 ** entropy[b, h]),
                    rare_slots=int(rare[b, h]),
                )
                for h in range(H)
            ]
            for b in range(B)
        ]
    return MemoryStats(
        tokens_seen=tokens_seen,
        tokens_folded=tokens_folded,
        chunks_folded=tokens_folded // chunk,
        pending=pending,
        size=n,
        capacity=N,
        fill=n / N,
        state_bytes=state_bytes,
        kv_cache_bytes=kv_cache_bytes,
        heads=heads,
    )


def _empty_head() -> HeadStats:
    return HeadStats(0.0, 0, 0, 0, 0.0, 0.0, 0)
