"""Recall probes: scripted facts, filler of a chosen length in tokens, then questions, each run on a
fork of a session so that the live session never changes.

Suite format (TOML):

    name = "basic recall"
    threshold = 0.8          # accuracy below this makes `ovq probe` exit non-zero
    seed = 0                 # filler generation
    observation_prob = 0.3   # share of filler that is observations (documents, tool output)
    [[probe]]
    fact = "My locker code is 4471."
    role = "user"            # or "observation"
    question = "What is my locker code?"
    expect = "4471"          # the answer must contain this text (or use expect_regex)
    distance = 2000          # filler tokens between the fact and the question
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from ovq.agent.model.generate import SamplingConfig
from ovq.agent.tasks.filler import filler

SUITES_DIR = Path(__file__).parent / "probe_suites"
MAX_DISTANCE = 1_000_000


@dataclass(frozen=True)
class Probe:
    fact: str
    question: str
    distance: int
    expect: str | None = None
    expect_regex: str | None = None
    role: str = "user"

    def check(self, answer: str) -> bool:
        if self.expect is not None:
            return self.expect in answer
        return re.search(self.expect_regex, answer) is not None


@dataclass(frozen=True)
class ProbeSuite:
    name: str
    probes: tuple[Probe, ...]
    threshold: float = 0.8
    seed: int = 0
    observation_prob: float = 0.3
    max_tokens: int = 48


@dataclass(frozen=True)
class ProbeResult:
    fact: str
    question: str
    distance: int  # filler tokens actually fed between fact and question
    expected: str
    answered: str
    hit: bool


@dataclass(frozen=True)
class ProbeReport:
    suite: str
    results: tuple[ProbeResult, ...]
    threshold: float

    @property
    def accuracy(self) -> float:
        return sum(r.hit for r in self.results) / len(self.results)

    @property
    def passed(self) -> bool:
        return self.accuracy >= self.threshold

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "accuracy": self.accuracy,
            "threshold": self.threshold,
            "passed": self.passed,
            "results": [asdict(r) for r in self.results],
        }


def load_suite(source: str | Path) -> ProbeSuite:
    """A suite from a TOML file, or the name of a shipped suite (see `shipped_suites()`)."""
    path = Path(source)
    if not path.is_file() and (SUITES_DIR / f"{source}.toml").is_file():
        path = SUITES_DIR / f"{source}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no probe suite {source!r} (a TOML file, or one of {shipped_suites()})")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    return parse_suite(data, where=str(path))


def parse_suite(data: dict, where: str = "suite") -> ProbeSuite:
    known = {"name", "threshold", "seed", "observation_prob", "max_tokens", "probe"}
    if unknown := set(data) - known:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    raw = data.get("probe")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: needs at least one [[probe]] table")
    probes = tuple(_parse_probe(p, f"{where}: probe {i + 1}") for i, p in enumerate(raw))
    suite = ProbeSuite(
        name=str(data.get("name", Path(where).stem)),
        probes=probes,
        threshold=float(data.get("threshold", 0.8)),
        seed=int(data.get("seed", 0)),
        observation_prob=float(data.get("observation_prob", 0.3)),
        max_tokens=int(data.get("max_tokens", 48)),
    )
    if not 0 <= suite.threshold <= 1 or not 0 <= suite.observation_prob <= 1 or suite.max_tokens < 1:
        raise ValueError(f"{where}: threshold and observation_prob must lie in [0, 1], max_tokens >= 1")
    return suite


def _parse_probe(p: dict, where: str) -> Probe:
    known = {"fact", "question", "distance", "expect", "expect_regex", "role"}
    if not isinstance(p, dict):
        raise ValueError(f"{where}: must be a table")
    if unknown := set(p) - known:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("fact", "question"):
        if not isinstance(p.get(key), str) or not p[key].strip():
            raise ValueError(f"{where}: '{key}' must be non-empty text")
    if ("expect" in p) == ("expect_regex" in p):
        raise ValueError(f"{where}: give exactly one of 'expect' and 'expect_regex'")
    if "expect_regex" in p:
        try:
            re.compile(p["expect_regex"])
        except re.error as e:
            raise ValueError(f"{where}: bad expect_regex: {e}") from None
    distance = p.get("distance", 0)
    if not isinstance(distance, int) or not 0 <= distance <= MAX_DISTANCE:
        raise ValueError(f"{where}: distance must be an int in [0, {MAX_DISTANCE}] tokens")
    role = p.get("role", "user")
    if role not in ("user", "observation"):
        raise ValueError(f"{where}: role must be 'user' or 'observation'")
    return Probe(p["fact"], p["question"], distance, p.get("expect"), p.get("expect_regex"), role)


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def run_probe(session, probe: Probe, suite: ProbeSuite, index: int) -> ProbeResult:
    """One probe on `session` (a fork: it is changed)."""
    session.feed(probe.fact, role=probe.role)
    rng = random.Random(suite.seed * 1_000_003 + index)
    fed = 0
    while fed < probe.distance:
        piece = filler(rng, "test", suite.observation_prob, max_len=4000)
        piece = session.runtime.model.config.chat.restyle(piece)
        ids = session.runtime.tokenizer.encode(piece)[: probe.distance - fed]
        session.feed_ids(ids)
        fed += len(ids)
    answer = session.reply(probe.question, SamplingConfig(max_tokens=suite.max_tokens))
    expected = probe.expect if probe.expect is not None else f"/{probe.expect_regex}/"
    return ProbeResult(probe.fact, probe.question, fed, expected, answer, probe.check(answer))
