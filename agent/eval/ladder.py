"""A recall ladder that ranks memories: facts asked back at rungs from 0 to 100k tokens after they were said.

Two tiers. The easy tier (chat_sets/easy.toml: one plain sentence each, asked in plain words) is where a
memory should hold at short distances, so the rungs tell settings apart by how far recall reaches. The
hard tier is chat_recall's held-out set as `ovq eval chat` runs it, the top rung of difficulty.

Easy tier cost is planned: streams are shared, questions asked on copies. A SCRIPT is built once per
(fact set, seed, tokenizer and chat template): one long stream of `Feed` events, the facts stated as
plain user turns SPACING tokens apart (no acknowledgement: a small model shown fixed ones answers with
them) with filler between, and an `Ask(fact, rung)` at the first turn boundary where the fact lies at
least `rung` tokens back. Filler is mostly CPython help passages fed as observations (unrelated text
the user shares), sized so that a question falls due where a turn ends, with some of the project's
generated small talk and documents (test split) mixed in. The stream goes on until every fact's last
rung is asked.

- A bounded setting walks the script on ONE session; at each ask it takes the greedy reply on a copy
  (a hit when an accepted answer is in it) and the recital log-probability on another copy
  (chat_recall's `_recital`). The main stream never holds a question.
- Full attention (a setting with a known context) can not hold the stream: for each fact an EPISODE,
  a fresh session replaying the script from that fact's statement to its last reachable ask (other
  facts' statements included: the text between fact and question is the bounded settings' text),
  asking only that fact. Rungs that would pass the context are reported as skipped.

Distances are measured with `tokens_seen` while running, from the end of the statement turn to the
question.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from statistics import mean

from ovq.agent.eval.chat_recall import (
    SKIPPED,
    ChatSession,
    Fact,
    FactSet,
    _contains_any,
    _Filler,
    _recital,
    _turns,
    help_passages,
    is_hit,
    load_fact_set,
    run_recall,
)
from ovq.agent.model.generate import SamplingConfig
from ovq.agent.tasks.filler import filler as chat_filler

RUNGS = (0, 2048, 4096, 7168, 16384, 32768, 102400)
# Tokens from one statement's start to the next. The stream is n * SPACING + the top rung long, so this
# prices the ladder (40 facts: 143k tokens at 1024, 164k at 1536); 1024 still puts a page of other text
# and about one other fact between neighbours, and full attention's episodes stay one fact each.
SPACING = 1024
FILLER_TURN_TOKENS = 512  # the longest passage turn: a page or so; longer turns feed faster, same text
# Filler stretches that are generated chat (small talk and documents of agent/tasks/filler.py, test
# split) instead of a passage: about a fifth of the filler's tokens. Mostly passages, as ordinary text;
# the help texts hold ~52k tokens, so over a full ladder's 143k they come round about twice (in document
# order from a seeded start). Chat turns are short and feed slower per token than a page.
CHAT_SHARE = 0.3
CHAT_TRIES = 24  # generated pieces drawn per chat stretch, at most
OBSERVATION_SHARE = 0.3  # of the generated pieces, documents fed as observations (filler.py's own mix)
# Kept free of a full-attention context besides an episode's counted tokens (its system prompt, the
# stream, the question and the longest reply): the assistant prompt, the reply's closing, slack.
CONTEXT_MARGIN = 32
TIERS = ("easy", "hard")
EASY_SET = "easy"
# The hard tier: run_recall as `ovq eval chat` runs it on the held-out set.
HARD_SET, HARD_DISTANCES, HARD_N = "heldout", (512, 2048, 7168, 32768), 10
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals


# ---- the script


@dataclass(frozen=True)
class Feed:
    """A turn fed to the stream."""

    role: str  # "user" | "assistant" | "observation"
    text: str
    tokens: int  # the turn's tokens as the session's feed counts them (count_turn)
    fact: int | None = None  # the fact this turn states (an index into Script.facts)


@dataclass(frozen=True)
class Ask:
    """A question: fact `fact` asked where it lies `rung` tokens back (at the first turn boundary)."""

    fact: int
    rung: int


@dataclass(frozen=True)
class Script:
    """The easy tier's stream and its questions, the same for every setting of one tokenizer and template."""

    set: str
    seed: int
    spacing: int
    rungs: tuple[int, ...]
    facts: tuple[Fact, ...]
    events: tuple[Feed | Ask, ...]

    @property
    def tokens(self) -> int:
        """The stream's length in tokens, as counted when it was built."""
        return sum(e.tokens for e in self.events if isinstance(e, Feed))


