"""Training and evaluation tasks (docs/ovq.md section 9, plus the memory dialogue): each task turns
(config, seed) into an `Example` of text with the character spans of its answers.

    from ovq.agent.tasks import make_task
    task = make_task("memory_dialogue", max_distance=2000)
    example = task(seed=0)            # or: for example in task.examples(seed=0): ...
"""

from . import icl, icr, memory_dialogue, positional_icr, recite
from .base import (
    ASSISTANT,
    END,
    OBSERVATION,
    TASKS,
    TURN_SEP,
    USER,
    BoundTask,
    Example,
    Task,
    answer_token_mask,
    derive_seed,
    iter_examples,
    make_chat_task,
    make_task,
    turn,
)
from .facts import fact_kinds
from .icl import ICLConfig
from .icr import ICRConfig
from .memory_dialogue import MemoryDialogueConfig
from .positional_icr import PositionalICRConfig
from .recite import ReciteConfig

__all__ = [
    "ASSISTANT",
    "END",
    "OBSERVATION",
    "USER",
    "TASKS",
    "TURN_SEP",
    "BoundTask",
    "Example",
    "Task",
    "ICLConfig",
    "ICRConfig",
    "MemoryDialogueConfig",
    "PositionalICRConfig",
    "ReciteConfig",
    "answer_token_mask",
    "derive_seed",
    "fact_kinds",
    "icl",
    "icr",
    "iter_examples",
    "make_chat_task",
    "make_task",
    "memory_dialogue",
    "positional_icr",
    "recite",
    "turn",
]
