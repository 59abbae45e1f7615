from hypothesis import given, settings
from hypothesis import strategies as st

from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.text import clean, segments

TOK = Tokenizer.train(["hello world, this is a test of  spaces\tand\nnewlines " * 20], vocab_size=300)


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("ab c\n\t.,!é€")), max_size=400), st.integers(3, 50))
def test_segment_ids_concatenate_to_the_ids_of_the_whole_text(text, size):
    parts = list(segments(text, size))
    assert "".join(parts) == text
    ids = [i for p in parts for i in TOK.encode(p)]
    cuts = [sum(map(len, parts[:i])) for i in range(1, len(parts))]
    if all(text[c] == " " and not text[c - 1].isspace() for c in cuts):  # no hard cut was needed
        assert ids == TOK.encode(text)


def test_segments_are_bounded():
    text = "word " * 10_000
    parts = list(segments(text, 1000))
    assert max(map(len, parts)) <= 1000 and "".join(parts) == text


def test_clean_removes_control_characters_but_keeps_newlines_and_tabs():
    assert clean("a\x00b\x1b[31mc\nd\te\x7f") == ("ab[31mc\nd\te", 3)
