"""The shipped tiny hybrid (`--model tiny`): present in the package, small, described by its card
(which names these exact weights), usable by the runtime as is (clean chat turns), and it remembers.
The card quotes the full `ovq eval recall` numbers; here a few fixed examples guard against shipping
weights that do not."""

import re

import pytest

from ovq.agent.model.checkpoint import TINY_MODEL_DIR, load_model
from ovq.agent.runtime.session import Runtime

CARD = TINY_MODEL_DIR / "card.md"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return Runtime.load("tiny", store=tmp_path_factory.mktemp("store"))


def test_the_tiny_model_ships_inside_the_package_and_is_small():
    files = {p.name: p.stat().st_size for p in TINY_MODEL_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "card.md"} <= set(files)
    assert sum(files.values()) < 50 * 2**20


def test_the_card_names_these_exact_weights():
    text = CARD.read_text()
    stated = re.search(r"fingerprint: `([0-9a-f]{64})`", text)
    assert stated, "the card must state the model fingerprint"
    assert stated.group(1) == load_model("tiny").fingerprint
    for section in ("## Data", "## Training", "## Evaluation", "## Speed"):
        assert section in text


def test_the_tiny_model_loads_by_name(runtime):
    assert runtime.fingerprint == load_model("tiny").fingerprint
    assert runtime.loaded.path == TINY_MODEL_DIR


def test_a_reply_is_one_clean_assistant_turn(runtime):
    s = runtime.session("format")
    reply = s.reply("Hi! Please remember that my locker code is 4417.")
    assert reply.strip() and "<|" not in reply
    assert s.transcript.turns[-1].role == "assistant"


def test_the_tiny_model_recalls_facts_beyond_its_window():
    from ovq.agent.eval.recall import evaluate_recall

    loaded = load_model("tiny")
    result = evaluate_recall(loaded.model, loaded.tokenizer, "memory_dialogue", "default", n=6)
    beyond = result["by_distance_tokens"]["256-1024"]  # past the 128-token window: through OVQ
    assert result["exact_match"] >= 0.7 and beyond["answers"] >= 5 and beyond["exact_match"] >= 0.6


def test_the_tiny_model_recalls_facts_stated_late_in_a_long_session():
    """One fixed 62k-token test_64k dialogue (questions up to 51k tokens in). With the
    shipped OVQ capacity (4,096 slots) it recalls 8 of 8; with 1,024 it recalled 2 of 8, because
    the plateau schedule then opens almost no slots for facts that arrive late (card: Evaluation)."""
    from ovq.agent.eval.recall import evaluate_recall

    loaded = load_model("tiny")
    args = (loaded.model, loaded.tokenizer, "memory_dialogue", "test_64k")
    result = evaluate_recall(*args, n=1, seed=10**6 + 12)
    assert result["answers"] == 8 and result["max_tokens"] > 60_000
    assert result["exact_match"] >= 0.75
