import pytest
import torch

from ovq.agent.model.generate import CancelToken, SamplingConfig, generate_tokens, sample, stream_text
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer

TOK = Tokenizer.train([f"the code for box {i} is {i * 13 % 97}. " * 3 for i in range(100)], vocab_size=300)


def model(seed=0):
    torch.manual_seed(seed)
    return HybridLM(ModelConfig.preset("tiny", TOK.vocab_size)).eval()


PROMPT = TOK.encode("the code for box 7 is")


def run(m, cfg, seed=0, **kw):
    state = m.init_state(1)
    out = list(generate_tokens(m, state, PROMPT, cfg, torch.Generator().manual_seed(seed), **kw))
    return out, state


def test_greedy_tokens_are_the_argmax_of_one_forward_and_the_state_consumed_them_all():
    m = model()
    tokens, state = run(m, SamplingConfig(max_tokens=12))
    assert len(tokens) == 12 and state.pos == len(PROMPT) + 12
    with torch.no_grad():
        logits, _ = m(torch.tensor([PROMPT + tokens]))
    assert logits[0, len(PROMPT) - 1 : -1].argmax(-1).tolist() == tokens


def test_stopping_early_leaves_exactly_the_yielded_tokens_in_the_state():
    m = model()
    state = m.init_state(1)
    gen = generate_tokens(m, state, PROMPT, SamplingConfig(max_tokens=50), torch.Generator())
    taken = [next(gen) for _ in range(3)]
    gen.close()  # the consumer walks away (e.g. KeyboardInterrupt in a UI)
    assert state.pos == len(PROMPT) + len(taken)
    cancel = CancelToken()
    state = m.init_state(1)
    got = []
    for t in generate_tokens(
        m, state, PROMPT, SamplingConfig(max_tokens=50), torch.Generator(), cancel=cancel
    ):
        got.append(t)
        if len(got) == 5:
            cancel.cancel()
    assert len(got) == 5 and state.pos == len(PROMPT) + 5


def test_a_stop_token_is_fed_and_ends_generation():
    m = model()
    greedy, _ = run(m, SamplingConfig(max_tokens=10))
    tokens, state = run(m, SamplingConfig(max_tokens=10), stop_tokens=frozenset({greedy[3]}))
    assert tokens == greedy[: greedy.index(greedy[3]) + 1] and state.pos == len(PROMPT) + len(tokens)


def test_sampling_is_reproducible_per_seed_and_filters_reduce_to_greedy():
    m = model()
    hot = SamplingConfig(temperature=1.5, max_tokens=20)
    assert run(m, hot, seed=1)[0] == run(m, hot, seed=1)[0]
    assert run(m, hot, seed=1)[0] != run(m, hot, seed=2)[0]
    greedy = run(m, SamplingConfig(max_tokens=15))[0]
    assert run(m, SamplingConfig(temperature=2.0, top_k=1, max_tokens=15), seed=3)[0] == greedy
    assert run(m, SamplingConfig(temperature=2.0, top_p=1e-6, max_tokens=15), seed=4)[0] == greedy


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    drawn = {sample(logits, SamplingConfig(temperature=1.0, top_p=0.7), g) for _ in range(300)}
    assert drawn == {0, 1}


def test_stream_text_stops_at_stop_strings_split_across_tokens():
    text = "alpha beta<|stop here|> never shown"
    ids = TOK.encode(text)
    pieces = list(stream_text(TOK, iter(ids), stop=("<|stop",)))
    assert "".join(pieces) == "alpha beta"
    assert "".join(stream_text(TOK, iter(TOK.encode("plain text")), stop=("zzz",))) == "plain text"
    assert "".join(stream_text(TOK, iter(TOK.encode("ends with <|st")), stop=("<|stop",))) == "ends with <|st"


@pytest.mark.parametrize(
    "kw, match",
    [({"temperature": -1}, "temperature"), ({"top_k": -1}, "top_k"), ({"top_p": 0}, "top_p"),
     ({"max_tokens": -1}, "max_tokens"), ({"stop": ("",)}, "stop"),
     ({"repeat_penalty": 0.9}, "repeat_penalty"), ({"repeat_penalty": float("nan")}, "repeat_penalty"),
     ({"repeat_last_n": 0}, "repeat_last_n")],
)  # fmt: skip
def test_bad_sampling_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kw)


def test_empty_prompt_is_rejected():
    m = model()
    with pytest.raises(ValueError, match="non-empty prompt"):
        list(generate_tokens(m, m.init_state(1), [], SamplingConfig(), torch.Generator()))


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits_of_recent_reply_tokens():
    logits = torch.tensor([3.0, 2.9, -1.0, -1.05, 0.5])
    cfg, g = SamplingConfig(repeat_penalty=1.1), torch.Generator()
    assert sample(logits, cfg, g, recent=[]) == 0 == sample(logits, SamplingConfig(), g, recent=[0])
    assert sample(logits, cfg, g, recent=[0]) == 1  # 3.0 / 1.1 < 2.9
    assert sample(logits, cfg, g, recent=[0, 0, 0, 1]) == 0  # a set: each token is penalised once
    only_negative = torch.tensor([-1.0, -1.05])
    assert sample(only_negative, cfg, g, recent=[0]) == 1  # -1.1 < -1.05
    window = SamplingConfig(repeat_penalty=1.1, repeat_last_n=2)
    assert sample(logits, window, g, recent=[0, 4, 4]) == 0  # token 0 left the last 2


def test_repeat_penalty_counts_the_reply_and_not_the_prompt():
    m = model()
    greedy, _ = run(m, SamplingConfig(max_tokens=12))
    penalised, _ = run(m, SamplingConfig(max_tokens=12, repeat_penalty=1e9))
    assert greedy[0] == penalised[0]  # the first token is free, though the prompt holds many tokens
    assert len(set(penalised)) == len(penalised)  # never a token twice within the last 64
    assert len(set(greedy)) < len(greedy)  # this model does repeat when greedy
