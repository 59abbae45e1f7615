"""ovq: a streaming continual-memory runtime around a hybrid sliding-window + OVQ attention model.

The public face: `from ovq import Runtime, Session, OVQConfig, OVQState, ovq_attention` (and
SamplingConfig, CancelToken for generation).
Subpackages: ovq.memory (the OVQ op), ovq.kernels (Triton kernels and their torch twins),
ovq.agent (model, training, evaluation, runtime, CLI), ovq.snapshots (codec and LMDB store),
ovq.tui (the terminal app).

Names load on first use (PEP 562), so `import ovq` and the CLI's argument parsing stay torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ovq.agent.model.generate import CancelToken, SamplingConfig
    from ovq.agent.runtime.session import Runtime, Session
    from ovq.memory import OVQConfig, OVQState, ovq_attention

_LAZY = {
    "Runtime": "ovq.agent.runtime.session",
    "Session": "ovq.agent.runtime.session",
    "SamplingConfig": "ovq.agent.model.generate",
    "CancelToken": "ovq.agent.model.generate",
    "OVQConfig": "ovq.memory",
    "OVQState": "ovq.memory",
    "ovq_attention": "ovq.memory",
}

__all__ = [
    "CancelToken",
    "OVQConfig",
    "OVQState",
    "Runtime",
    "SamplingConfig",
    "Session",
    "__version__",
    "ovq_attention",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'ovq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