def build_script(
    facts: FactSet | str | Path,
    count_turn: Callable[[str, str], int],
    n: int = 40,
    seed: int = 0,
    rungs: Sequence[int] = RUNGS,
    spacing: int = SPACING,
) -> Script:
    """The easy tier's stream for `n` facts of a set chosen by `seed`, each asked at every rung.
    `count_turn(role, text)` is a turn's length in tokens as the session's `feed` returns it (the
    template's markers included): filler is cut to land questions on their rung with it."""
    fact_set = facts if isinstance(facts, FactSet) else load_fact_set(facts)
    rungs = _check_rungs(rungs)
    if not 1 <= n <= len(fact_set.facts):
        raise ValueError(f"n must lie in [1, {len(fact_set.facts)}] for the set {fact_set.name!r}, got {n}")
    if spacing < 1:
        raise ValueError(f"spacing must be >= 1 token, got {spacing}")
    chosen = tuple(fact_set.facts[i] for i in random.Random(seed).sample(range(len(fact_set.facts)), n))
    answers = tuple(a for f in fact_set.facts for a in f.answers)
    passages = [p for p in help_passages() if not _contains_any(p, answers)]
    if not passages:
        raise ValueError(f"{fact_set.name}: every filler passage contains an answer of the set")
    events = _Builder(chosen, rungs, spacing, count_turn, passages, answers, random.Random(seed + 1)).run()
    return Script(fact_set.name, seed, spacing, rungs, chosen, tuple(events))


