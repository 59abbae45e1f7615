"""Text in bounded pieces: tokenising a 10 MB paste without holding all of its ids at once."""

from __future__ import annotations

from collections.abc import Iterator

SEGMENT_CHARS = 1 << 16


def segments(text: str, size: int = SEGMENT_CHARS) -> Iterator[str]:
    """Cut `text` into pieces of about `size` characters, only just before a space that follows a
    non-space: byte-level BPE pre-tokenises ' word' as one unit there, so the ids of the pieces
    concatenate to the ids of the whole text."""
    start = 0
    while len(text) - start > size:
        cut = _cut_point(text, start + size, start)
        if cut is None:  # no space at all in a long stretch: fall back to a hard cut
            cut = start + size
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _cut_point(text: str, at: int, lo: int) -> int | None:
    i = text.rfind(" ", lo + 1, at)
    while i > lo:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", lo + 1, i)
    return None


def clean(text: str) -> tuple[str, int]:
    """Drop control characters other than newline and tab (they carry nothing a model can use and
    can corrupt a terminal); returns (text, characters removed)."""
    kept = "".join(c for c in text if c in "\n\t" or not (ord(c) < 32 or 127 <= ord(c) < 160))
    return kept, len(text) - len(kept)
