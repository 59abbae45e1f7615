import pytest

from ovq.memory import PRESETS, OVQConfig, schedule_size


def test_plateau_schedule_values():
    N = 1024
    assert [schedule_size(t, N) for t in (0, 1, 2, 256, 1024, 65536)] == [0, 0, 1, 204, 512, 1008]
    assert schedule_size(10**12, N) == N - 1  # approaches N, integer floor never reaches it
    sizes = [schedule_size(t, N) for t in range(0, 20000, 37)]
    assert sizes == sorted(sizes) and max(sizes) <= N


def test_linear_schedule_values():
    assert [schedule_size(t, 8, "linear") for t in (0, 3, 8, 9, 100)] == [0, 3, 8, 8, 8]


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule"):
        schedule_size(4, 8, "cosine")
    with pytest.raises(ValueError, match=">= 0"):
        schedule_size(-1, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"capacity": -1}, "capacity"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"schedule": "exp"}, "schedule"),
        ({"chunk_size": 1}, "creates no slot"),
        ({"capacity": 1}, "creates no slot"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OVQConfig(**kwargs)


def test_config_is_frozen_and_presets_are_named():
    config = OVQConfig()
    assert (config.chunk_size, config.capacity, config.schedule, config.detach_memory) == (
        256,
        1024,
        "plateau",
        False,
    )
    with pytest.raises(AttributeError):
        config.capacity = 3
    assert OVQConfig.preset("default") == config and set(PRESETS) >= {"default", "tiny", "exact"}
    with pytest.raises(ValueError, match="unknown OVQ preset"):
        OVQConfig.preset("huge")
    assert OVQConfig(chunk_size=1, capacity=4, schedule="linear").size_after(1) == 1
