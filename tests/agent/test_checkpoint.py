import json

import pytest
import torch

from ovq.agent.model.checkpoint import fingerprint, load_model, save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer

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


def test_capacity_replaces_the_dictionary_size_and_nothing_else(tmp_path):
    save_model(make_model(), TOKENIZER, tmp_path)
    base, big = load_model(tmp_path), load_model(tmp_path, capacity=96)
    assert (base.model.config.ovq.capacity, big.model.config.ovq.capacity) == (24, 96)
    assert big.model.config.ovq.chunk_size == base.model.config.ovq.chunk_size
    assert big.fingerprint != base.fingerprint  # the config is part of it: sessions stay tied to one N
    for (name, a), (_, b) in zip(base.model.state_dict().items(), big.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert big.model.init_state(1).nbytes > base.model.init_state(1).nbytes
    # within the first chunk the dictionary is empty: both read exactly the same tokens
    tokens = torch.tensor([TOKENIZER.encode("fact 3")[:8]])
    with torch.no_grad():
        assert torch.equal(base.model(tokens)[0], big.model(tokens)[0])


@pytest.mark.parametrize("capacity", [0, 1, -4, True, 2.5])
def test_a_capacity_the_dictionary_cannot_have_is_refused(tmp_path, capacity):
    save_model(make_model(), TOKENIZER, tmp_path)
    with pytest.raises(ValueError, match="capacity must be an int >= 2"):
        load_model(tmp_path, capacity=capacity)


def test_capacity_for_a_model_without_ovq_layers_is_refused(tmp_path):
    torch.manual_seed(0)
    no_ovq = HybridLM(ModelConfig.preset("tiny", TOKENIZER.vocab_size, layers="swa,full"))
    save_model(no_ovq, TOKENIZER, tmp_path)
    with pytest.raises(ValueError, match="no OVQ layer"):
        load_model(tmp_path, capacity=64)
