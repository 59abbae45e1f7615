"""Positional in-context recall (docs/ovq.md section 9): a key occurs several times with different
values; its query asks for all of them in order of appearance.

    k7xq: 4821
    ab3z: 0093
    k7xq: 1177
    ...
    ? k7xq: 4821 1177   <- each value is an answer span
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import Example, Task, check_positive, register, words_between
from .icr import KEY_ALPHABET, VALUE_ALPHABET, check_alphabet, unique_tokens


@dataclass(frozen=True)
class PositionalICRConfig:
    num_keys: int = 32  # at least this many distinct keys
    num_queries: int = 8  # distinct keys queried after all pairs
    min_occurrences: int = 2  # values per key, drawn uniformly in [min, max]
    max_occurrences: int = 4
    target_chars: int = 0  # > 0: add keys until the text is about this long
    key_len: int = 4
    value_len: int = 4
    key_alphabet: str = KEY_ALPHABET
    value_alphabet: str = VALUE_ALPHABET

    def __post_init__(self) -> None:
        for name in ("num_keys", "num_queries", "min_occurrences", "key_len", "value_len"):
            check_positive(name, getattr(self, name))
        check_positive("target_chars", self.target_chars, minimum=0)
        check_alphabet("key_alphabet", self.key_alphabet)
        check_alphabet("value_alphabet", self.value_alphabet)
        if not isinstance(self.max_occurrences, int) or self.max_occurrences < self.min_occurrences:
            raise ValueError(
                f"max_occurrences={self.max_occurrences!r} must be an int >= "
                f"min_occurrences={self.min_occurrences}"
            )
        if self.num_queries > self.total_keys:
            raise ValueError(f"num_queries={self.num_queries} exceeds the {self.total_keys} keys")
        if len(self.key_alphabet) ** self.key_len < 2 * self.total_keys:
            raise ValueError(
                f"{self.total_keys} unique keys need a bigger key space than "
                f"{len(self.key_alphabet)}**{self.key_len}; raise key_len"
            )
        if len(self.value_alphabet) ** self.value_len < 2 * self.max_occurrences:
            raise ValueError(f"{self.max_occurrences} distinct values per key need a larger value_len")

    @property
    def total_keys(self) -> int:
        occurrences = (self.min_occurrences + self.max_occurrences) / 2
        pair_chars = self.key_len + 2 + self.value_len + 1
        query_chars = 2 + self.key_len + 1 + occurrences * (self.value_len + 1) + 1
        fill = int((self.target_chars - self.num_queries * query_chars) / (occurrences * pair_chars))
        return max(self.num_keys, fill)


PRESETS = {
    "default": PositionalICRConfig(),
    "train_4k": PositionalICRConfig(num_keys=8, num_queries=8, target_chars=4096),
    "test_64k": PositionalICRConfig(num_keys=8, num_queries=16, target_chars=65536, key_len=5),
}


def generate(config: PositionalICRConfig, seed: int) -> Example:
    """One positional ICR sequence. meta["queries"]: per query, in text order, key, values and spans
    (in order of appearance), query_start, and per value value_ends, distances_chars, distances_words."""
    rng = random.Random(seed)
    keys = unique_tokens(rng, config.key_alphabet, config.key_len, config.total_keys)
    lines = []  # (key index, value)
    for i in range(len(keys)):
        occurrences = rng.randint(config.min_occurrences, config.max_occurrences)
        lines += [(i, v) for v in unique_tokens(rng, config.value_alphabet, config.value_len, occurrences)]
    rng.shuffle(lines)

    parts, cur = [], 0
    seen: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(keys))}  # key -> (value, value end)
    for i, value in lines:
        line = f"{keys[i]}: {value}\n"
        parts.append(line)
        cur += len(line)
        seen[i].append((value, cur - 1))

    spans, queries = [], []
    for i in rng.sample(range(len(keys)), config.num_queries):
        values = [v for v, _ in seen[i]]
        query_start, cur = cur, cur + len(f"? {keys[i]}:")
        value_spans = []
        for v in values:
            value_spans.append([cur + 1, cur + 1 + len(v)])
            cur += 1 + len(v)
        cur += 1
        parts.append(f"? {keys[i]}: {' '.join(values)}\n")
        spans += [tuple(s) for s in value_spans]
        queries.append(
            {
                "key": keys[i],
                "values": values,
                "spans": value_spans,
                "query_start": query_start,
                "distances_chars": [query_start - end for _, end in seen[i]],
                "value_ends": [e for _, e in seen[i]],
            }
        )
    text = "".join(parts)
    for q in queries:
        q["distances_words"] = [words_between(text, e, q["query_start"]) for e in q["value_ends"]]
    meta = {"task": "positional_icr", "num_keys": len(keys), "num_pairs": len(lines), "queries": queries}
    return Example(text, tuple(spans), meta)


TASK = register(Task("positional_icr", PositionalICRConfig, generate, PRESETS))
