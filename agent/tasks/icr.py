"""Basic in-context recall (docs/ovq.md section 9): unique key-value pairs, later queried by key.
The answer of a query is the value after ': ' (per-token accuracy on it is the paper's metric):

    k7xq: 4821          <- a pair, one per line; more pairs are the only filler
    ...
    ? k7xq: 4821        <- a query
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .base import Example, Task, check_positive, register, words_between

KEY_ALPHABET = string.ascii_lowercase + string.digits
VALUE_ALPHABET = string.digits


def check_alphabet(name: str, alphabet: str) -> None:
    # The format's own characters may not appear inside keys or values.
    if not alphabet or any(not c.isprintable() or c.isspace() or c in ":?->" for c in alphabet):
        raise ValueError(
            f"{name} must be non-empty printable characters without spaces or ':?->', got {alphabet!r}"
        )
    if not alphabet.isascii():
        raise ValueError(f"{name} must be ASCII, got {alphabet!r}")


def random_token(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def unique_tokens(rng: random.Random, alphabet: str, length: int, count: int) -> list[str]:
    """`count` distinct random tokens; the configs guarantee the space holds >= 2*count of them."""
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault(random_token(rng, alphabet, length))
    return list(seen)


@dataclass(frozen=True)
class ICRConfig:
    num_pairs: int = 64  # at least this many pairs
    num_queries: int = 16  # distinct keys queried after all pairs
    target_chars: int = 0  # > 0: add pairs until the text is about this long
    key_len: int = 4
    value_len: int = 4
    key_alphabet: str = KEY_ALPHABET
    value_alphabet: str = VALUE_ALPHABET

    def __post_init__(self) -> None:
        for name in ("num_pairs", "num_queries", "key_len", "value_len"):
            check_positive(name, getattr(self, name))
        check_positive("target_chars", self.target_chars, minimum=0)
        check_alphabet("key_alphabet", self.key_alphabet)
        check_alphabet("value_alphabet", self.value_alphabet)
        if self.num_queries > self.total_pairs:
            raise ValueError(f"num_queries={self.num_queries} exceeds the {self.total_pairs} pairs")
        if len(self.key_alphabet) ** self.key_len < 2 * self.total_pairs:
            raise ValueError(
                f"{self.total_pairs} unique keys need a bigger key space than "
                f"{len(self.key_alphabet)}**{self.key_len}; raise key_len"
            )

    @property
    def total_pairs(self) -> int:
        pair_chars = self.key_len + 2 + self.value_len + 1
        query_chars = 2 + pair_chars
        fill = (self.target_chars - self.num_queries * query_chars) // pair_chars
        return max(self.num_pairs, fill)


PRESETS = {
    "default": ICRConfig(),
    "tiny": ICRConfig(num_pairs=8, num_queries=4),  # tests and smoke runs
    "train_4k": ICRConfig(num_pairs=16, num_queries=16, target_chars=4096),
    # the reproduction (README): trained at 256 characters (~225 tokens), tested at 256 x 1..16
    "repro": ICRConfig(
        num_pairs=8,
        num_queries=8,
        target_chars=256,
        key_len=3,
        value_len=2,
        key_alphabet=string.ascii_lowercase,
    ),
}


def generate(config: ICRConfig, seed: int) -> Example:
    """One ICR sequence. meta["queries"]: per query, in text order, key, value, span, pair_index,
    value_end (where the pair's value ends), query_start, distance_chars and distance_words."""
    rng = random.Random(seed)
    n = config.total_pairs
    keys = unique_tokens(rng, config.key_alphabet, config.key_len, n)
    values = [random_token(rng, config.value_alphabet, config.value_len) for _ in range(n)]
    parts, value_end, cur = [], [], 0
    for key, value in zip(keys, values):
        line = f"{key}: {value}\n"
        parts.append(line)
        cur += len(line)
        value_end.append(cur - 1)
    spans, queries = [], []
    for i in rng.sample(range(n), config.num_queries):
        prefix = f"? {keys[i]}: "
        start, end = cur + len(prefix), cur + len(prefix) + len(values[i])
        parts.append(f"{prefix}{values[i]}\n")
        spans.append((start, end))
        queries.append(
            {
                "key": keys[i],
                "value": values[i],
                "span": [start, end],
                "pair_index": i,
                "value_end": value_end[i],
                "query_start": cur,
                "distance_chars": cur - value_end[i],
            }
        )
        cur = end + 1
    text = "".join(parts)
    for q in queries:
        q["distance_words"] = words_between(text, q["value_end"], q["query_start"])
    return Example(text, tuple(spans), {"task": "icr", "num_pairs": n, "queries": queries})


TASK = register(Task("icr", ICRConfig, generate, PRESETS))
