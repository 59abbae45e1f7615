"""Every OVQ state allocated inside memory/ tests is poisoned, so reading unwritten memory shows:
float storage is NaN, counts are hugely negative (their log is NaN)."""

import pytest
import torch

import ovq.memory.state

POISON_COUNT = -(2**40)


@pytest.fixture(autouse=True)
def poisoned_state_memory(monkeypatch):
    def allocate(shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else POISON_COUNT
        return torch.full(shape, fill, dtype=dtype, device=device)

    monkeypatch.setattr(ovq.memory.state, "allocate", allocate)
