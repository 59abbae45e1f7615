"""Recite: labelled notes of random words, some later recited in full after their label alone.
A dense copying drill (most answer tokens are copies) that teaches a model to look text up by a
name and continue it, the skill memory dialogues ask for in a sparser, chattier form:

    Tovin Marsh: amber falcon 4821 Lisbon risotto     <- a note
    ...                                                <- more notes (the only filler)
    Recite Tovin Marsh: amber falcon 4821 Lisbon risotto  <- the answer is everything after the label
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import pools as P
from .base import Example, Task, check_positive, register, words_between

WORD_POOLS = (P.COLOURS, P.ANIMALS, P.FOODS, P.CITIES, P.HOBBIES, P.ADJECTIVES, P.NOUNS, P.SPICES)


@dataclass(frozen=True)
class ReciteConfig:
    min_words: int = 3  # words per note
    max_words: int = 12
    target_chars: int = 3400  # notes are added until the text is about this long
    recite_fraction: float = 0.5  # share of the notes recited at the end, in random order
    vocab_split: P.Split = "train"  # labels (names) come from this side of the split

    def __post_init__(self) -> None:
        check_positive("min_words", self.min_words)
        check_positive("max_words", self.max_words)
        check_positive("target_chars", self.target_chars, minimum=100)
        if self.min_words > self.max_words:
            raise ValueError(f"min_words={self.min_words} > max_words={self.max_words}")
        if not 0 < self.recite_fraction <= 1:
            raise ValueError(f"recite_fraction must lie in (0, 1], got {self.recite_fraction!r}")
        if self.vocab_split not in P.SPLITS:
            raise ValueError(f"vocab_split must be one of {P.SPLITS}, got {self.vocab_split!r}")


PRESETS = {
    "default": ReciteConfig(),
    "tiny": ReciteConfig(max_words=5, target_chars=300),
    "test": ReciteConfig(vocab_split="test"),
}


def _word(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return P.digits(rng, rng.randint(2, 5))
    return rng.choice(rng.choice(WORD_POOLS))


def generate(config: ReciteConfig, seed: int) -> Example:
    """meta["recitals"]: per recital, in text order: label, span, note_end (where the note ends),
    query_start (where the recital line starts), distance_chars and distance_words."""
    rng = random.Random(seed)
    labels: dict[str, str] = {}  # label -> note
    text, note_end = "", {}
    budget = config.target_chars / (1 + config.recite_fraction)  # notes, then recitals of some
    while len(text) < budget or len(labels) < 2:
        label = P.person(rng, config.vocab_split)
        if label in labels:
            continue
        labels[label] = " ".join(_word(rng) for _ in range(rng.randint(config.min_words, config.max_words)))
        text += f"{label}: {labels[label]}\n"
        note_end[label] = len(text) - 1
    recited = rng.sample(list(labels), max(1, round(config.recite_fraction * len(labels))))
    spans, recitals = [], []
    for label in recited:
        start = len(text)
        prefix = f"Recite {label}: "
        span = (start + len(prefix), start + len(prefix) + len(labels[label]))
        text += f"{prefix}{labels[label]}\n"
        spans.append(span)
        recitals.append(
            {"label": label, "span": list(span), "note_end": note_end[label], "query_start": start,
             "distance_chars": start - note_end[label]}
        )  # fmt: skip
    for r in recitals:
        r["distance_words"] = words_between(text, r["note_end"], r["query_start"])
    return Example(text, tuple(spans), {"task": "recite", "recitals": recitals})


TASK = register(Task("recite", ReciteConfig, generate, PRESETS))
