"""Memory dialogue: a long chat with fed observations in which facts are stated and, tens to tens of
thousands of characters later, asked about. The answer span is the value inside the assistant's reply.

    <|user|>By the way, Tovin Marsh's locker code is 48213.<|end|>
    <|assistant|>Noted.<|end|>
    <|observation|>Weather for Lisbon, ...<|end|>      <- filler: small talk and documents
    ...
    <|user|>What is Tovin Marsh's locker code?<|end|>
    <|assistant|>It's 48213.<|end|>                     <- "48213" is the answer span

Layout: each asked fact gets a target distance (log-uniform in [min_distance, max_distance]) and each
statement a target position; text is then written left to right, emitting an event once its target
is reached and filler in between, questions earliest-deadline-first so that every distance (end of
the stated value to the start of the question turn) stays inside the configured range.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from ovq.agent.model.tokenizer import ChatFormat, chat_format

from . import pools as P
from .base import (
    ASSISTANT,
    END,
    OBSERVATION,
    TURN_SEP,
    USER,
    Example,
    Task,
    check_positive,
    register,
    words_between,
)
from .facts import KINDS, FactKind, Pooled, fact_kinds
from .filler import filler, log_lines, stamp, tiny

__all__ = ["MemoryDialogueConfig", "PRESETS", "generate", "fact_kinds"]

MIN_WINDOW = 100  # max_distance - min_distance: room to land a question between filler pieces
MIN_MAX_DISTANCE = 200  # a statement turn, its acknowledgement and the question need this much
SOFT_OVERSHOOT = 200  # filler may pass a statement's target by this much
RESERVE = 500  # room after a planned statement start: its value, then the question turn
MAX_ATTEMPTS = 50
END_SEP = END + TURN_SEP  # closes a turn


@dataclass(frozen=True)
class MemoryDialogueConfig:
    num_facts: int = 8  # facts stated; the unasked ones are distractors
    num_questions: int = 4  # distinct facts asked about
    min_distance: int = 50  # characters from the end of a stated value to its question
    max_distance: int = 4000
    target_chars: int = 8000  # total length (questions whose target falls late can pass it)
    vocab_split: P.Split = "train"  # names and values come from this side of the split
    observation_prob: float = 0.3  # chance a statement or a filler piece is an observation
    self_prob: float = 0.3  # chance a fact is about the user ("my locker code ...")
    same_kind_prob: float = 0.2  # chance a fact repeats a kind already used for someone else
    # chance that a closed-class value (a word from a small pool: sports, spices, cities...) is an
    # invented word instead; training data only. The pools hold 18-54 words, so without this a model
    # can learn each class's training values by heart and then fails on held-out ones.
    novel_value_prob: float = 0.0
    # how turns are written (agent.tokenizer.CHAT_FORMATS): the format of the model being trained
    chat_format: str = "plain"

    def __post_init__(self) -> None:
        check_positive("num_facts", self.num_facts)
        check_positive("num_questions", self.num_questions)
        check_positive("min_distance", self.min_distance, minimum=0)
        check_positive("max_distance", self.max_distance, minimum=MIN_MAX_DISTANCE)
        check_positive("target_chars", self.target_chars)
        if self.num_questions > self.num_facts:
            raise ValueError(f"num_questions={self.num_questions} exceeds num_facts={self.num_facts}")
        if self.min_distance > self.max_distance:
            raise ValueError(f"min_distance={self.min_distance} > max_distance={self.max_distance}")
        if self.max_distance - self.min_distance < MIN_WINDOW:
            raise ValueError(
                f"max_distance - min_distance must be >= {MIN_WINDOW} characters (filler comes in whole "
                f"turns), got {self.max_distance - self.min_distance}"
            )
        if self.target_chars < self.max_distance:
            raise ValueError(
                f"target_chars={self.target_chars} is shorter than max_distance={self.max_distance}"
            )
        chat_format(self.chat_format)  # raises on an unknown name
        if self.vocab_split not in P.SPLITS:
            raise ValueError(f"vocab_split must be one of {P.SPLITS}, got {self.vocab_split!r}")
        if self.novel_value_prob and self.vocab_split != "train":
            raise ValueError(
                f"novel_value_prob={self.novel_value_prob} shapes training data: it needs "
                f"vocab_split='train', got {self.vocab_split!r} (test data keeps the held-out pool values)"
            )
        for name in ("observation_prob", "self_prob", "same_kind_prob", "novel_value_prob"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")

    @property
    def chat(self) -> ChatFormat:
        return chat_format(self.chat_format)


# dense: ~12 questions (~40 answer tokens) in ~1k tokens
TRAIN_1K = MemoryDialogueConfig(
    num_facts=14, num_questions=12, min_distance=300, max_distance=3600, target_chars=4000
)
TRAIN_4K = MemoryDialogueConfig(num_facts=6, num_questions=4, max_distance=12_000, target_chars=14_000)
PRESETS = {
    "default": MemoryDialogueConfig(),
    "train_1k": TRAIN_1K,
    "train_4k": TRAIN_4K,
    # a quarter of closed-class values are invented words: copying, not recall of a class
    "train_1k_novel": replace(TRAIN_1K, novel_value_prob=0.25),
    "train_4k_novel": replace(TRAIN_4K, novel_value_prob=0.25),
    # train_1k's question density (~8 per 1k tokens) at ~4k tokens: distances out to ~3k tokens
    "train_4k_dense_novel": replace(
        TRAIN_1K,
        num_facts=40,
        num_questions=32,
        max_distance=13_000,
        target_chars=15_000,
        novel_value_prob=0.25,
    ),
    # the default model's acceptance test: facts stated 2k-16k tokens (3.7-4 characters each with the
    # default tokenizer) before their question, names and values from the test split
    "test_2k_16k": MemoryDialogueConfig(
        num_facts=8,
        num_questions=6,
        min_distance=8_000,
        max_distance=58_000,
        target_chars=62_000,
        vocab_split="test",
    ),
    "test_64k": MemoryDialogueConfig(
        num_facts=16,
        num_questions=8,
        min_distance=1000,
        max_distance=200_000,
        target_chars=220_000,
        vocab_split="test",
    ),
}


@dataclass
class Fact:
    kind: FactKind
    subject: str | None  # None: the user
    value: str
    asked: bool = False
    distance: int = 0  # target distance to its question, when asked

    def whose(self, speaker_is_user: bool = True) -> str:
        if self.subject is not None:
            return f"{self.subject}'s"
        return "my" if speaker_is_user else "your"


def fmt(template: str, fact: Fact, speaker_is_user: bool = True) -> str:
    whose = fact.whose(speaker_is_user)
    return template.format(whose=whose, Whose=whose[0].upper() + whose[1:], label=fact.kind.label)


def fill(template: str, fact: Fact, speaker_is_user: bool = True) -> tuple[str, str]:
    """The template split at {value}: (text before the value, text after it)."""
    before, after = template.split("{value}")
    return fmt(before, fact, speaker_is_user), fmt(after, fact, speaker_is_user)


# --- facts ---------------------------------------------------------------------------------------------
def choose_facts(config: MemoryDialogueConfig, rng: random.Random) -> list[Fact]:
    """Facts with distinct (subject, kind), so every question has exactly one answer."""
    kinds, split = list(KINDS.values()), config.vocab_split
    facts: list[Fact] = []
    people: list[str] = []
    used: set[tuple[str | None, str]] = set()

    def new_person() -> str:
        name = P.person(rng, split)
        return new_person() if name in people else name

    while len(facts) < config.num_facts:
        if rng.random() < config.self_prob:
            subject = None
        elif people and rng.random() < 0.3:
            subject = rng.choice(people)
        else:
            subject = new_person()
        kind = rng.choice(facts).kind if facts and rng.random() < config.same_kind_prob else rng.choice(kinds)
        if (subject, kind.kind) in used:
            free = [k for k in kinds if (subject, k.kind) not in used]
            if subject is None and free:
                kind = rng.choice(free)
            else:  # a fresh person is always free (so self_prob=1 still ends, with others' facts)
                subject = new_person()
        used.add((subject, kind.kind))
        if subject is not None and subject not in people:
            people.append(subject)
        # the probability is drawn only when set, so the default keeps every seed's dialogue unchanged
        if (
            config.novel_value_prob
            and isinstance(kind.sample, Pooled)
            and rng.random() < config.novel_value_prob
        ):
            value = kind.sample.invented(rng)
        else:
            value = kind.sample(rng, split)
        facts.append(Fact(kind, subject, value))
    return facts


# --- statements and questions ------------------------------------------------------------------------
STATEMENT_PREFIXES = (
    "",
    "",
    "By the way, ",
    "Quick note: ",
    "Please remember this: ",
    "FYI: ",
    "One more thing. ",
)
STATEMENT_SUFFIXES = ("", "", " Thanks!", " Please keep that in mind.", " That might come up later.")
ACKS = ("Noted.", "Got it, I'll remember that.", "Thanks, I've made a note.", "Okay!", "Understood.")
QUESTION_PREFIXES = ("", "", "Quick question. ", "Hey! ", "Sorry to ask again. ", "One more thing. ")
REPLIES = (
    "It's {value}.",
    "{value}",
    "That would be {value}.",
    "{Whose} {label} is {value}.",
    "From my notes, it's {value}.",
    "I have it down as {value}.",
)
SYSTEMS = ("HR", "CRM", "Contacts", "Directory", "Facilities", "Travel desk")


def statement(fact: Fact, config: MemoryDialogueConfig, rng: random.Random) -> tuple[str, int]:
    """A statement piece and where its value ends inside it."""
    chat = config.chat
    if fact.subject is None or rng.random() >= config.observation_prob:
        before, after = fill(rng.choice(fact.kind.statements), fact)
        # No prefix before a template with its own colon: not "Quick note: For the calendar: ...".
        prefix = "" if ":" in before else rng.choice(STATEMENT_PREFIXES)
        head = f"{chat.open(USER)}{prefix}{before}"
        body = f"{after}{rng.choice(STATEMENT_SUFFIXES)}{END_SEP}" + chat.turn(ASSISTANT, rng.choice(ACKS))
        return head + fact.value + body, len(head) + len(fact.value)

    name, label, split = fact.subject, fact.kind.label, config.vocab_split
    style = rng.randrange(4)
    if style == 0:  # a record card
        field = label[0].upper() + label[1:]
        head = f"{rng.choice(SYSTEMS)} record #{P.digits(rng, 5)}\nName: {name}\n{field}: "
        tail = f"\nUpdated: {stamp(rng)}"
    elif style == 1:  # an email
        sender, to = P.person(rng, split), P.draw(rng, P.first_name, split)
        before, after = fill(rng.choice(fact.kind.statements), fact)
        head = f"From: {sender}\nTo: {to}\nSubject: {label} for {name}\n\nHi {to},\n{before}"
        tail = f"{after}\n\nBest,\n{sender.split()[0]}"
    elif style == 2:  # one line in a log, stamped like the line before it
        lines = log_lines(rng, split, 1, 9).split("\n")
        k = rng.randint(1, len(lines))
        time = lines[k - 1][: len("[2024-01-01 00:00:00]")]
        head = "\n".join(lines[:k]) + f"\n{time} INFO directory: {label} for {name} set to "
        tail = "".join("\n" + line for line in lines[k:])
    else:  # a tool result
        head = f'lookup("{name}") returned:\n{{"name": "{name}", "{fact.kind.kind}": "'
        tail = '"}'
    head = chat.open(OBSERVATION) + head
    return head + fact.value + tail + END_SEP, len(head) + len(fact.value)


def question(fact: Fact, chat: ChatFormat, rng: random.Random) -> tuple[str, tuple[int, int]]:
    """A question turn and its answer, with the answer's span inside the piece."""
    ask = fmt(rng.choice(fact.kind.questions), fact)
    before, after = fill(rng.choice(REPLIES), fact, speaker_is_user=False)
    head = chat.turn(USER, rng.choice(QUESTION_PREFIXES) + ask) + chat.open(ASSISTANT) + before
    return head + fact.value + after + END_SEP, (len(head), len(head) + len(fact.value))


