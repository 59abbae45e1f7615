"""`ovq eval compare`: the same examples for every model, state bytes by kind, table and errors."""

import importlib.util
import json

import pytest
import torch

from agent.checkpoint import save_model
from agent.cli import main as ovq_main
from agent.compare import compare, plot, to_markdown
from agent.model import HybridLM, ModelConfig
from agent.tasks import make_task
from agent.tokenizer import Tokenizer

LENGTHS = [150, 600]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tok = Tokenizer.train((make_task("icr", "tiny")(i).text for i in range(40)), vocab_size=300)
    dirs = []
    for layers in ("swa,ovq", "swa,full"):
        torch.manual_seed(0)
        model = HybridLM(ModelConfig.preset("tiny", tok.vocab_size, layers=layers, full_context=1024))
        dirs.append(str(save_model(model, tok, tmp_path_factory.mktemp(layers.replace(",", "_")))))
    return dirs


def test_compare_scores_every_model_at_every_length(models):
    result = compare(models, "icr", "tiny", LENGTHS, n=2)
    ovq, full = result["models"]
    assert [m["layers"] for m in result["models"]] == ["swa,ovq", "swa,full"]
    for m in (ovq, full):
        assert [r["length"] for r in m["results"]] == LENGTHS
        assert all(0 <= r["exact_match"] <= 1 and r["answers"] > 0 for r in m["results"])
    # the same examples for both models: same answer counts and lengths in tokens
    assert [r["answers"] for r in ovq["results"]] == [r["answers"] for r in full["results"]]
    assert [r["tokens"] for r in ovq["results"]] == [r["tokens"] for r in full["results"]]
    assert ovq["results"][0]["tokens"] < ovq["results"][1]["tokens"]
    # OVQ's state is fixed; a full-attention cache grows with the stream
    assert ovq["results"][0]["state_bytes"] == ovq["results"][1]["state_bytes"]
    assert full["results"][0]["state_bytes"] < full["results"][1]["state_bytes"]
    assert "by_chunk_updates" in ovq["results"][0] and "by_chunk_updates" not in full["results"][0]
    table = to_markdown(result)
    assert table.count("\n") == 4 and "swa,full" in table and "150 ch" in table


def test_lengths_can_set_another_field_of_the_task(models):
    result = compare(models[:1], "icl", "tiny", [2, 6], n=1, length_field="examples_per_function")
    short, long = result["models"][0]["results"]
    assert short["answers"] < long["answers"] and short["tokens"] < long["tokens"]
    assert "6 examples_per_function" in to_markdown(result)


def test_plot_writes_a_png_or_says_what_is_missing(models, tmp_path):
    result = compare(models[:1], "icr", "tiny", LENGTHS[:1], n=1)
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(ValueError, match="matplotlib"):
            plot(result, str(tmp_path / "p.png"))
    else:
        plot(result, str(tmp_path / "p.png"))
        assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_writes_json_and_markdown(models, tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["eval", "compare", "--models", ",".join(models), "--task", "icr", "--preset", "tiny",
            "--lengths", "150", "--n", "1", "--json", str(js), "--markdown", str(md)]  # fmt: skip
    assert ovq_main(argv) == 0
    assert json.loads(js.read_text())["lengths"] == [150]
    assert md.read_text() == capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lengths", "150"], "needs --models"),
        (["--models", "x", "--lengths", "1a"], "comma-separated integers"),
        (["--models", "/nowhere", "--lengths", "150"], "lacks"),
        (["--models", "x", "--lengths", "0"], "positive"),
        (["--models", "x", "--lengths", "5", "--length-field", "bogus"], "bad override"),
    ],
)
def test_cli_compare_bad_input_is_a_clear_error(extra, message, capsys):
    assert ovq_main(["eval", "compare", "--task", "icr", "--preset", "tiny", *extra]) == 2
    assert message in capsys.readouterr().err
