import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovq.agent.model.tokenizer import ASSISTANT, END, SPECIAL_TOKENS, USER, Tokenizer

CORPUS = [
    f"{USER}What is the code for locker {i}?{END}{ASSISTANT}It is {i * 37 % 1000}.{END}" for i in range(300)
]


TOKENIZER = Tokenizer.train(CORPUS, vocab_size=400)  # hypothesis tests cannot take fixtures


@pytest.fixture
def tok():
    return TOKENIZER


def test_special_tokens_are_single_tokens_and_never_split(tok):
    ids = tok.encode(f"{USER}hi{END}")
    assert ids[0] == tok.special[USER] and ids[-1] == tok.special[END]
    assert len(set(tok.special.values())) == len(SPECIAL_TOKENS)


@given(st.text(max_size=200))
def test_any_text_round_trips_exactly(text):
    tok = TOKENIZER
    assert tok.decode(tok.encode(text)) == text
    assert "".join(tok.decode_stream(tok.encode(text))) == text


def test_offsets_map_tokens_back_to_characters(tok):
    text = f"{USER}Where is room 42?{END}"
    ids, offsets = tok.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    assert "".join(text[s:e] for s, e in offsets) == text


def test_save_load_preserves_ids_and_fingerprint(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.fingerprint == tok.fingerprint and again.encode(CORPUS[5]) == tok.encode(CORPUS[5])
    assert again.vocab_size == tok.vocab_size <= 400
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "missing")


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(CORPUS, vocab_size=100)


def test_chat_formats_write_turns_and_restyle_plain_text():
    from ovq.agent.model.tokenizer import CHAT_FORMATS, OBSERVATION, chat_format

    plain, spaced = CHAT_FORMATS["plain"], chat_format("spaced")
    assert plain.turn(USER, "hi") == f"{USER}hi{END}\n"
    assert spaced.turn(USER, "hi") == f"{USER} hi{END}\n" and spaced.open(ASSISTANT) == f"{ASSISTANT} "
    text = plain.turn(USER, "a") + plain.turn(ASSISTANT, "b") + plain.turn(OBSERVATION, "c")
    assert spaced.restyle(text) == spaced.turn(USER, "a") + spaced.turn(ASSISTANT, "b") + spaced.turn(
        OBSERVATION, "c"
    )
    assert plain.restyle(text) == text
    assert spaced.reply(" 4471") == "4471" and spaced.reply("4471") == "4471" and plain.reply(" x") == " x"
    with pytest.raises(ValueError, match="unknown chat format 'fancy'"):
        chat_format("fancy")
