import json

import pytest
import torch

from agent.checkpoint import fingerprint, load_model, save_model
from agent.model import HybridLM, ModelConfig
from agent.tokenizer import Tokenizer

TOKENIZER = Tokenizer.train([f"fact {i}: value {i * 7}" for i in range(200)], vocab_size=300)


def make_model(seed=0):
    torch.manual_seed(seed)
    return HybridLM(ModelConfig.preset("tiny", TOKENIZER.vocab_size))


def test_save_load_round_trip_gives_identical_logits_and_fingerprint(tmp_path):
    model = make_model()
    save_model(model, TOKENIZER, tmp_path)
    loaded = load_model(tmp_path)
    tokens = torch.tensor([TOKENIZER.encode("fact 3: value 21")])
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens)[0], loaded.model(tokens)[0])
    assert loaded.fingerprint == fingerprint(model, TOKENIZER)


def test_fingerprint_changes_with_any_weight_or_the_config():
    model = make_model()
    base = fingerprint(model, TOKENIZER)
    with torch.no_grad():
        model.blocks[0].mlp.down.weight[0, 0] += 1e-6
    assert fingerprint(model, TOKENIZER) != base
    assert fingerprint(make_model(seed=1), TOKENIZER) != base


def test_broken_model_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        load_model(tmp_path)
    save_model(make_model(), TOKENIZER, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "d_model": 64}))
    with pytest.raises(ValueError, match="has shape"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid model config"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="vocab"):
        save_model(HybridLM(ModelConfig.preset("tiny", 999)), TOKENIZER, tmp_path)
