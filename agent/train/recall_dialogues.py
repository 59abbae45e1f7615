"""Chats for fine-tuning a pretrained model with its memory in the loop: facts told in passing,
buried under unrelated text, asked back much later in other words.

One dialogue, written in the checkpoint's own chat template, about `tokens` tokens long:

  [preamble] ... "By the way, my locker code is 48213."  [an acknowledgement that repeats it | a short
  one | nothing] ... filler: small talk, fed documents, long passages pasted in ... "What's the code for
  my locker?" -> "Your locker code is 48213." ... "Do you remember my shoe size?" (never told) ->
  "You haven't told me your shoe size."

What the model is taught (the `targets`: character spans of assistant text that carry the loss) is to
take a fact in without refusing, to read it back from wherever it lies (distance 0, straight after the
statement, up to the whole dialogue), and to say so when it was never told. Everything else is context
only; the trainer keeps ordinary text as the frozen base model predicts it (KL, tune.py).

Data provenance: every fact, name, value, phrasing and chat filler is generated here and in agent/tasks
(pools.py's "train" vocabulary split, facts.py's kinds, filler.py's small talk and documents); pasted
passages are docstrings of Python's standard library modules (PSF licence, installed with Python),
never the CPython help topics (`pydoc_data`) that `ovq eval` fills its streams with.
"""

from __future__ import annotations

import importlib
import inspect
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from ovq.agent.model.pretrained.chat_template import TemplateChat
from ovq.agent.model.tokenizer import ASSISTANT, OBSERVATION, USER
from ovq.agent.tasks import pools as P
from ovq.agent.tasks.facts import KINDS, FactKind, Pooled
from ovq.agent.tasks.filler import filler

SPLIT = "train"
MIN_TOKENS = 256
NOVEL_VALUE_PROB = 0.3  # closed-class values (cities, foods...) replaced by invented words: copy, not guess

# --- phrasings (more than facts.py's three per kind: the checks that matter use words we never see)
PREFIXES = (
    "", "", "", "By the way, ", "Quick note: ", "Please remember this: ", "FYI, ", "Just so you know, ",
    "Remember this for later: ", "Oh, and ", "Can you keep this in mind? ", "Something to remember: ",
    "For future reference, ", "Note to self, via you: ", "Heads up: ",
)  # fmt: skip
SUFFIXES = (
    "", "", "", " Please remember it.", " Don't forget it.", " I'll ask you about it later.",
    " Thanks!", " Keep that in mind.", " It might come up again.", " Can you remember that for me?",
)  # fmt: skip
# an acknowledgement that repeats the value: the model learns to take facts in, not to refuse them
ACK_REPEATS = (
    "Got it: {whose} {label} is {value}.",
    "Noted. {Whose} {label} is {value}.",
    "Okay, I'll remember that {whose} {label} is {value}.",
    "Thanks for telling me. I've noted {whose} {label}: {value}.",
    "Sure, I'll keep in mind that {whose} {label} is {value}.",
    "Understood, {value}. I'll remember it.",
    "All right, {whose} {label}: {value}. Noted.",
)
ACK_SHORT = ("Got it.", "Noted, thanks.", "Okay, I'll remember that.", "Sure, noted.", "Thanks, got it!")
Q_PREFIXES = (
    "", "", "", "Quick question: ", "Hey, ", "Remind me, ", "Sorry, I forgot. ", "Hi again! ",
    "One more thing. ", "Do you still remember? ", "Can you help me out? ", "I need this now: ",
)  # fmt: skip
# generic questions by label, beside facts.py's own for each kind
Q_GENERIC = (
    "What is {whose} {label}?",
    "What's {whose} {label} again?",
    "Do you remember {whose} {label}?",
    "Can you tell me {whose} {label}?",
    "What did I tell you {whose} {label} was?",
    "I told you {whose} {label} earlier. What was it?",
    "Could you remind me of {whose} {label}?",
)
ANSWERS = (
    "{Whose} {label} is {value}.",
    "It's {value}.",
    "You told me {whose} {label} is {value}.",
    "{value}.",
    "{Whose} {label} is {value}, as you told me.",
    "That's {value}.",
    "You said it was {value}.",
)
UNTOLD = (
    "You haven't told me {whose} {label}.",
    "I don't know. You haven't told me {whose} {label} yet.",
    "You haven't mentioned {whose} {label}, so I don't know it.",
    "I'm not sure: you never told me {whose} {label}.",
)
PASTE_PREFIXES = ("Here is something I'm reading:\n\n", "Some notes I pasted:\n\n", "From the docs:\n\n", "")
PASTE_ACKS = ("Thanks, noted.", "Okay.", "Got it.", "")
# stdlib modules whose docstrings are pasted as long passages (never pydoc_data: ovq eval's filler)
DOC_MODULES = (
    "argparse asyncio base64 bisect calendar codecs collections configparser contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fractions ftplib functools getopt gettext glob gzip "
    "hashlib heapq hmac html http.client imaplib inspect io ipaddress itertools json locale logging "
    "mailbox mimetypes numbers operator optparse os pathlib pickle pprint queue random re sched secrets "
    "selectors shelve shlex shutil smtplib socket sqlite3 statistics string struct subprocess tarfile "
    "tempfile textwrap threading timeit tokenize traceback typing unittest urllib.parse uuid wave "
    "weakref xml.dom.minidom zipfile zoneinfo"
).split()


