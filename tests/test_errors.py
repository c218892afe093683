"""``one_line``: long library errors are shortened between words, keeping both ends."""

from __future__ import annotations

import pytest

from acp.errors import one_line

WORDS = " ".join(f"word{i:03d}" for i in range(100))  # 799 characters, words of 7


@pytest.mark.parametrize(
    ("text", "head", "tail", "expected"),
    [
        ("short", 150, 120, "short"),
        ("two\n  lines\tand  tabs", 150, 120, "two lines and tabs"),
        ("x" * 273, 150, 120, "x" * 273),  # fits: head + tail + len(" … ")
        # back to the last whole word at the start, forward to the first whole one at the end
        (WORDS, 20, 20, "word000 word001 … word098 word099"),
        ("first, second, third, fourth, fifth, sixth, seventh", 20, 20, "first, second … sixth, seventh"),
        ("a" * 30 + " " + "b" * 30, 20, 20, "a" * 20 + " … " + "b" * 20),  # one long word: a hard cut
    ],
)
def test_one_line(text: str, head: int, tail: int, expected: str) -> None:
    assert one_line(text, head=head, tail=tail) == expected


def test_default_lengths_keep_whole_words() -> None:
    start, end = one_line(WORDS).split(" … ")
    assert WORDS.startswith(start) and WORDS.endswith(end)
    assert all(len(word) == 7 for word in f"{start} {end}".split())
    assert 150 - 8 <= len(start) <= 150 and 120 - 8 <= len(end) <= 120
