"""The shared shape of every task: an `Example` of text with answer spans, the chat markers, the registry.

Tasks emit text, not token ids, so they stay independent of the tokenizer: the trainer maps the
character `answer_spans` to tokens through the tokenizer's offsets (`answer_token_mask`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ovq.agent.model.tokenizer import (  # noqa: F401  (re-exported)
    ASSISTANT,
    CHAT_FORMATS,
    END,
    OBSERVATION,
    TURN_SEP,
    USER,
)

turn = CHAT_FORMATS["plain"].turn  # tasks write plain turns; ChatFormat.restyle converts whole pieces


@dataclass(frozen=True)
class Example:
    """One training or evaluation sequence.

    answer_spans: [start, end) character spans of `text` whose tokens carry the loss, sorted and
    disjoint; empty means the loss is on every token. meta: JSON-serialisable facts about the example
    (task name, per-answer records with distances, ...).
    """

    text: str
    answer_spans: tuple[tuple[int, int], ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        prev_end = 0
        for s, e in self.answer_spans:
            if not (prev_end <= s < e <= len(self.text)):
                raise ValueError(
                    f"answer span ({s}, {e}) is empty, out of order or outside the text "
                    f"(length {len(self.text)}, previous span ends at {prev_end})"
                )
            prev_end = e

    @property
    def answers(self) -> list[str]:
        return [self.text[s:e] for s, e in self.answer_spans]


def answer_token_mask(
    answer_spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]
) -> list[bool]:
    """Which tokens carry the loss, given each token's (start, end) character offsets.

    A token counts when it overlaps an answer span (so a BPE token ' 4821' that also holds the space
    before the answer counts). Tokens with empty offsets (special tokens) never count. With no
    answer spans every token counts.
    """
    if not answer_spans:
        return [True] * len(offsets)
    return [any(s < se and ss < e for ss, se in answer_spans) for s, e in offsets]


def words_between(text: str, start: int, end: int) -> int:
    return len(text[start:end].split())


def derive_seed(seed: int, index: int) -> int:
    """A 63-bit seed for the index-th example of a stream, well mixed so that nearby (seed, index)
    pairs never share examples."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Task:
    """A named task: its frozen config type, named config presets and `generate(config, seed)`."""

    name: str
    config_type: type
    generate: Callable[[Any, int], Example]
    presets: Mapping[str, Any]


@dataclass(frozen=True)
class BoundTask:
    """A task with its config fixed: `bound(seed) -> Example`, `bound.examples(seed)` streams."""

    task: Task
    config: Any

    @property
    def name(self) -> str:
        return self.task.name

    def __call__(self, seed: int) -> Example:
        return self.task.generate(self.config, seed)

    def examples(self, seed: int) -> Iterator[Example]:
        return iter_examples(self.config, seed)


TASKS: dict[str, Task] = {}
_BY_CONFIG: dict[type, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = _BY_CONFIG[task.config_type] = task
    return task


def make_task(name: str, preset: str = "default", **overrides: Any) -> BoundTask:
    """The task `name` with config = preset (see each task's PRESETS) with `overrides` applied."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    task = TASKS[name]
    if preset not in task.presets:
        raise ValueError(f"unknown preset {preset!r} for task {name!r}; choose from {sorted(task.presets)}")
    try:
        config = replace(task.presets[preset], **overrides)
    except TypeError as err:  # an unknown field name
        raise ValueError(f"bad override for task {name!r}: {err}") from None
    return BoundTask(task, config)


def make_chat_task(name: str, preset: str, chat_format: str, **overrides: Any) -> BoundTask:
    """make_task, where a task written as chat turns writes them in `chat_format` (a model's)."""
    if name in TASKS and "chat_format" in {f.name for f in fields(TASKS[name].config_type)}:
        overrides["chat_format"] = chat_format
    return make_task(name, preset, **overrides)


def iter_examples(config: Any, seed: int) -> Iterator[Example]:
    """Endless examples for `config` (any registered task config); example i uses derive_seed(seed, i)."""
    task = _BY_CONFIG.get(type(config))
    if task is None:
        raise ValueError(f"{type(config).__name__} is not the config of a registered task")
    index = 0
    while True:
        yield task.generate(config, derive_seed(seed, index))
        index += 1


def check_positive(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