# --- layout --------------------------------------------------------------------------------------------
def generate(config: MemoryDialogueConfig, seed: int) -> Example:
    """One dialogue. meta["facts"]: per stated fact its kind, subject ("user" or a name), value,
    statement_span (the value where it is stated), channel ("user" | "observation") and whether it is
    asked. meta["questions"]: per question, in text order, the fact's fields plus answer_span,
    question_start, distance_chars (statement_span end to question_start), distance_words and the
    target_distance it was laid out for."""
    rng = random.Random(seed)
    for _ in range(MAX_ATTEMPTS):
        example = attempt(config, rng)
        if example is not None:
            return example
    raise RuntimeError(
        f"could not place {config.num_questions} questions within [{config.min_distance}, "
        f"{config.max_distance}] after {MAX_ATTEMPTS} attempts (seed {seed}); widen the distance range"
    )


def attempt(config: MemoryDialogueConfig, rng: random.Random) -> Example | None:
    """One try at a layout; None when a question would miss its window (rare; the caller retries)."""
    facts = choose_facts(config, rng)
    T, lo, hi = config.target_chars, config.min_distance, config.max_distance
    stmt_targets = []
    for i, fact in enumerate(facts):
        if i < config.num_questions:  # facts come in random order, so the first ones are as good as any
            fact.asked = True
            fact.distance = round(math.exp(rng.uniform(math.log(max(lo, 1)), math.log(hi))))
            latest = T - fact.distance - RESERVE
        else:
            latest = int(0.9 * T)
        stmt_targets.append((rng.uniform(0, max(0, latest)), i))
    pending_stmts = sorted(stmt_targets)
    pending_qs: list[dict] = []  # {fact, lower, target, deadline, value_end}
    pieces: list[str] = []
    spans, fact_meta, questions = [], [None] * len(facts), []
    cur = 0
    chat = config.chat

    def some_filler(max_len: int) -> str | None:
        # filler is written plain, at most two turns; restyling lengthens each by the prefix
        piece = filler(rng, config.vocab_split, config.observation_prob, max_len - 2 * len(chat.prefix))
        return None if piece is None else chat.restyle(piece)

    def emit(piece: str) -> None:
        nonlocal cur
        pieces.append(piece)
        cur += len(piece)

    def ask(q: dict, rendered: tuple[str, tuple[int, int]] | None = None) -> None:
        fact = facts[q["fact"]]
        piece, (s, e) = rendered or question(fact, chat, rng)
        pending_qs.remove(q)
        spans.append((cur + s, cur + e))
        questions.append(
            {
                **fact_meta[q["fact"]],
                "answer_span": [cur + s, cur + e],
                "question_start": cur,
                "distance_chars": cur - q["value_end"],
                "target_distance": fact.distance,
            }
        )
        emit(piece)

    def state(i: int, piece: str, value_end: int) -> None:
        fact, end = facts[i], cur + value_end
        fact_meta[i] = {
            "kind": fact.kind.kind,
            "subject": fact.subject or "user",
            "value": fact.value,
            "statement_span": [end - len(fact.value), end],
            "channel": "observation" if piece.startswith(OBSERVATION) else "user",
        }
        if fact.asked:
            pending_qs.append(
                {
                    "fact": i,
                    "lower": end + lo,
                    "target": end + fact.distance,
                    "deadline": end + hi,
                    "value_end": end,
                }
            )
        emit(piece)

    by_deadline = lambda q: q["deadline"]
    while pending_stmts or pending_qs or cur < T:
        if any(q["deadline"] < cur for q in pending_qs):
            return None
        open_qs = [q for q in pending_qs if q["lower"] <= cur]
        due = [q for q in open_qs if q["target"] <= cur]
        if due:
            q = min(due, key=by_deadline)
            rendered = question(facts[q["fact"]], chat, rng)
            at_risk = [p for p in open_qs if p is not q and p["deadline"] < cur + len(rendered[0])]
            if at_risk:  # asking q would push another question past its window: that one goes first
                ask(min(at_risk, key=by_deadline))
            else:
                ask(q, rendered)
            continue
        if pending_stmts and pending_stmts[0][0] <= cur:
            piece, value_end = statement(facts[pending_stmts[0][1]], config, rng)
            if all(cur + len(piece) <= q["deadline"] for q in pending_qs):
                state(pending_stmts.pop(0)[1], piece, value_end)
                continue
            # else: it would push a question past its window; filler until that question is asked
        # Filler: never past a question's deadline, and not far past the next planned event.
        hard = min((q["deadline"] for q in pending_qs), default=math.inf) - cur
        ahead = [t for t, _ in pending_stmts if t > cur] + [q["target"] for q in pending_qs]
        soft = min(ahead) - cur + SOFT_OVERSHOOT if ahead else T - cur
        piece = some_filler(int(min(hard, max(soft, 0))))
        if piece is None and pending_qs:
            if open_qs:  # too close to a deadline for any filler: ask now, still inside the window
                ask(min(open_qs, key=by_deadline))
                continue
            piece = some_filler(int(hard))
            if piece is None:
                return None
        emit(piece or chat.restyle(tiny(rng, config.vocab_split)))

    text = "".join(pieces)
    for q in questions:
        q["distance_words"] = words_between(text, q["statement_span"][1], q["question_start"])
    for f, m in zip(facts, fact_meta):
        m["asked"] = f.asked
    meta = {
        "task": "memory_dialogue",
        "vocab_split": config.vocab_split,
        "facts": fact_meta,
        "questions": questions,
    }
    return Example(text, tuple(spans), meta)


TASK = register(Task("memory_dialogue", MemoryDialogueConfig, generate, PRESETS))
