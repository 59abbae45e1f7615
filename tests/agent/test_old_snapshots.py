"""A session snapshot written before the `ovq.*` rename (modules agent.session, agent.model, ...)
resumes after it: the move changed neither the snapshot format nor the model fingerprint."""

import gzip
from pathlib import Path

import torch
from safetensors import safe_open

from ovq import Runtime

DATA = Path(__file__).parent / "data"


def test_a_session_saved_by_the_old_layout_resumes_with_identical_logits(tmp_path):
    exported = tmp_path / "old.ovqs"
    exported.write_bytes(gzip.decompress((DATA / "tiny_v2_session.ovqs.gz").read_bytes()))
    with safe_open(str(DATA / "tiny_v2_session.logits.safetensors"), "pt") as f:
        meta, expected = f.metadata(), f.get_tensor("next_logits")
    runtime = Runtime.load("tiny", tmp_path / "store", capacity=int(meta["capacity"]))
    assert runtime.fingerprint == meta["fingerprint"]  # config, weights and tokenizer hash as before
    runtime.store.import_(exported)
    session = runtime.session(meta["session"])
    assert session.tokens_seen == int(meta["tokens_seen"])
    assert [t.role for t in session.transcript.turns] == ["observation", "user", "assistant"]
    next_id = runtime.tokenizer.encode(meta["next_token_text"])[0]  # as the writer chose it
    logits = session._forward([next_id])[0, -1]
    # the state is restored exactly; the logits match to float32 rounding (a matmul's summation order
    # follows the thread count, which need not be the writer's)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_the_shipped_model_keeps_its_fingerprint():
    """The card names this fingerprint; sessions saved by users carry it."""
    card = (Path(__file__).resolve().parents[2] / "agent" / "shipped" / "tiny" / "card.md").read_text()
    fingerprint = Runtime.load("tiny", store=None).fingerprint
    assert fingerprint == "902671830bc95375efc7011d508c813677d9c1247b98f818efc528ec863b9eed"
    assert fingerprint in card
