"""The shipped default model: present in the package, small, described truthfully by its card, and
usable by the runtime as is (clean chat turns, a fact recalled from beyond the sliding window)."""

import re

import pytest

from agent.checkpoint import DEFAULT_MODEL_DIR, load_model
from agent.generate import SamplingConfig
from agent.session import Runtime
from agent.tasks import make_task

CARD = DEFAULT_MODEL_DIR / "card.md"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return Runtime.load(store=tmp_path_factory.mktemp("store"))


def test_the_default_model_ships_inside_the_package_and_is_small():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "card.md"} <= set(files)
    assert sum(files.values()) < 50 * 2**20


def test_the_card_names_these_exact_weights():
    text = CARD.read_text()
    stated = re.search(r"fingerprint: `([0-9a-f]{64})`", text)
    assert stated, "the card must state the model fingerprint"
    assert stated.group(1) == load_model().fingerprint
    for section in ("## Data", "## Training", "## Evaluation", "## Speed"):
        assert section in text


def test_runtime_load_without_a_model_uses_the_shipped_one(runtime):
    assert runtime.fingerprint == load_model().fingerprint


def test_a_reply_is_one_clean_assistant_turn(runtime):
    s = runtime.session("format")
    reply = s.reply("Hi! Please remember that my locker code is 4417.")
    assert reply.strip() and "<|" not in reply
    assert s.transcript.turns[-1].role == "assistant"


def test_a_fact_is_recalled_from_beyond_the_window(runtime):
    s = runtime.session("recall")
    window = runtime.model.config.window
    s.feed("The name of my cat is Harar. Please keep that in mind.", role="user")
    s.feed("Noted.", role="assistant")
    filler = make_task("memory_dialogue", "default", num_facts=1, num_questions=1)(7).text
    s.feed_ids(runtime.tokenizer.encode(filler)[: 4 * window])  # the statement leaves the window
    assert "Harar" in s.reply("Remind me, what is my pet's name?", SamplingConfig(max_tokens=24))
