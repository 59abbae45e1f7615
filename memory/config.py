"""OVQ configuration and growth schedule (docs/ovq.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["plateau", "linear"]
SCHEDULES: tuple[str, ...] = ("plateau", "linear")


def schedule_size(t: int, capacity: int, schedule: Schedule = "plateau") -> int:
    """Dictionary size S(t) after t tokens have been folded; never exceeds `capacity`.

    plateau: min(N, floor(t*N / (t+N)))  (integer arithmetic, so exact for any t)
    linear:  min(t, N)
    """
    if t < 0:
        raise ValueError(f"tokens folded must be >= 0, got {t}")
    if schedule == "plateau":
        return min(capacity, (t * capacity) // (t + capacity)) if t else 0
    if schedule == "linear":
        return min(t, capacity)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@dataclass(frozen=True)
class OVQConfig:
    """One OVQ layer's memory: chunk size L, capacity N, growth schedule.

    detach_memory stops gradients flowing through the dictionary into earlier chunks' keys and
    values (docs/ovq.md 4.5): cheaper training, same forward values.
    """

    chunk_size: int = 256  # L
    capacity: int = 1024  # N
    schedule: Schedule = "plateau"
    detach_memory: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if not isinstance(self.capacity, int) or self.capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {self.capacity!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        # (ours) The first chunk must create at least one slot, or its tokens would have no centroid
        # to join: plateau with L=1 or N=1 gives S(L) = 0.
        if schedule_size(self.chunk_size, self.capacity, self.schedule) < 1:
            raise ValueError(
                f"chunk_size={self.chunk_size}, capacity={self.capacity} with schedule "
                f"{self.schedule!r} creates no slot in the first chunk (S(L) = 0); "
                "use chunk_size >= 2 and capacity >= 2 with 'plateau'"
            )

    def size_after(self, folded_tokens: int) -> int:
        """S(t) for this config."""
        return schedule_size(folded_tokens, self.capacity, self.schedule)

    @classmethod
    def preset(cls, name: str) -> OVQConfig:
        """Named presets: 'default' (L=256, N=1024), 'small' (L=64, N=256), 'tiny' (tests: L=16, N=48),
        'exact' (linear schedule, N=65536: exact causal attention up to 64k tokens)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown OVQ preset {name!r}; choose from {sorted(PRESETS)}") from None


PRESETS: dict[str, OVQConfig] = {
    "default": OVQConfig(),
    "small": OVQConfig(chunk_size=64, capacity=256),
    "tiny": OVQConfig(chunk_size=16, capacity=48),
    "exact": OVQConfig(chunk_size=256, capacity=65536, schedule="linear"),
}
