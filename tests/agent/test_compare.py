"""`ovq eval compare`: the same examples for every model, state bytes by kind, table and errors."""

import importlib.util
import json

import pytest
import torch

from ovq.agent.cli.main import main as ovq_main
from ovq.agent.eval.compare import compare, merge, parse_model, plot, to_markdown
from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.tasks import make_task

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
        (["--models", "/nowhere", "--lengths", "150"], "no model directory"),
        (["--models", "x", "--lengths", "0"], "positive"),
        (["--models", "x", "--lengths", "5", "--length-field", "bogus"], "bad override"),
        (["--models", "x"], "needs --lengths"),
        (["--merge", "/nowhere.json"], "no such file"),
        (["--models", "seed=", "--lengths", "150"], "needs a directory"),
    ],
)
def test_cli_compare_bad_input_is_a_clear_error(extra, message, capsys):
    assert ovq_main(["eval", "compare", "--task", "icr", "--preset", "tiny", *extra]) == 2
    assert message in capsys.readouterr().err


def test_parse_model_labels():
    assert parse_model("ovq=runs/ovq_s1") == ("ovq", "runs/ovq_s1")
    assert parse_model("runs/ovq_s1") == ("runs/ovq_s1", "runs/ovq_s1")
    # an '=' inside a path is part of the path, not a label
    assert parse_model("runs/lr=3e-3") == ("runs/lr=3e-3", "runs/lr=3e-3")


def test_models_sharing_a_label_are_summarised_as_seeds(models):
    ovq, full = models
    result = compare([f"a={ovq}", f"a={full}", f"b={full}"], "icr", "tiny", LENGTHS, n=1)
    assert [m["label"] for m in result["models"]] == ["a", "a", "b"]
    (group,) = result["groups"]  # "b" has one model: no summary row
    assert group["label"] == "a" and group["seeds"] == 2 and group["layers"] == "swa,full / swa,ovq"
    for i, r in enumerate(group["results"]):
        em = [m["results"][i]["exact_match"] for m in result["models"][:2]]
        assert r["exact_match_mean"] == pytest.approx(sum(em) / 2)
        assert (r["exact_match_min"], r["exact_match_max"]) == (min(em), max(em))
        # the summary states the larger state of its seeds: the full-attention cache
        assert r["state_bytes"] == result["models"][1]["results"][i]["state_bytes"]
    table = to_markdown(result)
    assert "| recipe | layers | seeds |" in table and "| a | swa,full / swa,ovq | 2 |" in table
    assert f"a: {ovq}" in table


def test_merge_joins_results_on_the_same_examples_and_refuses_others(models):
    ovq, full = models
    one = compare([f"s={ovq}"], "icr", "tiny", LENGTHS, n=1)
    two = compare([f"s={full}"], "icr", "tiny", LENGTHS, n=1)
    merged = merge([one, two])
    assert [m["model"] for m in merged["models"]] == [ovq, full]
    assert merged["groups"][0]["seeds"] == 2
    old = {k: v for k, v in one.items() if k not in ("groups", "length_field")}  # an older file
    old["models"] = [{k: v for k, v in m.items() if k != "label"} for m in old["models"]]
    assert merge([old, two])["models"][0]["label"] == ovq
    other = compare([full], "icr", "tiny", LENGTHS, n=2)
    with pytest.raises(ValueError, match="examples=2"):
        merge([one, other])


def test_cli_merge_reads_earlier_results(models, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, model in ((a, models[0]), (b, models[1])):
        argv = ["eval", "compare", "--models", f"seed={model}", "--task", "icr", "--preset", "tiny",
                "--lengths", "150", "--n", "1", "--json", str(path)]  # fmt: skip
        assert ovq_main(argv) == 0
    capsys.readouterr()
    assert ovq_main(["eval", "compare", "--merge", f"{a},{b}"]) == 0
    assert "| seed | swa,full / swa,ovq | 2 |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"not": "a comparison"}')
    assert ovq_main(["eval", "compare", "--merge", str(tmp_path / "bad.json")]) == 2
    assert "not a result of `ovq eval compare --json`" in capsys.readouterr().err
