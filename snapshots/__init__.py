"""Snapshots of session state: msgpack codec and LMDB store. Knows tensors and bytes, not models."""