class _Builder:  # writes a script left to right: statements on schedule, filler up to the next due point
    def __init__(self, facts, rungs, spacing, count_turn, passages, answers, rng: random.Random):
        self.facts, self.rungs, self.spacing, self.count_turn = facts, rungs, spacing, count_turn
        self.answers, self.rng = answers, rng
        self.passages = _Filler(passages, rng, lambda text: count_turn("observation", text))
        self.events: list[Feed | Ask] = []
        self.pos = 0  # tokens fed so far

    def run(self) -> list[Feed | Ask]:
        due: list[tuple[int, int, int]] = []  # (pos at which it is due, fact, rung): a heap
        stated, next_start = 0, 0
        while True:
            while due and due[0][0] <= self.pos:
                _, i, rung = heapq.heappop(due)
                self.events.append(Ask(i, rung))
            if stated < len(self.facts) and self.pos >= next_start:
                next_start = self.pos + self.spacing
                self._feed("user", self.facts[stated].statement, stated)
                for rung in self.rungs:
                    heapq.heappush(due, (self.pos + rung, stated, rung))
                stated += 1
                continue
            ends = [due[0][0]] if due else []
            ends += [next_start] if stated < len(self.facts) else []
            if not ends:  # every fact stated, every question asked
                break
            self._fill(min(ends))
        return self.events

    def _feed(self, role: str, text: str, fact: int | None = None) -> None:
        tokens = self.count_turn(role, text)
        self.events.append(Feed(role, text, tokens, fact))
        self.pos += tokens

    # Filler toward `end`: one passage turn of at most FILLER_TURN_TOKENS (the last two of a long stretch
    # share the rest, so that neither is tiny), or as many generated chat pieces as fit in that much
    # (whole turns: they can not be cut, so none may pass `end`).
    def _fill(self, end: int) -> None:
        need = end - self.pos
        if need > FILLER_TURN_TOKENS:
            need = min(FILLER_TURN_TOKENS, need - FILLER_TURN_TOKENS // 2)
        if self.rng.random() < CHAT_SHARE:
            left = need
            for _ in range(CHAT_TRIES):
                piece = chat_filler(self.rng, "test", OBSERVATION_SHARE, max_len=4 * left)
                if piece is None or _contains_any(piece, self.answers):
                    continue
                turns = _turns(piece)
                tokens = sum(self.count_turn(role, text) for role, text in turns)
                if tokens > left:
                    break
                for role, text in turns:
                    self._feed(role, text)
                left -= tokens
            if left < need:
                return
        self._feed("observation", self.passages.text(need))


def _check_rungs(rungs: Sequence[int]) -> tuple[int, ...]:
    if not rungs or any(not isinstance(r, int) or r < 0 for r in rungs):
        raise ValueError(f"rungs must be token distances >= 0, got {list(rungs)}")
    return tuple(sorted(set(rungs)))


# ---- running the easy tier


@dataclass(frozen=True)
class Setting:
    """One memory setting of a loaded model, as the ladder drives it."""

    new_session: Callable[[], ChatSession]
    count_turn: Callable[[str, str], int]  # (role, text) -> the turn's tokens as `feed` returns them
    count_tokens: Callable[[str], int]  # a text's tokens (the hard tier sizes its filler with it)
    max_context: int | None = None  # full attention: the most tokens one stream may hold
    # a fresh stream's system prompt (a template's): full attention's episodes hold it too
    preamble_tokens: int = 0
    template: Hashable = None  # settings with the same tokenizer and chat template share a script
    state_bytes: int | None = None


def run_easy(
    script: Script,
    setting: Setting,
    max_tokens: int = 24,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """The easy tier of one setting: {"set", "seed", "n", "spacing", "stream_tokens", "rungs"}, each rung
    {"rung", "hits", "total", "accuracy", "wilson": [lo, hi], "recital_logprob", "mean_measured_distance",
    "per_fact": [{"id", "distance", "reply", "hit", "recital_logprob"}]}, or {"rung", "skipped",
    "needed_tokens"} when full attention can not reach it. `on_progress` gets {"tier", "answered",
    "total", "tokens_seen"} at the start and after each answer."""
    asker = _Asker(script, SamplingConfig(max_tokens=max_tokens), on_progress)
    skipped: dict[int, int] = {}
    if setting.max_context is None:
        asker.walk(setting.new_session(), script.events)
    else:
        skipped = _episodes(script, setting, max_tokens, asker)
    rungs = [
        {"rung": r, "skipped": SKIPPED, "needed_tokens": skipped[r]}
        if r in skipped
        else _summary(r, [x for x in asker.records if x["rung"] == r])
        for r in script.rungs
    ]
    return {
        "set": script.set,
        "seed": script.seed,
        "n": len(script.facts),
        "spacing": script.spacing,
        "stream_tokens": script.tokens,
        "rungs": rungs,
    }


# Full attention: an episode per fact, from its statement to its last rung within the context. A rung
# is run only where every fact reaches it, so that a row's rungs hold the same facts as the others'.
def _episodes(script: Script, setting: Setting, max_tokens: int, asker: _Asker) -> dict[int, int]:
    events = script.events
    pos = list(accumulate((e.tokens if isinstance(e, Feed) else 0 for e in events), initial=0))
    starts = {e.fact: k for k, e in enumerate(events) if isinstance(e, Feed) and e.fact is not None}
    asks = [k for k, e in enumerate(events) if isinstance(e, Ask)]
    needed: dict[int, int] = {}  # per rung, the most tokens a fact's episode holds up to its reply
    for k in asks:
        fact, rung = events[k].fact, events[k].rung
        size = setting.preamble_tokens + pos[k] - pos[starts[fact]] + CONTEXT_MARGIN
        size += setting.count_turn("user", script.facts[fact].question) + max_tokens
        needed[rung] = max(needed.get(rung, 0), size)
    reached = {rung for rung, size in needed.items() if size <= setting.max_context}
    asker.total = len(script.facts) * len(reached)
    for fact, start in starts.items():  # in stream order
        mine = {k for k in asks if events[k].fact == fact and events[k].rung in reached}
        if mine:  # every turn from the statement on, and this fact's questions only
            replay = [
                events[k] for k in range(start, max(mine) + 1) if isinstance(events[k], Feed) or k in mine
            ]
            asker.walk(setting.new_session(), replay)
    return {rung: size for rung, size in needed.items() if rung not in reached}


class _Asker:  # walks events on a session and asks each question on copies of it
    def __init__(self, script: Script, sampling: SamplingConfig, on_progress):
        self.script, self.sampling, self.on_progress = script, sampling, on_progress
        self.total = len(script.facts) * len(script.rungs)
        self.records: list[dict] = []

    # Questions are asked where the script puts them; their distance is what the session measured (the
    # script's counts are the session's own, so they agree: a test checks that they are recorded apart).
    def walk(self, session: ChatSession, events: Sequence[Feed | Ask]) -> None:
        after: dict[int, int] = {}  # fact -> tokens_seen after its statement
        self.session = session
        self._progress()
        for e in events:
            if isinstance(e, Ask):
                self._ask(e, session.tokens_seen - after[e.fact])
                continue
            session.feed(e.text, role=e.role)
            if e.fact is not None:
                after[e.fact] = session.tokens_seen

    def _ask(self, ask: Ask, distance: int) -> None:
        fact = self.script.facts[ask.fact]
        reply = self.session.copy().reply(fact.question, self.sampling)
        before, answer = _recital(fact)
        nats = sum(self.session.copy().score_turn("user", answer, before=before))
        self.records.append(
            {
                "id": fact.id,
                "rung": ask.rung,
                "distance": distance,
                "reply": reply,
                "hit": is_hit(reply, fact.answers),
                "recital_logprob": round(nats, 4),
            }
        )
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                {
                    "tier": "easy",
                    "answered": len(self.records),
                    "total": self.total,
                    "tokens_seen": self.session.tokens_seen,
                }
            )


def _summary(rung: int, records: list[dict]) -> dict:
    hits = sum(r["hit"] for r in records)
    return {
        "rung": rung,
        "hits": hits,
        "total": len(records),
        "accuracy": hits / len(records),
        "wilson": [round(x, 4) for x in wilson(hits, len(records))],
        "recital_logprob": round(mean(r["recital_logprob"] for r in records), 3),
        "mean_measured_distance": round(mean(r["distance"] for r in records), 1),
        "per_fact": [{k: v for k, v in r.items() if k != "rung"} for r in records],
    }


def wilson(hits: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share `hits`/`total` (95% by default): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or all hits, as a ladder's rungs often are."""
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    p, z2 = hits / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- both tiers, every setting


@dataclass(frozen=True)
class LadderConfig:
    """What a ladder run measures, the same for every setting."""

    tiers: tuple[str, ...] = TIERS
    rungs: tuple[int, ...] = RUNGS
    n: int = 40  # easy facts
    seed: int = 0
    max_tokens: int = 24  # longest greedy reply: the answers are a few words
    spacing: int = SPACING
    easy_set: str | Path | FactSet = EASY_SET
    hard_set: str | Path | FactSet = HARD_SET
    # read when a config is made (not when this module is): a test may shorten the hard tier
    hard_distances: tuple[int, ...] = field(default_factory=lambda: HARD_DISTANCES)
    hard_n: int = field(default_factory=lambda: HARD_N)

    def __post_init__(self) -> None:
        if not self.tiers or set(self.tiers) - set(TIERS):
            raise ValueError(
                f"tiers must be some of {', '.join(TIERS)}, got {', '.join(self.tiers) or 'none'}"
            )
        object.__setattr__(self, "rungs", _check_rungs(self.rungs))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


def run_ladder(
    settings: Mapping[str, Callable[[], Setting]],
    config: LadderConfig | None = None,
    on_progress: Callable[[str, dict], None] | None = None,
) -> dict:
    """Both tiers for each setting, loaded one at a time (`settings`: label -> a loader). Settings of one
    `template` share the easy tier's script. Returns {"config", "settings": {label: {"state_bytes",
    "wall_seconds", "easy": run_easy's result, "hard": run_recall's result (each ran bucket with its
    "wilson" interval)}}}, each tier with its own "wall_seconds" (the run: not the model's load nor the
    script's build); `on_progress(label, event)` as run_easy's and run_recall's, with "tier"."""
    config = config or LadderConfig()
    easy = load_fact_set(config.easy_set) if not isinstance(config.easy_set, FactSet) else config.easy_set
    if "easy" in config.tiers and not 1 <= config.n <= len(easy.facts):
        raise ValueError(f"n must lie in [1, {len(easy.facts)}] for the set {easy.name!r}, got {config.n}")
    hard = load_fact_set(config.hard_set) if not isinstance(config.hard_set, FactSet) else config.hard_set
    scripts: dict[Hashable, Script] = {}
    results = {}
    for label, load in settings.items():
        setting = load()

        def progress(event: dict, label=label, tier="easy") -> None:
            if on_progress is not None:
                on_progress(label, {"tier": tier, **event})

        result: dict = {"state_bytes": setting.state_bytes}
        if "easy" in config.tiers:
            if setting.template not in scripts or setting.template is None:
                scripts[setting.template] = build_script(
                    easy, setting.count_turn, config.n, config.seed, config.rungs, config.spacing
                )
            start = time.perf_counter()
            result["easy"] = run_easy(scripts[setting.template], setting, config.max_tokens, progress)
            result["easy"]["wall_seconds"] = round(time.perf_counter() - start, 1)
        if "hard" in config.tiers:
            start = time.perf_counter()
            result["hard"] = run_recall(
                setting.new_session, setting.count_tokens, hard, config.hard_distances,
                facts_per_distance=config.hard_n, seed=config.seed, max_tokens=config.max_tokens,
                on_progress=lambda e, p=progress: p(e, tier="hard"), max_context=setting.max_context,
                acknowledge=False, filler="chat",
            )  # fmt: skip
            for bucket in result["hard"]["buckets"]:
                if "skipped" not in bucket:
                    bucket["wilson"] = [round(x, 4) for x in wilson(bucket["hits"], bucket["total"])]
            result["hard"]["wall_seconds"] = round(time.perf_counter() - start, 1)
        result["wall_seconds"] = round(sum(result[t]["wall_seconds"] for t in config.tiers), 1)
        results[label] = result
        del setting  # the next setting's model loads without this one's
    return {
        "config": {
            "tiers": list(config.tiers),
            "rungs": list(config.rungs),
            "n": config.n,
            "seed": config.seed,
            "max_tokens": config.max_tokens,
            "spacing": config.spacing,
            "easy_set": easy.name,
            "hard_set": hard.name,
            "hard_distances": list(config.hard_distances),
            "hard_n": config.hard_n,
        },
        "settings": results,
    }


# ---- reporting


def to_markdown(result: dict) -> str:
    """A table per tier: a row per setting, a column per rung, each cell "hits/total (lo-hi%) recital"
    (the 95% Wilson interval of the share of hits; the mean recital log-probability, nats) or "skipped";
    below each, the mean measured distance per rung. Then each setting's state size and time."""
    c, settings = result["config"], result["settings"]
    out = []
    if "easy" in c["tiers"]:
        rows = {label: r["easy"]["rungs"] for label, r in settings.items()}
        title = (
            f"Easy tier: facts stated D tokens before the question (set {c['easy_set']}, {c['n']} facts, "
            f"seed {c['seed']}, {c['spacing']:,} tokens apart)"
        )
        out.append(_table(title, rows, "rung"))
    if "hard" in c["tiers"]:
        rows = {label: r["hard"]["buckets"] for label, r in settings.items()}
        title = f"Hard tier: chat recall (set {c['hard_set']}, {c['hard_n']} facts per distance, chat filler)"
        out.append(_table(title, rows, "distance"))
    lines = ["| setting | state (MiB) | time (s) |", "| --- | ---: | ---: |"]
    for label, r in settings.items():
        state = "" if r["state_bytes"] is None else f"{r['state_bytes'] / 2**20:,.1f}"
        lines.append(f"| {label} | {state} | {r['wall_seconds']:,.0f} |")
    out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _table(title: str, rows: dict[str, list[dict]], key: str) -> str:
    distances: list[int] = []
    for cells in rows.values():
        distances += [b[key] for b in cells if b[key] not in distances]
    lines = [
        title,
        "",
        "| setting | " + " | ".join(f"D={d:,}" for d in distances) + " |",
        "| --- |" + " ---: |" * len(distances),
    ]
    measured: dict[int, list[float]] = {d: [] for d in distances}
    for label, cells in rows.items():
        by = {b[key]: b for b in cells}
        row = []
        for d in distances:
            b = by.get(d)
            if b is None or "skipped" in b:
                row.append("" if b is None else "skipped")
                continue
            lo, hi = wilson(b["hits"], b["total"])
            row.append(
                f"{b['hits']}/{b['total']} ({100 * lo:.0f}-{100 * hi:.0f}%) {b['recital_logprob']:.2f}"
            )
            measured[d].append(b["mean_measured_distance"])
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    spans = [f"D={d:,}: {mean(m):,.0f}" for d, m in measured.items() if m]
    if spans:
        lines += ["", "Mean measured distance (tokens): " + ", ".join(spans)]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """One figure, a row per tier: the share of hits with its 95% Wilson interval, and the mean recital
    log-probability, against distance (symmetric log: rung 0 shows), a line per setting (needs
    matplotlib: pip install 'ovq[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install 'ovq[plot]' (or matplotlib)") from e
    tiers = [("easy", "rungs", "rung"), ("hard", "buckets", "distance")]
    tiers = [t for t in tiers if t[0] in result["config"]["tiers"]]
    fig, axes = plt.subplots(len(tiers), 2, figsize=(11, 4 * len(tiers)), squeeze=False)
    for (tier, cells, key), (hits, recital) in zip(tiers, axes):
        for k, (label, r) in enumerate(result["settings"].items()):
            ran = [b for b in r[tier][cells] if "skipped" not in b]
            if not ran:
                continue
            xs = [b[key] for b in ran]
            dodged = [x * 1.03**k + 40 * k for x in xs]  # error bars of equal shares side by side
            shares = [b["hits"] / b["total"] for b in ran]
            bounds = [wilson(b["hits"], b["total"]) for b in ran]
            errors = [
                [s - lo for s, (lo, _) in zip(shares, bounds)],
                [hi - s for s, (_, hi) in zip(shares, bounds)],
            ]
            hits.errorbar(dodged, shares, yerr=errors, marker="o", capsize=3, label=label)
            recital.plot(xs, [b["recital_logprob"] for b in ran], marker="o", label=label)
        for ax, name in (
            (hits, "answer in the greedy reply (share, 95% CI)"),
            (recital, "recital log-prob (nats)"),
        ):
            ax.set_xscale("symlog", linthresh=1024)
            ax.set_xlabel("tokens between fact and question")
            ax.set_ylabel(name)
            ax.set_title(f"{tier} tier")
        hits.set_ylim(-0.02, 1.02)
        recital.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