@dataclass(frozen=True)
class Dialogue:
    text: str
    targets: tuple[tuple[int, int], ...]  # [start, end) characters of assistant text that carries the loss
    asks: tuple[int, ...]  # tokens between each asked fact's statement and its question (as laid out)
    facts: int
    tokens: int  # as counted while laying it out


@dataclass(frozen=True)
class _Fact:
    kind: FactKind
    subject: str | None  # None: the user
    value: str

    def fill(self, template: str, by_user: bool) -> str:
        whose = f"{self.subject}'s" if self.subject else ("my" if by_user else "your")
        return template.format(
            whose=whose, Whose=whose[0].upper() + whose[1:], label=self.kind.label, value=self.value
        )


def recall_dialogue(
    chat: TemplateChat, count_tokens: Callable[[str], int], tokens: int, seed: int
) -> Dialogue:
    """A dialogue of about `tokens` tokens (never more), deterministic in `seed`."""
    if tokens < MIN_TOKENS:
        raise ValueError(f"a recall dialogue needs at least {MIN_TOKENS} tokens, got {tokens}")
    rng = random.Random(seed)
    kinds = rng.sample(sorted(KINDS), rng.randint(2, 6))
    told = [_fact(KINDS[k], rng) for k in kinds[: rng.randint(1, max(1, len(kinds) - 1))]]
    untold = [_fact(KINDS[k], rng) for k in kinds[len(told) :]]
    # events at token positions: statements early, each fact asked once or twice at a distance from
    # 0 (straight after) to most of the dialogue, log-uniform; some never-told facts asked too
    room = tokens - count_tokens(chat.preamble) - 160  # the last question and its answer fit
    events: list[tuple[float, int, str, _Fact]] = []
    for i, fact in enumerate(told):
        at = rng.uniform(0, 0.5 * room)
        events.append((at, i, "state", fact))
        for _ in range(rng.choice((1, 1, 2))):
            far = max(room - at, 2.0)
            d = 0.0 if rng.random() < 0.15 else math.exp(rng.uniform(math.log(32), math.log(far)))
            events.append((at + d, i, "ask", fact))
    for j, fact in enumerate(untold[: rng.choice((0, 1, 1, 2))]):
        events.append((rng.uniform(0.2 * room, room), 100 + j, "untold", fact))
    events.sort(key=lambda e: (e[0], e[2] != "state"))

    pieces, targets, used = [chat.preamble], [], count_tokens(chat.preamble)
    stated_at: dict[int, int] = {}
    asks: list[int] = []
    avoid = tuple(f.value for f in told + untold)

    def put(text: str, target: tuple[int, int] | None = None) -> None:
        nonlocal used
        at = sum(map(len, pieces))
        if target is not None:
            targets.append((at + target[0], at + target[1]))
        pieces.append(text)
        used += count_tokens(text)

    def assistant(text: str) -> None:  # an assistant turn whose text (and closing) carries the loss
        opening, closing = chat.turn(ASSISTANT, "\0").split("\0")
        put(opening + text + closing, (len(opening), len(opening) + len(text) + len(closing)))

    for at, i, what, fact in events:
        while used < at:
            piece = _filler(chat, rng, int(at - used), avoid)
            if piece is None or used + count_tokens(piece) > tokens - 160:
                break
            put(piece)
        if what == "ask" and i not in stated_at:
            continue
        if what == "state":
            put(chat.turn(USER, _statement(fact, rng)))
            mode = rng.random()
            if mode < 0.45:
                assistant(fact.fill(rng.choice(ACK_REPEATS), by_user=False))
            elif mode < 0.7:
                assistant(rng.choice(ACK_SHORT))
            stated_at[i] = used  # distances count from the end of the exchange that told it
        else:
            question = _question(fact, rng)
            if used + count_tokens(question) + 48 > tokens:
                continue
            if what == "ask":
                asks.append(used - stated_at[i])
            put(chat.turn(USER, question))
            answer = rng.choice(ANSWERS if what == "ask" else UNTOLD)
            assistant(fact.fill(answer, by_user=False))
    if used > tokens:
        raise ValueError(f"{tokens} tokens cannot hold one fact and its question in this template")
    return Dialogue("".join(pieces), tuple(targets), tuple(asks), len(told), used)


