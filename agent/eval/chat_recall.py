"""Chat recall by distance: facts a user mentions in a long chat, asked about thousands of tokens later.

Model-agnostic: it drives any object with the `ChatSession` shape. For each distance bucket D, one
stream from a fresh session: the bucket's facts are stated as user turns close together at the start
(each followed by a fixed assistant acknowledgement, with a short filler exchange between facts), then
filler. Each fact's question is asked on a `copy()` of the stream at the moment that fact lies D tokens
back, so every fact is measured at close to D (never less, more by at most one exchange), and the main
stream never holds a question or a generated reply.

Filler is prose from CPython's own help texts (`pydoc_data.topics`, PSF licence), fed as passages the
user is reading: ordinary text unrelated to the facts, deterministic by seed, and never containing an
answer of the set.

Two scores per fact: a hit when an accepted answer occurs in the greedy reply to the question (what a
user sees), and the recital log-probability: the user starts saying the statement again, and the answer's
tokens are scored where they come in it ("...the kids insisted on calling him" -> " Pumpernickel"), on
another copy. That asks the memory for the value with the statement's own cue, as the OVQ paper's
in-context recall tasks do: a graded measure of what the memory still holds, which tells settings apart
where a small model's greedy answers to questions are mostly misses under all of them.

Fact sets (TOML) ship in chat_sets/: `tuning` for design decisions, `heldout` for the final table only.
"""

from __future__ import annotations

import random
import re
import tomllib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Protocol

from ovq.agent.model.generate import SamplingConfig
from ovq.agent.tasks.filler import filler as chat_filler

SETS_DIR = Path(__file__).parent / "chat_sets"
DISTANCES = (512, 2048, 8192, 32768)
SKIPPED = "beyond the model's context"

# Fed, never generated: every model and memory setting sees the same stream.
ACKNOWLEDGEMENTS = (
    "Got it, I'll remember that.",
    "Noted, thanks for telling me.",
    "Okay, I've made a note of it.",
    "Thanks, good to know.",
    "Understood.",
)
PASSAGE_PREFIX = "Here is a passage I am reading:\n\n"
PASSAGE_ACK = "Thanks, noted."
GAP_TOKENS = 48  # filler between two stated facts: enough to separate them, small against the distances
FILLER_TURN_TOKENS = 400  # the longest filler exchange: a page or so of reading
TURN_OVERHEAD = 8  # tokens a chat template adds around one turn, at most, for sizing before anything is fed
# Kept free of a bounded context besides the estimate: a system prompt the session starts with, and the
# last filler exchange's overshoot (a stream of 8,213 tokens was estimated at 8,135)
CONTEXT_MARGIN = 256
MIN_PASSAGE_WORDS = 6  # a passage cut shorter than this stops reading as text


class ChatSession(Protocol):
    """What the harness needs of a session: a token stream with chat turns, copyable."""

    @property
    def tokens_seen(self) -> int: ...

    def feed(self, text: str, role: str | None = None) -> int: ...

    def reply(self, message: str, sampling: SamplingConfig) -> str: ...

    def score_turn(self, role: str, text: str, before: str = "") -> list[float]: ...

    def copy(self) -> ChatSession: ...


@dataclass(frozen=True)
class Fact:
    id: str
    statement: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class FactSet:
    name: str
    facts: tuple[Fact, ...]


# ---- loading


def shipped_sets() -> list[str]:
    return sorted(p.stem for p in SETS_DIR.glob("*.toml"))


