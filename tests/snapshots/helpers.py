"""Shared test data for tests/snapshots."""

import struct

import torch

from ovq.snapshots import codec
from ovq.snapshots.frame import DIGEST_SIZE, HEADER_SIZE, frame

FP = "0123456789abcdef" * 4  # a SHA-256-like fingerprint


def make_snapshot(seed: int = 0, n_layers: int = 3, position: int = 42, width: int = 5) -> codec.Snapshot:
    """A small snapshot shaped like an agent's: per-layer dicts of tensors and counters, plus meta."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(n_layers):
        if i % 2 == 0:
            layer = {
                "kind": "ovq",
                "keys": torch.randn(2, width, 8, generator=g),
                "counts": torch.arange(width),
                "size": 12,
            }
        else:
            layer = {"kind": "swa", "k": torch.randn(4, 8, generator=g).bfloat16(), "pos": i, "full": False}
        layers.append(layer)
    state = {"layers": layers, "pending": torch.tensor([1, 2, 3], dtype=torch.int32)}
    meta = {"rng": bytes(range(16)), "turns": [{"role": "user", "text": "hi"}], "temp": 0.7, "stop": None}
    return codec.Snapshot(FP, position, state, meta)


def reframe(body: bytes, version: int = codec.CURRENT_VERSION, kind: int = codec.KIND_SNAPSHOT) -> bytes:
    """A validly framed blob around an arbitrary body: reaches the strict parser past the checksum."""
    return frame(codec.MAGIC, version, kind, body)


def v2_body(tree: bytes, region: bytes = b"") -> bytes:
    """A v2 body: u64 tree length, the (msgpack) tree, the tensor data region."""
    return struct.pack("<Q", len(tree)) + tree + region


def body_of(blob: bytes) -> bytes:
    return blob[HEADER_SIZE:-DIGEST_SIZE]
