"""OVQ attention: a bounded dictionary of key/value centroids learned online per chunk."""

from ovq.memory.config import PRESETS, OVQConfig, schedule_size
from ovq.memory.op import NonFiniteInputError, ovq_attention
from ovq.memory.state import OVQState

__all__ = ["OVQConfig", "OVQState", "PRESETS", "NonFiniteInputError", "ovq_attention", "schedule_size"]
