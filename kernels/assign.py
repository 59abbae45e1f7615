"""Coverage + assignment: which chunk tokens seed new slots, and where every other token goes.

docs/ovq.md 4.1-4.3. Selections carry no gradient.
"""

from __future__ import annotations

import torch


def coverage_assign_torch(
    chunk_k: torch.Tensor,  # [B, H, L, D] normalised keys of a complete chunk
    dict_k: torch.Tensor,  # [B, H, n, D] centroid keys before this chunk
    m: int,  # new slots this chunk opens
) -> tuple[torch.Tensor, torch.Tensor]:  # seeds [B, H, m], assign [B, H, L] (int64 slots)
    chunk_k, dict_k = chunk_k.detach(), dict_k.detach()
    B, H, L, D = chunk_k.shape
    n = dict_k.shape[2]
    if n:
        coverage, assign = (chunk_k @ dict_k.transpose(-1, -2)).max(dim=-1)  # [B, H, L] each
    else:
        # empty dictionary: token 0 is the first seed, coverage is similarity to it
        coverage = (chunk_k @ chunk_k[:, :, :1].transpose(-1, -2)).squeeze(-1)
        coverage[:, :, 0] = float("-inf")
    if m == 0:
        if n == 0:
            raise ValueError("a chunk folded into an empty dictionary must open at least one slot")
        return assign.new_empty(B, H, 0), assign
    # smallest coverage first; the stable sort keeps earlier positions first among ties
    seeds = torch.sort(coverage, dim=-1, stable=True).indices[:, :, :m]  # [B, H, m]
    seed_k = torch.gather(chunk_k, 2, seeds.unsqueeze(-1).expand(-1, -1, -1, D))  # [B, H, m, D]
    best_new, slot_new = (chunk_k @ seed_k.transpose(-1, -2)).max(dim=-1)  # first max: lowest slot
    # old slots are numbered below new ones, so a tie stays with the old slot
    assign = n + slot_new if n == 0 else torch.where(best_new > coverage, n + slot_new, assign)
    own = torch.arange(n, n + m, device=chunk_k.device).expand(B, H, m)
    return seeds, assign.scatter(2, seeds, own)
