"""OVQ attention: a bounded dictionary of key/value centroids learned online per chunk."""

from memory.config import PRESETS, OVQConfig, schedule_size
from memory.op import NonFiniteInputError, ovq_attention
from memory.state import OVQState

__all__ = ["OVQConfig", "OVQState", "PRESETS", "NonFiniteInputError", "ovq_attention", "schedule_size"]
