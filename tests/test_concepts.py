"""Concept input: every form parses, bad input fails with file and line, sampling is even."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from acp.concepts import (
    load_concepts,
    parse_inline,
    parse_object_range,
    quota_scenes,
    sample_scenes,
    scene_concepts,
)
from acp.errors import InputError


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("c.txt", "dog\n# pets\n\n  fire hydrant  # red\ncat\n",
         ("vocabulary", ("dog", "fire hydrant", "cat"))),
        ("c.txt", "dog: 3\ncat:2\n", ("quotas", (("dog", 3), ("cat", 2)))),
        ("c.json", '["dog", "cat"]', ("vocabulary", ("dog", "cat"))),
        ("c.json", '{"dog": 4}', ("quotas", (("dog", 4),))),
        ("c.json", '[{"concepts": ["dog", "dog"]}]', ("scenes", (("dog", "dog"),))),
        ("c.yaml", "- dog\n- cat\n", ("vocabulary", ("dog", "cat"))),
        ("c.yml", "dog: 2\n", ("quotas", (("dog", 2),))),
        ("c.jsonl", '{"concepts": ["dog", "frisbee"]}\n\n{"concepts": ["cat"]}\n',
         ("scenes", (("dog", "frisbee"), ("cat",)))),
    ],
)
def test_forms(tmp_path, filename, content, expected):
    path = tmp_path / filename
    path.write_text(content)
    parsed = load_concepts(path)
    assert getattr(parsed, expected[0]) == expected[1]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("c.txt", "", "no concepts found"),
        ("c.txt", "# only a comment\n\n", "no concepts found"),
        ("c.txt", "dog\ncat\nDogs\n", "c.txt:3: duplicate concept 'Dogs'"),
        ("c.txt", "dog: 2\ncat\n", "quota"),
        ("c.txt", "dog: 0\n", "c.txt:1: quota must be an integer"),
        ("c.txt", "x" * 300 + "\n", "c.txt:1: concept name longer"),
        ("c.json", "[]", "empty list"),
        ("c.json", '["dog", ""]', "item 2: blank concept name"),
        ("c.json", '["dog", 3]', "item 2: expected a concept name"),
        ("c.json", '{"dog": -1}', "quota must be"),
        ("c.json", '{"dog": true}', "quota must be"),
        ("c.json", "[1, 2", "not valid JSON"),
        ("c.json", '"dog"', "expected a list"),
        ("c.jsonl", '{"concepts": []}\n', "c.jsonl:1: expected a non-empty list"),
        ("c.jsonl", '{"concepts": ["dog"]}\nnope\n', "c.jsonl:2: not valid JSON"),
        ("c.jsonl", '{"concept": ["dog"]}\n', "unknown keys"),
        ("c.jsonl", json.dumps({"concepts": ["dog"] * 31}) + "\n", "at most 30"),
        ("c.yaml", "- [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_concepts(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_concepts(tmp_path / "nope.txt")


def test_inline():
    assert parse_inline("dog, frisbee,cat").vocabulary == ("dog", "frisbee", "cat")
    with pytest.raises(InputError, match="blank"):
        parse_inline("dog,,cat")
    with pytest.raises(InputError, match="duplicate"):
        parse_inline("dog,dogs")


@pytest.mark.parametrize(("text", "expected"), [("2", (2, 2)), ("1-4", (1, 4))])
def test_object_range(text, expected):
    assert parse_object_range(text) == expected


@pytest.mark.parametrize("text", ["0", "4-1", "1-31", "a-b", ""])
def test_object_range_rejects(text):
    with pytest.raises(InputError, match="--objects-per-scene"):
        parse_object_range(text)


def test_sampling_is_even_and_deterministic():
    vocab = [f"c{i}" for i in range(37)]
    scenes = list(sample_scenes(vocab, 500, (1, 4), seed=7))
    assert scenes == list(sample_scenes(vocab, 500, (1, 4), seed=7))
    assert scenes != list(sample_scenes(vocab, 500, (1, 4), seed=8))
    assert all(1 <= len(s) <= 4 and len(set(s)) == len(s) for s in scenes)
    usage = Counter(c for s in scenes for c in s)
    assert set(usage) == set(vocab)
    assert max(usage.values()) - min(usage.values()) <= 1


def test_quotas_are_met_exactly():
    quotas = (("dog", 10), ("cat", 3), ("bus", 7))
    scenes = list(quota_scenes(quotas, (1, 2), seed=0))
    usage = Counter(c for s in scenes for c in s)
    assert usage == Counter(dict(quotas))
    assert all(len(set(s)) == len(s) for s in scenes)


def test_scene_count_rules():
    from acp.concepts import ConceptInput

    assert len(list(scene_concepts(ConceptInput(vocabulary=("a", "b", "c")), None, (1, 1), 0))) == 3
    with pytest.raises(InputError, match="quotas"):
        list(scene_concepts(ConceptInput(quotas=(("a", 1),)), 5, (1, 1), 0))
    with pytest.raises(InputError, match="--scenes"):
        list(scene_concepts(ConceptInput(vocabulary=("a",)), 0, (1, 1), 0))
