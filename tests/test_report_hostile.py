"""`acp report` on a run folder whose files were edited by hand, another tool or an attacker:
one line and exit 1, or a page that leaves the bad records out (and says so), never a
traceback, and never markup from the folder in the page."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from acp.cli import app

runner = CliRunner()
INJECTED = ('<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "</table><b>bold</b>")
FILES = ("settings.json", "summary.json", "progress.jsonl", "scores.jsonl", "plans.jsonl",
         "annotations.json", "candidates/manifest.jsonl")
# Values JSON can hold only as text: a number past Python's 4300 digits, nesting past the
# recursion limit, the constants Python's parser accepts.
RAW = {"@huge-int@": "9" * 5000, "@deep@": "[" * 100_000 + "]" * 100_000, "@nan@": "NaN",
       "@inf@": "-Infinity"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "b", "iframe", "object"):
            self.bad.append(tag)
        for key, value in attrs:
            if key.startswith("on") or (key in ("src", "href") and value and
                                        not value.startswith(("data:image/jpeg;base64,", "#"))):
                self.bad.append(f"{tag} {key}={value}")


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _write(path: Path, value: Any) -> None:
    if path.suffix == ".jsonl":  # a list is the file's lines; anything else, its one line
        text = "".join(json.dumps(v) + "\n" for v in (value if isinstance(value, list) else [value]))
    else:
        text = json.dumps(value, indent=1)
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    path.write_text(text, encoding="utf-8")


def _set(value: Any, path: list[Any], new: Any) -> Any:
    """``value`` with the item at ``path`` replaced by ``new`` (a path of keys and indices)."""
    if not path:
        return new
    head, *rest = path
    if isinstance(value, dict):
        return {**value, head: _set(value.get(head), rest, new)}
    copy = list(value)
    copy[head] = _set(copy[head], rest, new)
    return copy


def _check_outcome(folder: Path, page: Path) -> None:
    result = runner.invoke(app, ["report", str(folder), "-o", str(page)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    lines = result.output.splitlines()
    if result.exit_code == 1:
        assert len(lines) == 1 and lines[0].startswith("acp: error: "), result.output
        return
    assert len(lines) == 1, result.output
    tags = _Tags()
    tags.feed(page.read_text(encoding="utf-8"))
    assert tags.bad == []
    page.unlink()


@pytest.fixture()
def folder(tiny_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, copy)
    return copy


def _first_dropped_score(folder: Path) -> int:
    dropped = {r["plan_id"] for r in _read(folder / "progress.jsonl") if r["status"] == "dropped"}
    return next(k for k, r in enumerate(_read(folder / "scores.jsonl")) if r["plan_id"] in dropped)


# Each of these was a traceback: (file, path to the value, new value).
CASES = [
    ("settings.json", ["min_clis_i"], "sixty"),
    ("settings.json", ["min_clis_l"], [1, 2]),
    ("settings.json", ["bank"], {"a": 1}),
    ("settings.json", [], ["not", "an", "object"]),
    ("summary.json", ["instances_kept_by_category"], ["dog"]),
    ("summary.json", ["instances_kept_by_category", "dog"], "5"),
    ("summary.json", ["drop_reasons"], {"x": None}),
    ("summary.json", ["last_run"], 7),
    ("summary.json", ["images_kept"], 10 ** 400),
    ("scores.jsonl", ["@dropped", "clis"], 1e308),
    ("scores.jsonl", ["@dropped", "clis"], "@nan@"),
    ("scores.jsonl", ["@dropped", "path"], "../../../etc/passwd"),
    ("scores.jsonl", [0, "objects"], [1, 2]),
    ("progress.jsonl", [0, "plan_id"], ["000000"]),
    ("progress.jsonl", [0, "status"], {"kept": 1}),
    ("annotations.json", ["annotations", 0, "bbox"], [1e300, -1e300, 1e300, 1e300]),
    ("annotations.json", ["annotations", 0, "bbox"], [0, 0, "@inf@", 5]),
    ("annotations.json", ["annotations", 0, "image_id"], [1]),
    ("annotations.json", ["annotations", 0, "category_id"], {"id": 1}),
    ("annotations.json", ["annotations", 0, "segmentation"], {"size": [200000, 200000], "counts": "0"}),
    ("annotations.json", ["annotations", 0, "segmentation"], {"size": [64, 64], "counts": [10 ** 15]}),
    ("annotations.json", ["images", 0, "id"], [1, 2]),
    ("annotations.json", ["images", 0, "acp"], "<script>alert(1)</script>"),
    ("annotations.json", ["images", 0, "acp", "clis"], 1e308),
    ("annotations.json", ["images", 0, "file_name"], "x" * 5000 + ".jpg"),
    ("annotations.json", ["categories", 0, "id"], "@huge-int@"),
    ("annotations.json", ["categories", 0, "name"], INJECTED[0]),
    ("annotations.json", ["images"], "@deep@"),
    ("plans.jsonl", [0, "objects", 0, "bbox"], [1e300, 0, 1, 1]),
    ("candidates/manifest.jsonl", [0, "path"], "/etc/passwd"),
]


@pytest.mark.parametrize(("file", "where", "value"), CASES, ids=[f"{f}:{w}" for f, w, _ in CASES])
def test_a_hostile_value_is_one_line_or_a_page_without_it(folder: Path, tmp_path: Path, file: str,
                                                         where: list[Any], value: Any) -> None:
    path = folder / file
    where = [_first_dropped_score(folder) if w == "@dropped" else w for w in where]
    _write(path, _set(_read(path), where, value))
    _check_outcome(folder, tmp_path / "page.html")


def test_a_record_left_out_is_named_on_the_page(folder: Path, tmp_path: Path) -> None:
    records = _read(folder / "progress.jsonl")
    records[1]["status"] = "kept-ish"
    _write(folder / "progress.jsonl", records)
    with open(folder / "scores.jsonl", "a") as handle:
        handle.write("{not json\n" + json.dumps({"plan_id": "x"}) + "\n")
    result = runner.invoke(app, ["report", str(folder), "-o", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page.html").read_text()
    assert "Records left out as unreadable (progress.jsonl: 1, scores.jsonl: 2)" in page
    assert "progress.jsonl line 2: status:" in page


def test_a_bad_settings_file_names_the_file_and_the_field(folder: Path) -> None:
    settings_file = folder / "settings.json"
    _write(settings_file, {**_read(settings_file), "min_clis_i": "sixty"})
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 1
    assert result.output.strip() == f"acp: error: {settings_file}: min_clis_i: Input should be a valid number"


def test_a_fifo_or_a_huge_line_does_not_block_or_fill_memory(folder: Path, tmp_path: Path) -> None:
    import os

    (folder / "images" / "000001.jpg").unlink()
    os.mkfifo(folder / "images" / "000001.jpg")  # opening it for reading would wait forever
    with open(folder / "scores.jsonl", "ab") as handle:
        handle.write(b'{"plan_id": "' + b"x" * (3 << 20) + b'"}\n')
    result = runner.invoke(app, ["report", str(folder), "-o", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page.html").read_text()
    assert "000001.jpg: not a regular file" in page
    assert "scores.jsonl line" in page and "longer than 1 MiB" in page


_scalars = st.one_of(
    st.sampled_from([1e308, -1e300, 1e300, 0, -1, 2 ** 63, "", "@huge-int@", "@nan@", "@inf@", "@deep@",
                     True, None, [], {}, [[[[]]]], *INJECTED]),
    st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.text(max_size=8),
    st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def _mutation(draw: st.DrawFn, folder: Path) -> tuple[str, list[Any], Any]:
    file = draw(st.sampled_from(FILES))
    value = _read(folder / file)
    where: list[Any] = []
    while isinstance(value, dict | list) and value and draw(st.integers(0, 4)):  # usually descend
        key = draw(st.sampled_from(sorted(value) if isinstance(value, dict) else range(len(value))))
        where.append(key)
        value = value[key]
    return file, where, draw(_scalars)


def test_any_mutated_value_is_one_line_or_an_escaped_page(tiny_dataset: Path, tmp_path: Path) -> None:
    """A property over every file acp reads: replace any value, at any depth, of any file with a
    hostile one; the report is an escaped page (exit 0) or one line (exit 1)."""
    folder = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, folder)
    originals = {file: (folder / file).read_bytes() for file in FILES}

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_mutation(folder))
    def check(mutation: tuple[str, list[Any], Any]) -> None:
        file, where, value = mutation
        try:
            _write(folder / file, _set(_read(folder / file), where, value))
            _check_outcome(folder, tmp_path / "page.html")
        finally:
            (folder / file).write_bytes(originals[file])

    check()


def _rows(path: Path) -> list[Any]:
    return json.loads(path.read_text())


def _write_rows(path: Path, rows: list[Any]) -> None:
    """As `acp score dataset` writes them: one element a line."""
    text = "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n"
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    path.write_text(text)


SCORE_CASES = [
    ("images.json", [0, "id"], [1]),
    ("images.json", [0, "clis"], 1e308),
    ("images.json", [0, "file_name"], "../../etc/passwd"),
    ("images.json", [0, "caption"], INJECTED[0]),
    ("images.json", [0], "@deep@"),
    ("boxes.json", [0, "bbox"], [1e300, -1e300, 1e300, 1e300]),
    ("boxes.json", [0, "category"], {"name": "x"}),
    ("boxes.json", [0, "image_id"], "@huge-int@"),
    ("categories.json", [0, "boxes"], "many"),
    ("categories.json", [], {"not": "a list"}),
    ("failures.json", [], [7, INJECTED[1]]),
    ("summary.json", ["images_dir"], ["/"]),
    ("summary.json", ["keep_above"], "@nan@"),
    ("summary.json", ["scored_images"], -1),
]


@pytest.mark.parametrize(("file", "where", "value"), SCORE_CASES, ids=[f"{f}:{w}" for f, w, _ in SCORE_CASES])
def test_a_hostile_score_report_is_one_line_or_a_page_without_it(tmp_path: Path, file: str, where: list[Any],
                                                                 value: Any) -> None:
    from tests.test_report import _score_folder

    folder = _score_folder(tmp_path, n=12)
    path = folder / file
    new = _set(_rows(path), where, value)
    if file in ("images.json", "boxes.json", "failures.json") and isinstance(new, list):
        _write_rows(path, new)
    else:
        _write(path, new)
    _check_outcome(folder, tmp_path / "page.html")
