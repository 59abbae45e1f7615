import json
import math

import pytest
import torch

from ovq.memory import OVQConfig, OVQState, ovq_attention
from ovq.memory.stats import memory_stats
from tests.memory.helpers import qkv


def test_stats_of_a_known_state():
    config = OVQConfig(chunk_size=4, capacity=8)
    state = OVQState.empty(config, 1, 2, 3, dtype=torch.float64)
    state.seen, state.size = 10, 4  # two chunks folded (S(8)=4), two tokens pending
    state.counts[0, 0, :4] = torch.tensor([1, 1, 2, 4])
    state.counts[0, 1, :4] = torch.tensor([2, 2, 2, 2])
    stats = memory_stats(state, rare_fraction=0.6)  # rare: count < 0.6 * mean (2)
    h0, h1 = stats.heads[0]
    assert (stats.tokens_seen, stats.tokens_folded, stats.chunks_folded, stats.pending) == (10, 8, 2, 2)
    assert stats.fill == h0.fill == 0.5 and stats.size == 4 and stats.capacity == 8
    assert (h0.count_min, h0.count_median, h0.count_max, h0.rare_slots) == (1, 1, 4, 2)
    assert h0.count_entropy_bits == pytest.approx(1.75)
    assert h1.count_entropy_bits == pytest.approx(2.0) and h1.effective_slots == pytest.approx(4.0)
    assert h1.rare_slots == 0
    assert stats.state_bytes == state.nbytes
    assert stats.kv_cache_bytes == 1 * 2 * 10 * (3 + 3) * 8
    assert stats.compression == pytest.approx(stats.kv_cache_bytes / state.nbytes)
    assert json.loads(json.dumps(stats.to_dict()))["heads"][0][1]["effective_slots"] == pytest.approx(4.0)


def test_stats_of_an_empty_state_and_of_a_long_stream():
    config = OVQConfig(chunk_size=16, capacity=32)
    empty = memory_stats(OVQState.empty(config, 1, 2, 8))
    assert empty.size == 0 and empty.heads[0][0].fill == 0.0 and empty.kv_cache_bytes == 0
    with torch.no_grad():
        _, state = ovq_attention(*qkv(1, 2, 2000, 8, dtype=torch.float32), 4.0, config)
    stats = memory_stats(state)
    assert stats.size == config.size_after(2000 - 2000 % 16)
    for head in stats.heads[0]:
        assert 1 <= head.count_min <= head.count_median <= head.count_max
        assert 0 < head.count_entropy_bits <= math.log2(stats.size) + 1e-9
    assert stats.compression > 1
    with pytest.raises(ValueError, match="rare_fraction"):
        memory_stats(state, rare_fraction=2)