def load_fact_set(source: str | Path) -> FactSet:
    """A fact set from a TOML file, or a shipped set by name ("tuning", "heldout"). Raises ValueError
    naming the file, the fact and the problem."""
    path = Path(source)
    if not path.is_file() and (SETS_DIR / f"{source}.toml").is_file():
        path = SETS_DIR / f"{source}.toml"
    if not path.is_file():
        raise ValueError(f"no fact set {str(source)!r} (a TOML file, or one of {shipped_sets()})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    return parse_fact_set(data, where=str(path))


def parse_fact_set(data: dict, where: str = "fact set") -> FactSet:
    """A fact set from parsed TOML; see `load_fact_set`."""
    if unknown := set(data) - {"name", "fact"}:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    name = data.get("name", Path(where).stem)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: 'name' must be non-empty text")
    raw = data.get("fact")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: needs at least one [[fact]] table")
    facts = tuple(_parse_fact(f, f"{where}: fact {i + 1}") for i, f in enumerate(raw))
    seen: set[str] = set()
    for f in facts:
        if f.id in seen:
            raise ValueError(f"{where}: duplicate fact id {f.id!r}")
        seen.add(f.id)
    return FactSet(name.strip(), facts)


def _parse_fact(f: object, where: str) -> Fact:
    if not isinstance(f, dict):
        raise ValueError(f"{where}: must be a table")
    if isinstance(f.get("id"), str) and f["id"].strip():
        where = f"{where} ({f['id'].strip()})"
    if unknown := set(f) - {"id", "statement", "question", "answers"}:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("id", "statement", "question"):
        if not isinstance(f.get(key), str) or not f[key].strip():
            raise ValueError(f"{where}: '{key}' must be non-empty text")
    answers = f.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{where}: 'answers' must be a non-empty list of text")
    if any(not isinstance(a, str) or not normalise(a) for a in answers):
        raise ValueError(f"{where}: every answer must be text with a letter or digit in it")
    # A question that holds its answer measures copying, not memory; a statement without one is a typo.
    if is_hit(f["question"], answers):
        raise ValueError(f"{where}: the question gives away its answer")
    fact = Fact(f["id"].strip(), f["statement"].strip(), f["question"].strip(), tuple(answers))
    if not is_hit(f["statement"], answers) or _recital(fact) is None:
        raise ValueError(f"{where}: the statement contains none of its answers {answers}")
    return fact


# ---- scoring


def normalise(text: str) -> str:
    """Lower case, accents dropped, every run of punctuation and whitespace one space, and letters and
    digits that touch split apart ("11:40am" -> "11 40 am", "KV19RZT" -> "kv 19 rzt")."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = re.sub(r"[\W_]+", " ", text.casefold())
    return " ".join(re.sub(r"(?<=\d)(?=[^\W\d])|(?<=[^\W\d])(?=\d)", " ", text).split())


def is_hit(reply: str, answers: Sequence[str]) -> bool:
    """Whether one of `answers` occurs in `reply` as whole words, after `normalise` on both: "11:40"
    matches "11.40am" and "Valparaiso" matches "Valparaíso,", but "4471" does not match "44712" nor
    "9th" "19th"."""
    padded = f" {normalise(reply)} "
    return any(f" {a} " in padded for a in map(normalise, answers) if a)


# Stricter than is_hit, for keeping answers out of filler: any occurrence, even inside a word.
def _contains_any(text: str, answers: Sequence[str]) -> bool:
    text = normalise(text)
    return any(a in text for a in map(normalise, answers) if a)


# ---- filler


# Prose paragraphs of CPython's help topics, reflowed; code, grammar and headings read as noise, not chat.
def help_passages() -> list[str]:
    from pydoc_data.topics import topics  # imported here: only a run needs it

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(para.split())
            if len(text) < 200 or ">>>" in text or "::=" in text or re.search(r"[*=~-]{4}", text):
                continue
            prose = sum(c.isalpha() or c in " .,;:'\"()-" for c in text) / len(text)
            if prose >= 0.93 and ". " in text:
                out.append(text)
    return out


# A seeded walk through the passages: from a random start, in document order (so a long turn reads as
# consecutive paragraphs of one text), wrapping around at the end.
class _Filler:
    def __init__(self, passages: list[str], rng: random.Random, count_tokens: Callable[[str], int]):
        self.passages, self.count = passages, count_tokens
        self.next = rng.randrange(len(passages))

    # `prefix` + passage text of at least `budget` tokens in all, cut just after the first word that
    # reaches it: landing on the budget or a token past it, never short of it, spares a second exchange
    # to make up a shortfall.
    def text(self, budget: int, prefix: str = "") -> str:
        text = ""
        while True:
            text += ("\n\n" if text else "") + self.passages[self.next]
            self.next = (self.next + 1) % len(self.passages)
            if self.count(prefix + text) >= budget:
                break
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        short = _longest_prefix(ends, lambda n: self.count(prefix + text[: ends[n - 1]]) < budget)
        return prefix + text[: ends[max(short + 1, MIN_PASSAGE_WORDS) - 1]]


# The largest n <= len(items) with fits(n), for fits true up to a point and false after; 0 if none.
def _longest_prefix(items: list, fits: Callable[[int], bool]) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


# ---- running


def run_recall(
    new_session: Callable[[], ChatSession],
    count_tokens: Callable[[str], int],
    facts: FactSet | str | Path,
    distances: Sequence[int] = DISTANCES,
    facts_per_distance: int = 10,
    seed: int = 0,
    max_tokens: int = 32,
    on_progress: Callable[[dict], None] | None = None,
    max_context: int | None = None,
    observation_share: float = 0.0,
    acknowledge: bool = True,
    filler: str = "passages",
    one_per_stream: bool = False,
) -> dict:
    """Recall of a fact set by distance. `new_session()` gives a fresh session per bucket; questions run on
    its copies. `count_tokens` is the model tokenizer's length of a text (it sizes the filler); distances
    themselves are measured with `tokens_seen`.

    Returns {"set", "seed", "facts_per_distance", "max_tokens", "hits", "total", "accuracy", "buckets"},
    each bucket {"distance", "mean_measured_distance", "hits", "total", "accuracy", "recital_logprob",
    "per_fact": [{"id", "distance", "expected", "reply", "hit", "recital_logprob"}]}, or {"distance",
    "skipped", "needed_tokens"} when its stream would pass `max_context` tokens. `on_progress` gets
    {"distance", "answered", "total", "tokens_seen"} at the start of each bucket and after each answer.
    `observation_share` of the filler exchanges are observation turns instead of passages the user pastes
    (a template may not know that role, so none by default). `acknowledge=False` feeds no assistant turns
    at all (facts and passages are user turns): a small model shown only fixed acknowledgements answers
    the question with one. `filler="chat"` fills with the project's generated small talk and observations
    (whole turns of both roles) instead of pasted passages of CPython's help texts. `one_per_stream`
    states each fact in a stream of its own (slower: a stream per fact)."""
    if filler not in ("passages", "chat"):
        raise ValueError(f"filler must be 'passages' or 'chat', got {filler!r}")
    fact_set = facts if isinstance(facts, FactSet) else load_fact_set(facts)
    _check_args(fact_set, distances, facts_per_distance, max_tokens, observation_share)
    fixed = (*ACKNOWLEDGEMENTS, PASSAGE_PREFIX, PASSAGE_ACK)
    every_answer = [a for f in fact_set.facts for a in f.answers]
    if clash := [t for t in fixed if _contains_any(t, every_answer)]:
        raise ValueError(f"{fact_set.name}: an answer occurs in the harness's fixed turns {clash}")
    passages = [p for p in help_passages() if not _contains_any(p, every_answer)]
    if not passages:
        raise ValueError(f"{fact_set.name}: every filler passage contains an answer of the set")
    sampling = SamplingConfig(max_tokens=max_tokens)  # temperature 0: greedy

    chosen = _choose_facts(len(fact_set.facts), len(distances), facts_per_distance, seed)
    buckets = []
    for b, distance in enumerate(distances):
        bucket = _Bucket(
            [fact_set.facts[i] for i in chosen[b]],
            distance,
            random.Random(seed * 1_000_003 + b),
            _Stream(
                passages,
                count_tokens,
                sampling,
                observation_share,
                on_progress,
                acknowledge,
                filler == "chat",
                tuple(every_answer),
            ),  # fmt: skip
        )
        needed = bucket.tokens_needed(max_tokens) + CONTEXT_MARGIN
        if max_context is not None and needed > max_context:
            buckets.append({"distance": distance, "skipped": SKIPPED, "needed_tokens": needed})
        elif not one_per_stream:
            buckets.append(bucket.run(new_session()))
        else:  # each fact alone in a stream of its own: no fact competes with another for the memory
            runs = [
                _Bucket([fact], distance, random.Random(seed * 1_000_003 + b * 1_009 + i), bucket.stream).run(
                    new_session()
                )
                for i, fact in enumerate(bucket.facts)
            ]
            buckets.append(_summary(distance, [r for run in runs for r in run["per_fact"]]))

    ran = [b for b in buckets if "skipped" not in b]
    hits, total = sum(b["hits"] for b in ran), sum(b["total"] for b in ran)
    return {
        "set": fact_set.name,
        "seed": seed,
        "facts_per_distance": facts_per_distance,
        "max_tokens": max_tokens,
        "hits": hits,
        "total": total,
        "accuracy": hits / total if total else None,
        "buckets": buckets,
    }


# The statement cut before its first answer, and that answer (with the space before it: a word's leading
# space is part of its token): ("...kids insisted on calling him", " Pumpernickel").
def _recital(fact: Fact) -> tuple[str, str] | None:
    # found in the statement with accents dropped letter by letter (so indices still match the statement)
    plain = "".join(_unaccented(c) for c in fact.statement)
    found = []
    for answer in fact.answers:
        loose = r"[\W_]*".join(re.escape(w) for w in normalise(answer).split())
        if m := re.search(rf"(?<![^\W_])({loose})(?![^\W_])", plain, re.I):
            found.append((m.start(), -m.end()))
    if not found:
        return None
    start, end = min(found)  # the first answer said (the longest one starting there)
    head = fact.statement[:start]
    stripped = head.rstrip()
    return stripped, head[len(stripped) :] + fact.statement[start:-end]


def _unaccented(c: str) -> str:
    base = "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x))
    return base if len(base) == 1 else c


# A bucket's result from its facts' results.
def _summary(distance: int, per_fact: list[dict]) -> dict:
    hits = sum(r["hit"] for r in per_fact)
    return {
        "distance": distance,
        "mean_measured_distance": round(mean(r["distance"] for r in per_fact), 1),
        "hits": hits,
        "total": len(per_fact),
        "accuracy": hits / len(per_fact),
        "recital_logprob": round(mean(r["recital_logprob"] for r in per_fact), 3),
        "per_fact": per_fact,
    }


def _check_args(
    fact_set: FactSet, distances: Sequence[int], per: int, max_tokens: int, observation_share: float
) -> None:
    if not distances or any(not isinstance(d, int) or d < 1 for d in distances):
        raise ValueError(f"distances must be positive token counts, got {list(distances)}")
    if not 1 <= per <= len(fact_set.facts):
        raise ValueError(f"facts_per_distance must lie in [1, {len(fact_set.facts)}] for this set, got {per}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not 0 <= observation_share <= 1:
        raise ValueError(f"observation_share must lie in [0, 1], got {observation_share}")


# One seeded order of the facts, dealt out bucket by bucket: buckets share no fact while the set lasts,
# then it wraps around.
def _choose_facts(n: int, buckets: int, per: int, seed: int) -> list[list[int]]:
    order = random.Random(seed).sample(range(n), n)
    return [[order[(b * per + j) % n] for j in range(per)] for b in range(buckets)]


@dataclass(frozen=True)
class _Stream:  # what every bucket of a run shares
    passages: list[str]
    count: Callable[[str], int]
    sampling: SamplingConfig
    observation_share: float
    on_progress: Callable[[dict], None] | None
    acknowledge: bool
    chat_filler: bool  # the project's generated small talk and observations, instead of passages
    answers: tuple[str, ...]  # of the whole set: filler holding one is skipped


class _Bucket:  # one distance bucket: its stream and its questions
    def __init__(self, facts: list[Fact], distance: int, rng: random.Random, stream: _Stream):
        self.facts, self.distance, self.rng, self.stream = facts, distance, rng, stream
        self.count = stream.count
        self.filler = _Filler(stream.passages, rng, stream.count)
        self.acks = [rng.choice(ACKNOWLEDGEMENTS) if stream.acknowledge else "" for _ in facts]
        # tokens the session's template adds around a turn of each role, learnt as turns are fed
        self.overhead = dict.fromkeys(("user", "assistant", "observation"), TURN_OVERHEAD)
        self.pending: list[tuple[Fact, int]] = []  # stated, not yet asked: (fact, tokens_seen after it)
        self.per_fact: list[dict] = []

    # The longest stream this bucket needs, bounded before anything is fed (a session is only made for
    # a bucket that fits): the facts as stated, the distance, an exchange of overshoot, a question, a reply.
    def tokens_needed(self, max_tokens: int) -> int:
        stated = sum(self.count(f.statement) + self.count(a) for f, a in zip(self.facts, self.acks))
        stated += (len(self.facts) - 1) * GAP_TOKENS + 2 * TURN_OVERHEAD * len(self.facts)
        if self.distance < stated:
            # questions due while facts are still being stated stretch the stating: before each
            # statement by at most about one and a half times that statement, its acknowledgement and a gap
            stated *= 3
        question = max(self.count(f.question) for f in self.facts) + 2 * TURN_OVERHEAD
        return stated + self.distance + GAP_TOKENS + question + max_tokens

    def run(self, session: ChatSession) -> dict:
        self.session = session
        self._progress()
        for i, (fact, ack) in enumerate(zip(self.facts, self.acks)):
            if i:
                self._fill(session.tokens_seen + GAP_TOKENS)
            # A question falling due inside the coming statement and acknowledgement would be asked a
            # whole turn late: reach it with filler first (at short distances facts and questions mix).
            # Judged long, as count_tokens may undercount the stream: erring long only adds filler.
            coming = (self.count(fact.statement) + self.count(ack)) * 3 // 2
            coming += self.overhead["user"] + self.overhead["assistant"]
            while self.pending and self._due() <= session.tokens_seen + coming:
                self._fill(self._due())
            self._feed(fact.statement, "user")
            self.pending.append((fact, session.tokens_seen))
            if ack:
                self._feed(ack, "assistant")
            self._ask_due()
        while self.pending:
            self._fill(self._due())
        return _summary(self.distance, self.per_fact)

    def _due(self) -> int:  # tokens_seen at which the oldest pending fact lies `distance` back
        return self.pending[0][1] + self.distance

    def _feed(self, text: str, role: str) -> None:
        fed = self.session.feed(text, role=role)
        self.overhead[role] = max(fed - self.count(text), 0)

    # Filler exchanges up to tokens_seen `end`, each ending where a question falls due. A long stretch
    # goes in turns of at most FILLER_TURN_TOKENS, the last two sharing the rest so that neither is tiny.
    def _fill(self, end: int) -> None:
        while self.session.tokens_seen < end:
            stop = min(end, self._due()) if self.pending else end
            need = stop - self.session.tokens_seen
            if need > FILLER_TURN_TOKENS:
                need = min(FILLER_TURN_TOKENS, need - FILLER_TURN_TOKENS // 2)
            self._exchange(need)
            self._ask_due()

    # One filler exchange of about `need` tokens: a passage the user pastes and the assistant's fixed
    # thanks, or an observation. Questions come only between exchanges, never after a lone user turn.
    def _exchange(self, need: int) -> None:
        if self.stream.chat_filler:
            self._chat(need)
            return
        if self.rng.random() < self.stream.observation_share:
            self._feed(self.filler.text(need - self.overhead["observation"]), "observation")
            return
        if not self.stream.acknowledge:
            self._feed(self.filler.text(need - self.overhead["user"], PASSAGE_PREFIX), "user")
            return
        budget = need - self.overhead["user"] - self.overhead["assistant"] - self.count(PASSAGE_ACK)
        self._feed(self.filler.text(budget, PASSAGE_PREFIX), "user")
        self._feed(PASSAGE_ACK, "assistant")

    # Generated chat filler (small talk, weather reports, logs, recipes, notes: agent/tasks/filler.py),
    # whole turns of the roles it was written with, until about `need` tokens are fed.
    def _chat(self, need: int) -> None:
        start = self.session.tokens_seen
        while self.session.tokens_seen - start < need:
            piece = chat_filler(self.rng, "test", 0.3, max_len=max(200, 4 * need))
            if piece is None or _contains_any(piece, self.stream.answers):
                continue
            for role, text in _turns(piece):
                self._feed(text, role)

    # Ask every stated fact that now lies `distance` tokens back, each on its own copy.
    def _ask_due(self) -> None:
        now = self.session.tokens_seen
        while self.pending and now - self.pending[0][1] >= self.distance:
            fact, after = self.pending.pop(0)
            reply = self.session.copy().reply(fact.question, self.stream.sampling)
            before, answer = _recital(fact)
            nats = sum(self.session.copy().score_turn("user", answer, before=before))
            self.per_fact.append(
                {
                    "id": fact.id,
                    "distance": now - after,
                    "expected": list(fact.answers),
                    "reply": reply,
                    "hit": is_hit(reply, fact.answers),
                    "recital_logprob": round(nats, 4),
                }
            )
            self._progress()

    def _progress(self) -> None:
        if self.stream.on_progress is not None:
            self.stream.on_progress(
                {
                    "distance": self.distance,
                    "answered": len(self.per_fact),
                    "total": len(self.facts),
                    "tokens_seen": self.session.tokens_seen,
                }
            )


# ---- reporting


def to_markdown(results_by_label: dict[str, dict]) -> str:
    """One table: a row per label (a model or memory setting), a column per distance bucket, each cell
    "hits/total (acc%) logprob" (the mean recital log-probability, nats) or "skipped"; below it,
    the mean measured distance of each bucket."""
    distances: list[int] = []
    for result in results_by_label.values():
        distances += [b["distance"] for b in result["buckets"] if b["distance"] not in distances]
    sets = sorted({r["set"] for r in results_by_label.values()})
    lines = [
        f"Recall of facts stated D tokens before the question (set: {', '.join(sets)})",
        "",
        "| setting | " + " | ".join(f"D={d:,}" for d in distances) + " |",
        "| --- |" + " ---: |" * len(distances),
    ]
    measured: dict[int, list[float]] = {d: [] for d in distances}
    for label, result in results_by_label.items():
        by_distance = {b["distance"]: b for b in result["buckets"]}
        cells = []
        for d in distances:
            b = by_distance.get(d)
            if b is None:
                cells.append("")
            elif "skipped" in b:
                cells.append("skipped")
            else:
                cells.append(
                    f"{b['hits']}/{b['total']} ({100 * b['accuracy']:.0f}%) {b['recital_logprob']:.2f}"
                )
                measured[d].append(b["mean_measured_distance"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    spans = [f"D={d:,}: {mean(m):,.0f}" for d, m in measured.items() if m]
    if spans:
        lines += ["", "Mean measured distance (tokens): " + ", ".join(spans)]
    return "\n".join(lines) + "\n"


_TURN = re.compile(r"<\|(user|assistant|observation)\|>(.*?)<\|end\|>", re.S)


def _turns(plain: str) -> list[tuple[str, str]]:
    """(role, text) of each turn of text written in the plain chat format (generated filler)."""
    return [(m.group(1), m.group(2)) for m in _TURN.finditer(plain)]


def plot(results_by_label: dict[str, dict], path: str) -> None:
    """Two panels against distance, one line per setting: greedy hits, and the mean recital
    log-probability (needs matplotlib: pip install 'ovq[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install 'ovq[plot]' (or matplotlib)") from e
    fig, (hits, recital) = plt.subplots(1, 2, figsize=(10, 4))
    for label, result in results_by_label.items():
        ran = [b for b in result["buckets"] if "skipped" not in b]
        xs = [b["distance"] for b in ran]
        hits.plot(xs, [b["accuracy"] for b in ran], marker="o", label=label)
        recital.plot(xs, [b["recital_logprob"] for b in ran], marker="o", label=label)
    for ax, name in (
        (hits, "answer in the greedy reply (share)"),
        (recital, "recital log-probability (nats)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens between fact and question")
        ax.set_ylabel(name)
    hits.set_ylim(0, 1.02)
    recital.legend(fontsize=8)
    sets = sorted({r["set"] for r in results_by_label.values()})
    fig.suptitle(f"Recall of facts told in a chat (set: {', '.join(sets)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