def _fact(kind: FactKind, rng: random.Random) -> _Fact:
    sample = kind.sample
    if isinstance(sample, Pooled) and rng.random() < NOVEL_VALUE_PROB:
        value = sample.invented(rng)
    else:
        value = sample(rng, SPLIT)
    subject = None if rng.random() < 0.75 else P.person(rng, SPLIT)
    return _Fact(kind, subject, value)


def _statement(fact: _Fact, rng: random.Random) -> str:
    text = fact.fill(rng.choice(fact.kind.statements), by_user=True)
    prefix = rng.choice(PREFIXES)
    if prefix and not prefix.endswith(("? ", ": ", ". ")):
        text = _lower_first(text)
    return prefix + text + rng.choice(SUFFIXES)


def _question(fact: _Fact, rng: random.Random) -> str:
    pool = fact.kind.questions + Q_GENERIC
    text = fact.fill(rng.choice(pool), by_user=True)
    prefix = rng.choice(Q_PREFIXES)
    if prefix and not prefix.endswith(("? ", ": ", ". ", "! ")):
        text = _lower_first(text)
    return prefix + text


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    return (
        text if first == "I" or first.startswith("I'") or first[:1].isdigit() else text[:1].lower() + text[1:]
    )


def _filler(chat: TemplateChat, rng: random.Random, need: int, avoid: tuple[str, ...]) -> str | None:
    """A piece of unrelated text of at most ~`need` tokens: generated small talk or a fed document
    (agent/tasks/filler.py), or a pasted passage (as the user's turn or an observation)."""
    for _ in range(8):
        if rng.random() < 0.35 and need > 60:
            piece = _passage(chat, rng, need)
        else:
            plain = filler(rng, SPLIT, observation_prob=0.4, max_len=max(4 * need, 40))
            piece = None if plain is None else chat.restyle(plain)
        if piece is not None and not any(v in piece for v in avoid):
            return piece
    return None


def _passage(chat: TemplateChat, rng: random.Random, need: int) -> str | None:
    passages = doc_passages()
    words = min(max(need * 3 // 5, 20), 600)  # about 0.6 words a token; at most a long page
    start = rng.randrange(len(passages))
    text = ""
    for k in range(len(passages)):
        text += ("\n\n" if text else "") + passages[(start + k) % len(passages)]
        if len(text.split()) >= words:
            break
    text = " ".join(text.split(" ")[:words])
    if rng.random() < 0.5:
        return chat.turn(OBSERVATION, text)
    ack = rng.choice(PASTE_ACKS)
    turn = chat.turn(USER, rng.choice(PASTE_PREFIXES) + text)
    return turn + (chat.turn(ASSISTANT, ack) if ack else "")


@cache
def doc_passages() -> tuple[str, ...]:
    """Prose paragraphs of the standard library's docstrings (modules, classes, functions), in a fixed
    order; paragraphs of code, tables or a handful of words are left out."""
    out: list[str] = []
    for name in DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a Python built without it (tkinter-like optional modules)
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                if len(text) < 160 or ">>>" in text or re.search(r"[*=~-]{4}", text):
                    continue
                if sum(c.isalpha() or c in " .,;:'\"()-" for c in text) / len(text) >= 0.9:
                    out.append(text)
    return tuple(dict.fromkeys(out))
