"""A session's state as a snapshot tree and back. The restore builds a complete new state before
anything is swapped in, so a failure leaves the live session untouched."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ovq.agent.model.hybrid import HybridLM, ModelState
from ovq.agent.model.pretrained.streaming import RetrofitLM, RetrofitState
from ovq.snapshots import CorruptSnapshot, Snapshot


def default_store_path() -> Path:
    """$OVQ_STORE, else the user data directory."""
    from ovq.snapshots.store import default_path

    return Path(os.environ["OVQ_STORE"]) if os.environ.get("OVQ_STORE") else default_path()


def state_tree(state: ModelState | RetrofitState, kinds: list[str]) -> dict:
    layers = []
    for kind, s in zip(kinds, state.layers):
        layers.append({"kind": kind, **{k: t.detach() for k, t in s.tensors().items()}, **s.scalars()})
    return {"pos": state.pos, "layers": layers}


def restore_state(tree: dict, model: HybridLM | RetrofitLM) -> ModelState | RetrofitState:
    """A new state for `model` from a snapshot tree; CorruptSnapshot if anything disagrees."""
    kinds = model.config.kinds
    layers = tree.get("layers") if isinstance(tree, dict) else None
    if not isinstance(layers, list) or len(layers) != len(kinds):
        raise CorruptSnapshot(f"snapshot has {len(layers or [])} layers, the model has {len(kinds)}")
    # shapes and dtypes from a storage-free template; the decoded tensors (fresh, private copies)
    # become the new state's storage, so a restore allocates and copies nothing more
    device = model.device
    fresh = model.init_state(1, device="meta")
    for i, (kind, entry, s) in enumerate(zip(kinds, layers, fresh.layers)):
        if not isinstance(entry, dict) or entry.get("kind") != kind:
            raise CorruptSnapshot(f"layer {i}: snapshot kind {entry.get('kind')!r}, model kind {kind!r}")
        for name, t in s.tensors().items():
            got = entry.get(name)
            if not isinstance(got, torch.Tensor) or got.shape != t.shape or got.dtype != t.dtype:
                raise CorruptSnapshot(
                    f"layer {i} ({kind}) {name}: expected {t.dtype} {tuple(t.shape)}, snapshot has "
                    f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}"
                )
            setattr(s, name, got.to(device))
        for name in s.scalars():
            setattr(s, name, _int(entry, name, i))
        try:
            model.validate_layer_state(i, s)
        except ValueError as e:
            raise CorruptSnapshot(f"layer {i} ({kind}): {e}") from None
    fresh.pos = _int(tree, "pos", "model")
    return fresh


def _int(d: dict, key: str, where) -> int:
    v = d.get(key)
    if type(v) is not int or v < 0:
        raise CorruptSnapshot(f"{where}: {key} must be a non-negative int, got {v!r}")
    return v


def make_snapshot(
    fingerprint: str, state: ModelState | RetrofitState, kinds: list[str], rng: torch.Tensor, turns: list
) -> Snapshot:
    tree = state_tree(state, kinds) | {"rng": rng}
    meta = {"transcript": [[t.role, t.text] for t in turns]}
    return Snapshot(fingerprint=fingerprint, position=state.pos, state=tree, meta=meta)
