"""Chat streams for fine-tuning a pretrained model's memory: facts stated early, asked late.

One stream, written in the checkpoint's own chat template (TemplateChat):
  [preamble] facts as user turns, each acknowledged | generated filler turns | for each fact, either a
  question with an answer, or the user saying the statement again (a recital)
Answers and recited values are the spans a loss is put on; everything past the window is also
distilled from full attention (tune.py).

Every fact, name and value comes from the project's own generator (agent/tasks: facts.py's kinds and
phrasings, pools.py's "train" vocabulary split, filler.py's generated turns), so nothing here overlaps
the hand-written fact sets `ovq eval chat` measures with (agent/eval/chat_sets), whose phrasings,
values and filler (CPython's help texts) a tuned model never sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ovq.agent.model.pretrained.chat_template import TemplateChat
from ovq.agent.model.tokenizer import ASSISTANT, USER
from ovq.agent.tasks.facts import KINDS
from ovq.agent.tasks.filler import filler
from ovq.agent.tasks.memory_dialogue import (
    ACKS,
    QUESTION_PREFIXES,
    REPLIES,
    STATEMENT_PREFIXES,
    STATEMENT_SUFFIXES,
    Fact,
    fill,
    fmt,
)

SPLIT = "train"
MIN_TOKENS = 256


@dataclass(frozen=True)
class MemoryStream:
    text: str
    answer_spans: tuple[tuple[int, int], ...]  # [start, end) characters of each answer, in order
    facts: int
    tokens: (
        int  # as counted while laying it out (the tokenizer's count of the whole text may differ by a few)
    )


def memory_stream(
    chat: TemplateChat, count_tokens: Callable[[str], int], tokens: int, seed: int, max_facts: int = 6
) -> MemoryStream:
    """A stream of about `tokens` tokens (never more), deterministic in `seed`."""
    if tokens < MIN_TOKENS:
        raise ValueError(f"a memory stream needs at least {MIN_TOKENS} tokens, got {tokens}")
    rng = random.Random(seed)
    kinds = rng.sample(sorted(KINDS), rng.randint(2, max_facts))
    facts = [Fact(KINDS[k], None, KINDS[k].sample(rng, SPLIT)) for k in kinds]
    said = [_state(chat, fact, rng) for fact in facts]
    asks = [_ask(chat, fact, rng) for fact in facts]
    # as many facts as leave half the stream to the filler between them and their questions
    cost = [count_tokens(s) + count_tokens(a) for s, (a, _) in zip(said, asks)]
    n = len(facts)
    while n > 1 and count_tokens(chat.preamble) + sum(cost[:n]) > tokens // 2:
        n -= 1
    facts, said, asks = facts[:n], said[:n], asks[:n]

    pieces, spans, used = [chat.preamble], [], count_tokens(chat.preamble)

    def put(text: str, answer: tuple[int, int] | None = None) -> None:
        nonlocal used
        at = sum(map(len, pieces))
        if answer is not None:
            spans.append((at + answer[0], at + answer[1]))
        pieces.append(text)
        used += count_tokens(text)

    for text in said:
        put(text)
    tail = sum(count_tokens(text) for text, _ in asks)
    budget = tokens - tail
    while used < budget:
        piece = filler(rng, SPLIT, observation_prob=0.3, max_len=4 * max(budget - used, 0))
        if piece is None:
            break
        text = chat.restyle(piece)
        if used + count_tokens(text) > budget:
            break
        put(text)
    order = list(range(len(facts)))
    rng.shuffle(order)
    for i in order:
        put(*asks[i])
    if used > tokens:
        raise ValueError(f"{tokens} tokens cannot hold one fact and its question in this template")
    return MemoryStream("".join(pieces), tuple(sorted(spans)), len(facts), used)


def _state(chat: TemplateChat, fact: Fact, rng: random.Random) -> str:
    """The user's statement of a fact and the assistant's acknowledgement."""
    before, after = fill(rng.choice(fact.kind.statements), fact)
    prefix = "" if ":" in before else rng.choice(STATEMENT_PREFIXES)
    if prefix:
        before = _lower_my(before)
    statement = f"{prefix}{before}{fact.value}{after}{rng.choice(STATEMENT_SUFFIXES)}"
    return chat.turn(USER, statement) + chat.turn(ASSISTANT, rng.choice(ACKS))


def _ask(chat: TemplateChat, fact: Fact, rng: random.Random) -> tuple[str, tuple[int, int]]:
    """A question and its answer, or the statement said again; the value's span inside the text."""
    before, after = fill(rng.choice(fact.kind.statements), fact)
    if rng.random() < 0.5 or len(before) < 8:  # a statement that opens with its value gives no cue
        ask = fmt(rng.choice(fact.kind.questions), fact)
        before, after = fill(rng.choice(REPLIES), fact, speaker_is_user=False)
        head = chat.turn(USER, rng.choice(QUESTION_PREFIXES) + ask) + chat.turn(ASSISTANT, "\0")
        opening, closing = head.split("\0")
        head = opening + before
        return head + fact.value + after + closing, (len(head), len(head) + len(fact.value))
    opening, closing = chat.turn(USER, "\0").split("\0")
    head = opening + "As I said, " + _lower_my(before)
    return head + fact.value + after + closing, (len(head), len(head) + len(fact.value))


def _lower_my(text: str) -> str:
    """The opening word lower-cased after "By the way, " ("My shoe size..." -> "my shoe size...");
    "I" stays."""
    first = text.split(" ", 1)[0]
    return text if first == "I" or first.startswith("I'") else text[:1].lower() + text[1:]
