"""Articles, plurals and counts in captions: each row is the exact text expected."""

from __future__ import annotations

import pytest

from acp.english import count_phrase, listing, plural, singular, with_article


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("orange jacket", "an orange jacket"), ("red jacket", "a red jacket"),
        ("apple", "an apple"), ("umbrella", "an umbrella"), ("elephant", "an elephant"),
        ("unicorn", "a unicorn"), ("uniform", "a uniform"), ("utensil", "a utensil"),
        ("one-way sign", "a one-way sign"), ("european car", "a european car"),
        ("hour", "an hour"), ("honest face", "an honest face"), ("horse", "a horse"),
        ("SUV", "an SUV"), ("TV", "a TV"), ("tv", "a tv"), ("MRI scanner", "an MRI scanner"),
        ("office", "an office"), ("airport hall", "an airport hall"),
        ("child's bedroom", "a child's bedroom"),
    ],
)
def test_with_article(phrase: str, expected: str) -> None:
    assert with_article(phrase) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dog", "dogs"), ("fire hydrant", "fire hydrants"), ("bus", "buses"), ("wine glass", "wine glasses"),
        ("bench", "benches"), ("toothbrush", "toothbrushes"), ("box", "boxes"), ("person", "people"),
        ("sheep", "sheep"), ("mouse", "mice"), ("knife", "knives"), ("strawberry", "strawberries"),
        ("toy", "toys"), ("tv", "tvs"), ("TV", "TVs"), ("hair drier", "hair driers"), ("tomato", "tomatoes"),
        ("cookie", "cookies"), ("dogs", "dogs"), ("frisbees", "frisbees"), ("people", "people"),
        ("children", "children"), ("skis", "skis"), ("Dog", "Dogs"), ("teddy bear", "teddy bears"),
    ],
)
def test_plural(name: str, expected: str) -> None:
    assert plural(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("frisbees", "frisbee"), ("fire hydrants", "fire hydrant"), ("people", "person"), ("buses", "bus"),
     ("cookies", "cookie"), ("strawberries", "strawberry"), ("bus", "bus"), ("glass", "glass"),
     ("knives", "knife"), ("dog", "dog")],
)
def test_singular(name: str, expected: str) -> None:
    assert singular(name) == expected


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [
        ("frisbee", 1, "a frisbee"), ("frisbees", 1, "a frisbee"), ("apple", 1, "an apple"),
        ("fire hydrant", 2, "two fire hydrants"), ("dog", 10, "ten dogs"), ("cup", 12, "12 cups"),
        ("person", 3, "three people"), ("skis", 1, "a pair of skis"), ("skis", 2, "two pairs of skis"),
        ("red skis", 1, "a pair of red skis"), ("scissors", 1, "a pair of scissors"),
        ("orange", 1, "an orange"), ("oranges", 2, "two oranges"), ("hot dog", 1, "a hot dog"),
    ],
)
def test_count_phrase(name: str, count: int, expected: str) -> None:
    assert count_phrase(name, count) == expected


def test_listing() -> None:
    assert listing(["a dog"]) == "a dog"
    assert listing(["a dog", "a cat"]) == "a dog and a cat"
    assert listing(["a dog", "a cat", "two birds"]) == "a dog, a cat and two birds"
