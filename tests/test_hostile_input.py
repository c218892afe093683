"""Hostile input files: each is one line naming the file, or a reported item, never a traceback.

JSON nested thousands deep (Python's decoder raises RecursionError).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from acp.cli import app
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)

DEEP_ARRAY = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000


def invoke(*args: object) -> Result:
    # catch_exceptions=False: an exception escaping the command fails the test with its traceback
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result: Result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: "), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def plan_line(plan_id: str = "p1") -> str:
    return json.dumps({
        "id": plan_id, "concepts": ["dog"], "caption": "a dog", "planner": "heuristic",
        "objects": [{"id": 0, "category": "dog", "description": "a dog", "bbox": [0.1, 0.1, 0.3, 0.3]}],
    })


# -- JSON nested too deeply ----------------------------------------------------------------------


@pytest.mark.parametrize("deep", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_deep_json_in_bank_build_is_one_line(tmp_path: Path, deep: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep)
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    assert_one_line_error(result, str(path), "nested too deeply")


def test_deep_json_in_score_dataset_is_one_line(tmp_path: Path, tiny_clip_dir: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP_OBJECT)
    result = invoke("score", "dataset", path, "--images", tmp_path, "-o", tmp_path / "r",
                    "--clip-model", tiny_clip_dir, "--no-progress")
    assert_one_line_error(result, str(path), "nested too deeply")


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_deep_json_in_export_merge_is_one_line(tmp_path: Path, which: str) -> None:
    deep, fine = tmp_path / "deep.json", tmp_path / "fine.json"
    deep.write_text(DEEP_ARRAY)
    fine.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    pair = (deep, fine) if which == "synthetic" else (fine, deep)
    result = invoke("export", "merge", *pair, "-o", tmp_path / "merged.json")
    assert_one_line_error(result, str(deep), "nested too deeply")


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("c.json", DEEP_ARRAY, "c.json:1"),
        ("c.json", '{"dog": ' + DEEP_ARRAY + "}", "c.json:1"),
        ("c.jsonl", '{"concepts": ["dog"]}\n' + DEEP_OBJECT + "\n", "c.jsonl:2"),
        ("c.yaml", DEEP_ARRAY, "c.yaml"),
    ],
)
def test_deep_concept_files_in_plan_are_one_line(tmp_path: Path, name: str, content: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = invoke("plan", path, "-o", tmp_path / "plans.jsonl", "--planner", "heuristic")
    assert_one_line_error(result, where, "nested too deeply")


def test_deep_categories_file_in_generate_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "categories.json"
    path.write_text(DEEP_ARRAY)
    result = invoke("generate", "--concepts", "dog", "--categories", path, "-o", tmp_path / "out",
                    "--planner", "heuristic", "--no-progress")
    assert_one_line_error(result, str(path), "nested too deeply")


def test_deep_plan_line_in_validate_is_an_invalid_line(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(plan_line() + "\n" + DEEP_OBJECT + "\n")
    result = invoke("validate", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert f"{path}:2: not a JSON object" in lines
    assert lines[-1] == f"{path}: 1 valid, 1 invalid"


def test_deep_last_line_without_newline_is_a_torn_tail(tmp_path: Path) -> None:
    # A last line that does not parse and lacks its newline is a torn write (acp.jsonl), whatever
    # the reason it does not parse.
    path = tmp_path / "plans.jsonl"
    path.write_text(plan_line() + "\n" + DEEP_OBJECT)
    result = invoke("validate", path)
    assert result.exit_code == 0 and result.output.splitlines()[-1] == f"{path}: 1 valid, 0 invalid"


def test_deep_plan_line_in_render_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    path.write_text(DEEP_ARRAY + "\n")
    result = invoke("render", path, "-o", tmp_path / "renders", "--no-progress")
    assert f"{path}:1: skipped: not a JSON object" in result.stderr
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"acp: error: {path}: no valid plans (1 lines skipped)"


def test_deep_bank_index_is_one_line(tmp_path: Path) -> None:
    from acp.errors import InputError
    from acp.score.bank import Bank
    from tests.test_bank import write_coco

    coco = write_coco(tmp_path / "a.json", [[("dog", [0.1, 0.1, 0.2, 0.2]), ("cat", [0.5, 0.5, 0.2, 0.2])]])
    Bank.from_coco([coco]).save(tmp_path / "bank")
    (tmp_path / "bank" / "index.json").write_text(DEEP_OBJECT)
    with pytest.raises(InputError, match="nested too deeply"):
        Bank.load(tmp_path / "bank")


def test_deep_judge_reply_has_no_rating() -> None:
    from acp.score.judge import parse_rating

    assert parse_rating(DEEP_ARRAY) is None
    assert parse_rating('{"rating": ' + DEEP_ARRAY + "}") is None
