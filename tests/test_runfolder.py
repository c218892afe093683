"""acp.runfolder: the typed, bounded readers of a run folder's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from acp.errors import InputError
from acp.runfolder import MAX_LINE, RunFolder, ScoreReportFolder, read_json_file

RESULT = {"plan_id": "000000", "status": "kept", "clis": 61.5, "kept_categories": ["dog"]}


def _jsonl(path: Path, *lines: str | dict[str, object], end: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + end)


@pytest.mark.parametrize(("line", "reason"), [
    ('{"plan_id": "000001", "status": "kept", "clis": NaN}', "clis: nan is not a score (expected 0-100)"),
    ('{"plan_id": "000001", "status": "kept", "clis": 1e308}',
     "clis: 1e+308 is not a score (expected 0-100)"),
    ('{"plan_id": "000001", "status": "kept", "clis": "61"}', "clis: Input should be a valid number"),
    ('{"plan_id": ["000001"], "status": "kept"}', "plan_id: Input should be a valid string"),
    ('{"plan_id": "000001", "status": "maybe"}', "status: Input should be 'kept', 'dropped' or 'failed'"),
    ('{"plan_id": "000001", "status": "kept", "flagged": true}', "flagged: Input should be a valid integer"),
    ('{"plan_id": "000001", "status": "kept", "candidate": ' + "9" * 5000 + "}",
     "Invalid JSON: number out of range"),
    ("[1, 2]", "(record): Input should be an object"),
    ("{broken", "(record): Invalid JSON"),
])
def test_a_bad_progress_line_is_left_out_and_named(tmp_path: Path, line: str, reason: str) -> None:
    run = RunFolder(tmp_path)
    _jsonl(run.progress_path, RESULT, line, {**RESULT, "plan_id": "000002"})
    assert [r.plan_id for r in run.progress()] == ["000000", "000002"]
    assert run.skipped.counts == {"progress.jsonl": 1}
    assert run.skipped.examples[0].startswith("progress.jsonl line 2: ") and reason in run.skipped.examples[0]


def test_a_line_past_the_cap_is_skipped_without_being_held(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    huge = '{"plan_id": "' + "x" * (MAX_LINE + 10) + '", "status": "kept"}'
    _jsonl(run.progress_path, RESULT, huge, {**RESULT, "plan_id": "000002"})
    assert [r.plan_id for r in run.progress()] == ["000000", "000002"]
    assert run.skipped.examples == ["progress.jsonl line 2: longer than 1 MiB"]


@pytest.mark.parametrize(("tail", "ids"), [('{"plan_id": "000002", "status": "kept"}', ["000000", "000002"]),
                                           ('{"plan_id": "000002", "sta', ["000000"])])
def test_a_final_line_without_its_newline_counts_only_when_whole(tmp_path: Path, tail: str,
                                                                 ids: list[str]) -> None:
    run = RunFolder(tmp_path)
    _jsonl(run.progress_path, RESULT, tail, end="")
    assert [r.plan_id for r in run.progress()] == ids
    assert run.skipped.total == 0  # a torn write is not a bad record


def test_whole_file_records_are_one_line_naming_file_and_field(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.summary_path.write_text(json.dumps({"scenes": 3, "last_run": {"planner": {"planned": -1}}}))
    with pytest.raises(InputError, match=r"summary\.json: last_run\.planner\.planned: Input should be"):
        run.summary()
    run.settings_path.write_text("[]")
    with pytest.raises(InputError, match=r"settings\.json: expected a JSON object, got list"):
        run.settings()
    run.settings_path.write_text('{"min_clis_i": Infinity}')
    with pytest.raises(InputError, match=r"settings\.json: not valid JSON \(Infinity is not JSON"):
        run.settings()
    assert RunFolder(tmp_path / "nothing").summary() is None  # an interrupted run has none yet


def test_a_whole_file_is_read_up_to_its_cap_and_never_from_a_fifo(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 200}))
    with pytest.raises(InputError, match=r"big\.json: 209 bytes is over the 100 bytes cap of such a file"):
        read_json_file(big, limit=100)
    fifo = tmp_path / "settings.json"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(InputError, match="not a regular file"):
        RunFolder(tmp_path).settings()
    assert list(RunFolder(tmp_path).progress()) == []
    os.unlink(fifo)
    os.mkfifo(tmp_path / "progress.jsonl")
    run = RunFolder(tmp_path)
    assert list(run.progress()) == [] and run.skipped.counts == {"progress.jsonl": 1}


def test_unknown_settings_are_kept_to_show(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.settings_path.write_text(json.dumps({"min_clis_i": 60, "a_newer_option": [1, 2]}))
    settings = run.settings()
    assert settings is not None and settings.min_clis_i == 60.0
    assert settings.values == {"min_clis_i": 60.0, "a_newer_option": [1, 2]}


def test_plans_by_id_read_only_those(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)

    def plan(plan_id: str) -> dict[str, object]:
        return {"id": plan_id, "caption": "A dog.", "planner": "heuristic",
                "objects": [{"id": 0, "category": "dog", "description": "a dog",
                             "bbox": [0.1, 0.1, 0.5, 0.5]}]}

    _jsonl(run.plans_path, plan("a"), "{broken", plan("b"), {**plan("c"), "width": "wide"})
    assert [p.id for p in run.plans(ids={"b", "c"})] == ["b"]
    assert run.skipped.counts == {"plans.jsonl": 1}  # "c" is bad; the broken line is not one asked for


def test_a_score_report_is_read_row_by_row(tmp_path: Path) -> None:
    report = ScoreReportFolder(tmp_path)
    report.summary_path.write_text(json.dumps({"scored_images": 2, "clip_model": "clip", "keep_above": 50}))
    report.images_path.write_text('[\n{"id": 1, "file_name": "a.png", "clis": 70}\n,{"id": [2]}\n,'
                                  '{"id": "x", "clis": 101}\n]\n')
    report.categories_path.write_text(json.dumps([{"category": "dog", "boxes": 3, "below_60": 0.5},
                                                  {"category": "cat", "boxes": -1}], indent=1))
    assert report.is_report() and report.summary().keep_above == 50.0
    assert [row.id for row in report.images()] == [1]
    assert [(c.category, c.below) for c in report.categories()] == [("dog", 0.5)]
    assert report.skipped.counts == {"images.json": 2, "categories.json": 1}
    assert [row.id for row in report.images(again=True)] == [1]
    assert report.skipped.total == 3  # a second pass counts nothing twice


def test_a_coco_file_past_its_cap_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.runfolder

    run = RunFolder(tmp_path)
    empty = {"images": [], "annotations": [], "categories": []}
    run.annotations_path.write_text(json.dumps(empty) + " " * 100)
    assert run.coco().image_count == 0
    monkeypatch.setattr(acp.runfolder, "MAX_COCO", 64)
    with pytest.raises(InputError, match=r"annotations\.json: 0\.0 GB, more than the"):
        run.coco()


@pytest.mark.parametrize("text", ['{"instances_kept_by_category": {"dog": NaN}}',
                                  '{"instances_kept_by_category": {"dog": 1e308}}',
                                  '{"instances_kept_by_category": {"dog": ' + "9" * 5000 + "}}",
                                  '{"instances_kept_by_category": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"instances_dropped_by_category": {"dog": -3}}'])
def test_a_run_summary_anywhere_is_read_or_one_line(tmp_path: Path, text: str) -> None:
    from acp.runfolder import read_run_summary

    path = tmp_path / "old-run.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_run_summary(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    path.write_text('{"instances_kept_by_category": {"dog": 3}, "unknown": NaN}')
    with pytest.raises(InputError, match="NaN is not JSON"):  # refused anywhere in a whole file
        read_run_summary(path)
    path.write_text('{"instances_kept_by_category": {"dog": 3}}')
    assert read_run_summary(path).instances_kept_by_category == {"dog": 3}
