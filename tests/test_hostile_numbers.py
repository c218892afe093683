"""Numbers and ids read from COCO files are checked before use: NaN, infinities, 1e308 and
integers of thousands of digits are a skipped or listed item (or one line), never a traceback,
and never written back as NaN or Infinity, which no JSON reader takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)
from tests.test_hostile_input import assert_one_line_error, invoke

HUGE = "9" * 4000  # within Python's 4,300 digits: it parses, then overflows a float or an int64
MARK = "__NUMBER__"


def strict_json(path: Path):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def with_number(data: dict, place: tuple, number: str) -> str:
    """``data`` as JSON text with the value at ``place`` (keys and indices) written as
    ``number``, any JSON-like text (``NaN``, ``1e308``, 4,000 digits)."""
    data = json.loads(json.dumps(data))
    target = data
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = MARK
    return json.dumps(data).replace(f'"{MARK}"', number)


def coco() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30], "area": 900},
                        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900}],
        "categories": [{"id": 1, "name": "dog"}],
    }


@pytest.mark.parametrize(("place", "number", "skipped"), [
    (("images", 0, "width"), HUGE, "image_without_size 2"),
    (("images", 0, "height"), "1e308", "image_without_size 2"),
    (("annotations", 0, "bbox", 0), HUGE, "malformed 1"),
])
def test_bank_build_skips_unusable_sizes_and_boxes(tmp_path: Path, place: tuple, number: str,
                                                   skipped: str) -> None:
    """An image width of 4,000 digits or a bbox value of as many was an OverflowError; a
    height of 1e308 made boxes 0 high in float32, and an aspect of Infinity in index.json."""
    path = tmp_path / "coco.json"
    path.write_text(with_number(coco(), place, number))
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    assert result.exit_code == 0, result.output
    assert skipped in result.stdout
    strict_json(tmp_path / "bank" / "index.json")


def test_bank_build_refuses_a_non_finite_id_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    path.write_text(with_number(coco(), ("images", 0, "id"), "NaN"))
    result = invoke("bank", "build", path, "-o", tmp_path / "bank")
    assert_one_line_error(result, "images[0] has id nan; expected a number or a string")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / name)
    return folder


def score(tmp_path: Path, images: Path, clip: Path, text: str, *args: str):
    annotations = tmp_path / "instances.json"
    annotations.write_text(text)
    return invoke("score", "dataset", annotations, "--images", images, "-o", tmp_path / "scored",
                  "--clip-model", clip, "--no-progress", *args)


@pytest.mark.parametrize(("place", "number", "failed"), [
    (("images", 0, "id"), "NaN", ["images[0]", "annotation 1", "annotation 3"]),  # and its boxes
    (("images", 0, "id"), "-Infinity", ["images[0]", "annotation 1", "annotation 3"]),
    (("annotations", 0, "bbox", 0), HUGE, ["annotation 1"]),
])
def test_score_dataset_lists_unusable_numbers_and_writes_strict_json(
        tmp_path: Path, images: Path, tiny_clip_dir: Path, place: tuple, number: str, failed: list) -> None:
    """A NaN image id was written into images.json as NaN; a bbox value of 4,000 digits was an
    OverflowError traceback."""
    result = score(tmp_path, images, tiny_clip_dir, with_number(coco(), place, number))
    assert result.exit_code == 1, result.output  # a failed item: exit 1, after the report
    out = tmp_path / "scored"
    failures = strict_json(out / "failures.json")
    assert [f["item"] for f in failures] == failed, failures
    assert all(len(f["reason"]) < 300 for f in failures)
    for name in ("images.json", "boxes.json", "summary.json", "categories.json"):
        strict_json(out / name)


def test_score_dataset_writes_no_nan_annotation_id(tmp_path: Path, images: Path, tiny_clip_dir: Path) -> None:
    result = score(tmp_path, images, tiny_clip_dir, with_number(coco(), ("annotations", 1, "id"), "NaN"))
    assert result.exit_code == 0, result.output
    boxes = strict_json(tmp_path / "scored" / "boxes.json")
    assert sorted(str(b["id"]) for b in boxes) == ["1", "3", "None"]


def test_score_dataset_filtered_copy_never_repeats_nan(tmp_path: Path, images: Path,
                                                       tiny_clip_dir: Path) -> None:
    """The filtered copy repeats the input's records: one holding NaN made an invalid JSON file.
    Now it is one line, and nothing of the report is left half-written."""
    text = with_number(coco(), ("annotations", 0, "area"), "NaN")
    result = score(tmp_path, images, tiny_clip_dir, text, "--keep-above", "0")
    assert_one_line_error(result, "annotations[0] of the input holds NaN or infinity")
    assert not [p for p in (tmp_path / "scored").rglob("*") if not p.is_dir()]
