"""``acp score dataset``: every image and box of a COCO set, failures reported item by item."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.errors import InputError
from acp.score.dataset import REPORT_FILES, build_caption, score_dataset
from acp.score.image import ImageScorer
from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)

runner = CliRunner()


@dataclass
class Written:
    """A report folder read back."""

    images: list[dict[str, Any]]
    boxes: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    summary: dict[str, Any]


def read_report(folder: Path) -> Written:
    return Written(*(json.loads((folder / f"{name}.json").read_text())
                     for name in ("images", "boxes", "failures", "categories", "summary")))


def scored(annotations: Path, images: Path, out: Path, **options: Any) -> Written:
    """``score_dataset`` into ``out``, its files read back (and checked against what it returned)."""
    report = score_dataset(annotations, images, out, **options)
    written = read_report(out)
    assert report.summary == written.summary and report.categories == written.categories
    assert report.failed == len(written.failures)
    return written


def write_dataset(root: Path) -> tuple[Path, Path]:
    """Five images: good (acp caption), good (no caption), missing file, undecodable, wrong size."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "e.png"):
        size = (40, 30) if name == "e.png" else (64, 48)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
    (images / "d.png").write_bytes(b"garbage")
    coco: dict[str, Any] = {
        "images": [
            {
                "id": 1,
                "file_name": "a.png",
                "width": 64,
                "height": 48,
                "acp": {"caption": "two pets on a sofa"},
            },
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 3, "file_name": "c.png", "width": 64, "height": 48},
            {"id": 4, "file_name": "d.png", "width": 64, "height": 48},
            {"id": 5, "file_name": "e.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 20, 20],
                "acp": {"object_id": 0, "description": "a grey cat"},
            },
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [30, 10, 30, 30]},
            {"id": 20, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 30]},
            {"id": 21, "image_id": 2, "category_id": 2, "bbox": [40, 30, 40, 30]},  # leaves the image
            {"id": 22, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10]},  # unknown category
            {"id": 23, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10]},  # zero width
            {"id": 24, "image_id": 2, "category_id": 1, "bbox": [30, 5, 20, 20]},
            {"id": 30, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 40, "image_id": 99, "category_id": 1, "bbox": [5, 5, 10, 10]},  # unknown image
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir: Path) -> ImageScorer:
    return ImageScorer.from_pretrained(tiny_clip_dir, device="cpu")


def test_every_failure_is_reported_with_its_reason_and_the_rest_scored(
    tmp_path: Path, scorer: ImageScorer
) -> None:
    annotations, images = write_dataset(tmp_path)
    report = scored(annotations, images, tmp_path / "report", image_scorer=scorer, batch_size=1)
    reasons = {f["item"]: f["reason"] for f in report.failures}
    assert set(reasons) == {
        "annotation 40",
        "annotation 22",
        "annotation 21",
        "annotation 23",
        "image 3",
        "image 4",
        "image 5",
    }
    assert "unknown image id 99" in reasons["annotation 40"]
    assert "unknown category id 7" in reasons["annotation 22"]
    assert "leaves the 64x48 image" in reasons["annotation 21"]
    assert "degenerate" in reasons["annotation 23"]
    assert "not found" in reasons["image 3"]
    assert "cannot decode" in reasons["image 4"]
    assert "is 40x30 but the record says 64x48" in reasons["image 5"]
    assert [b["id"] for b in report.boxes] == [10, 11, 20, 24]
    assert [i["id"] for i in report.images] == [1, 2]
    assert report.images[0]["caption"] == "two pets on a sofa"
    assert report.images[1]["caption"] == "a photo of a dog and a cat"
    s = report.summary
    assert (s["images"], s["scored_images"], s["failed_images"]) == (5, 2, 3)
    assert (s["boxes"], s["scored_boxes"], s["failed_boxes"], s["boxes_of_failed_images"]) == (9, 4, 4, 1)
    by_name = {row["category"]: row for row in report.categories}
    assert by_name["dog"]["boxes"] == 2 and by_name["cat"]["boxes"] == 2
    dogs = [b["clis_i"] for b in report.boxes if b["category"] == "dog"]
    assert by_name["dog"]["mean"] == pytest.approx(np.mean(dogs), abs=1e-3)


def test_provenance_description_is_what_the_crop_is_compared_with(
    tmp_path: Path, scorer: ImageScorer
) -> None:
    annotations, images = write_dataset(tmp_path)
    report = scored(annotations, images, tmp_path / "report", image_scorer=scorer)
    image = Image.open(images / "a.png").convert("RGB")
    from acp.score.image import Scene, SceneObject

    scene = Scene(
        "two pets on a sofa",
        (
            SceneObject(0, "cat", "a grey cat", (2 / 64, 2 / 48, 20 / 64, 20 / 48)),
            SceneObject(1, "dog", "a dog", (30 / 64, 10 / 48, 30 / 64, 30 / 48)),
        ),
    )
    (expected,) = scorer.score_scenes([(scene, image)])
    assert report.images[0]["clis_i"] == pytest.approx(expected.clis_i, abs=1e-2)
    assert report.boxes[0]["clis_i"] == pytest.approx(expected.objects[0].clis_i, abs=1e-2)


@pytest.mark.parametrize(
    ("names", "caption"),
    [
        (["dog"], "a photo of a dog"),
        (["dog", "cat", "dog"], "a photo of two dogs and a cat"),
        ([], "a photo"),
        (["apple", "orange", "umbrella"], "a photo of an apple, an orange and an umbrella"),
        (["fire hydrant", "fire hydrant"], "a photo of two fire hydrants"),
        (["frisbees"], "a photo of a frisbee"),
        (["person"] * 12 + ["skis"], "a photo of 12 people and a pair of skis"),
    ],
)
def test_captions_are_built_from_category_names(names: list[str], caption: str) -> None:
    assert build_caption(names) == caption


def test_cli_writes_the_report_filters_and_exits_non_zero(tmp_path: Path, tiny_clip_dir: Path) -> None:
    annotations, images = write_dataset(tmp_path)
    out = tmp_path / "report"
    args = [
        "score",
        "dataset",
        str(annotations),
        "--images",
        str(images),
        "-o",
        str(out),
        "--clip-model",
        str(tiny_clip_dir),
        "--no-progress",
    ]
    result = runner.invoke(app, [*args, "--keep-above", "0"])
    assert result.exit_code == 1  # some items failed
    assert "annotation 22: unknown category id 7" in result.output
    # Image 2 has boxes that could not be scored: its objects would be unlabelled, so it goes.
    assert "2 of 5 images and 4 of 9 boxes scored, 7 failed, kept 1 images and 2 boxes" in result.output
    for name in (
        "images.json",
        "boxes.json",
        "categories.json",
        "failures.json",
        "summary.json",
        "filtered/annotations.json",
        "report.html",
    ):
        assert (out / name).is_file(), name
    filtered = json.loads((out / "filtered" / "annotations.json").read_text())
    assert [i["id"] for i in filtered["images"]] == [1]
    assert [a["id"] for a in filtered["annotations"]] == [10, 11]
    assert filtered["categories"] == json.loads(annotations.read_text())["categories"]
    for image in filtered["images"]:  # the copy is a dataset folder: its file names resolve from it
        assert (out / "filtered" / "images" / image["file_name"]).is_file()

    result = runner.invoke(app, [*args, "--keep-above", "100"])  # nothing scores a full 100
    filtered = json.loads((out / "filtered" / "annotations.json").read_text())
    assert filtered["images"] == [] and filtered["annotations"] == []


def test_cli_rejects_a_missing_images_folder_and_a_non_coco_file(tmp_path: Path, tiny_clip_dir: Path) -> None:
    annotations, _ = write_dataset(tmp_path)
    result = runner.invoke(
        app,
        [
            "score",
            "dataset",
            str(annotations),
            "--images",
            str(tmp_path / "nope"),
            "-o",
            str(tmp_path / "r"),
            "--clip-model",
            str(tiny_clip_dir),
        ],
    )
    assert result.exit_code == 1 and "--images" in result.stderr and "not a folder" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    result = runner.invoke(
        app,
        [
            "score",
            "dataset",
            str(bad),
            "--images",
            str(tmp_path),
            "-o",
            str(tmp_path / "r"),
            "--clip-model",
            str(tiny_clip_dir),
        ],
    )
    assert result.exit_code == 1 and str(bad) in result.stderr and "COCO-format" in result.stderr


def test_records_without_ids_or_keys_are_failures_and_the_run_goes_on(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    annotations, images = write_dataset(tmp_path)
    coco = json.loads(annotations.read_text())
    coco["images"] += [
        {"file_name": "a.png", "width": 64, "height": 48},  # no id
        "not an image",
        {"id": [6], "file_name": "a.png", "width": 64, "height": 48},  # unusable id
        {"id": 1, "file_name": "b.png", "width": 64, "height": 48},  # repeats image 1
        {"id": 8, "width": 64, "height": 48},  # no file_name
    ]
    coco["annotations"] += [
        {"id": 50, "category_id": 1, "bbox": [5, 5, 10, 10]},  # no image_id
        {"id": 51, "image_id": 1, "bbox": [5, 5, 10, 10]},  # no category_id
        {"id": 52, "image_id": 1, "category_id": 1},  # no bbox
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},  # no id: scored
        {"image_id": 1, "category_id": 2},  # no id, no bbox
        {"id": 53, "image_id": [1], "category_id": 1, "bbox": [5, 5, 10, 10]},
        7,
    ]
    annotations.write_text(json.dumps(coco))
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["score", "dataset", str(annotations), "--images", str(images), "-o", str(out),
         "--clip-model", str(tiny_clip_dir), "--no-progress", "--keep-above", "0"],
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    failures = json.loads((out / "failures.json").read_text())
    reasons = {f["item"]: f["reason"] for f in failures}
    assert reasons["images[5]"] == "no 'id'"
    assert reasons["images[6]"].startswith("not a JSON object")
    assert reasons["images[7]"].startswith("id must be a number or a string")
    assert reasons["image 1"] == "images[8] repeats the id of images[0]"
    assert reasons["image 8"] == "no 'file_name'"
    assert reasons["annotation 50"] == "no 'image_id'"
    assert reasons["annotation 51"] == "no 'category_id'"
    assert reasons["annotation 52"] == "no 'bbox'"
    assert reasons["annotations[13]"] == "no 'bbox'"
    assert reasons["annotation 53"].startswith("image_id must be a number or a string")
    assert reasons["annotations[15]"].startswith("not a JSON object")
    assert f"{annotations}: annotation 52: no 'bbox'" in result.output
    report = json.loads((out / "images.json").read_text())
    assert [i["id"] for i in report] == [1, 2]  # the rest is still scored
    assert report[0]["boxes"] == 3  # the annotation without an id counts with its image
    boxes = json.loads((out / "boxes.json").read_text())
    assert [b["id"] for b in boxes] == [10, 11, None, 20, 24]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["scored_images"], summary["failed_images"]) == (10, 2, 8)
    assert (summary["boxes"], summary["scored_boxes"], summary["failed_boxes"]) == (16, 5, 10)
    assert summary["boxes_of_failed_images"] == 1
    filtered = json.loads((out / "filtered" / "annotations.json").read_text())
    assert filtered["images"] == []  # both scored images hold a box that could not be scored


def test_with_a_bank_a_reference_free_image_has_no_clis_l(tmp_path: Path, scorer: ImageScorer) -> None:
    from acp.score.bank import Bank
    from acp.score.layout import LayoutScorer
    from tests.test_bank import write_coco

    annotations, images = write_dataset(tmp_path)
    bank = Bank.from_coco([write_coco(tmp_path / "bank.json", [[("cat", [0.1, 0.1, 0.3, 0.4])]])])
    coco = json.loads(annotations.read_text())
    coco["categories"][1]["name"] = "zebra"  # image 1: a cat and a zebra (at the bank's top level)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2 or a["category_id"] == 2]
    annotations.write_text(json.dumps(coco))  # image 2: zebras only, unknown to the bank: sanity
    report = scored(annotations, images, tmp_path / "report", image_scorer=scorer,
                    layout_scorer=LayoutScorer(bank))
    first, second = report.images
    assert first["clis_l_method"] == "density" and first["clis_l"] is not None
    assert first["clis_l_sanity"] is None
    assert second["clis_l_method"] == "sanity" and second["clis_l"] is None
    assert second["clis_l_sanity"] is not None and second["clis"] == second["clis_i"]


# -- checks before any model is loaded: a missing CLIP folder shows which error came first ------


def _score(annotations: Path, images: Path, out: Path, clip: Path) -> Any:
    return runner.invoke(
        app,
        ["score", "dataset", str(annotations), "--images", str(images), "-o", str(out),
         "--clip-model", str(clip), "--no-progress"],
    )


def test_an_output_that_cannot_take_a_report_fails_before_scoring(tmp_path: Path) -> None:
    annotations, images = write_dataset(tmp_path)
    no_clip = tmp_path / "no-clip"
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "categories.json").write_text("[]")  # e.g. a category file, not a report
    for out, said in [
        (tmp_path / "a-file", "exists and is not a folder"),
        (tmp_path / "a-file" / "report", f"{tmp_path / 'a-file'} is not a folder"),
        (tmp_path / "theirs", f"{tmp_path / 'theirs'}: a folder that acp score dataset did not write "
                              "(no acp-owned.json"),
    ]:
        result = _score(annotations, images, out, no_clip)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"acp: error: -o {said}" if said.startswith(str(out))
                                        else f"acp: error: -o {out}: {said}"), result.stderr
        assert result.stderr.count("\n") == 1
    assert (tmp_path / "theirs" / "categories.json").read_text() == "[]"


def test_a_previous_report_is_replaced(tmp_path: Path, tiny_clip_dir: Path) -> None:
    annotations, images = write_dataset(tmp_path)
    out = tmp_path / "report"
    assert _score(annotations, images, out, tiny_clip_dir).exit_code == 1  # some items fail
    result = _score(annotations, images, out, tiny_clip_dir)
    assert result.exit_code == 1 and "2 of 5 images" in result.stdout, result.output
    assert {p.name for p in out.iterdir()} <= {*REPORT_FILES, "report.html", "acp-owned.json"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_replaces_what_the_report_wrote_and_nothing_else(tmp_path: Path) -> None:
    """The files of an earlier report are replaced, a filtered/ it no longer writes goes (it
    described an earlier filter), the user's files stay; a summary.json shaped like a report's
    proves nothing."""
    annotations, images = write_many(tmp_path, 3, boxes=2)
    out = tmp_path / "report"
    scored(annotations, images, out, image_scorer=FixedScorer(), keep_above=0)
    assert (out / "filtered" / "annotations.json").is_file()
    (out / "notes.txt").write_text("keep me")
    scored(annotations, images, out, image_scorer=FixedScorer())
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "filtered").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "summary.json").write_text(json.dumps({"scored_images": 1, "clip_model": "mine"}))
    (theirs / "images.json").write_text("my images")
    before = _files(theirs)
    with pytest.raises(InputError, match="did not write"):
        score_dataset(annotations, images, theirs, image_scorer=FixedScorer())
    assert _files(theirs) == before


def test_a_report_killed_while_it_replaces_another_leaves_one_whole_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at each rename in turn: summary.json, when present, sits with the files of its
    own run; the rerun gives the new report."""
    annotations, images = write_many(tmp_path, 3, boxes=2)
    expected = tmp_path / "expected"
    scored(annotations, images, expected, image_scorer=FixedScorer(), keep_above=0)
    new = {k: v for k, v in _files(expected).items() if k != "acp-owned.json"}
    real_replace = os.replace
    finished, crash_at = False, 0
    while not finished:
        crash_at += 1
        out = tmp_path / f"report{crash_at}"
        scored(annotations, images, out, image_scorer=FixedScorer(box_score=lambda o: 10.0), keep_above=50)
        old = {k: v for k, v in _files(out).items() if k != "acp-owned.json"}
        calls = 0

        def crashing(source: Any, target: Any, crash_at: int = crash_at) -> None:
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise KeyboardInterrupt  # stands for the kill
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", crashing)
        try:
            score_dataset(annotations, images, out, image_scorer=FixedScorer(), keep_above=0)
            finished = True
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(os, "replace", real_replace)
        left = {k: v for k, v in _files(out).items() if k != "acp-owned.json"}
        if "summary.json" in left:
            assert left in (old, new), crash_at
        scored(annotations, images, out, image_scorer=FixedScorer(), keep_above=0)
        assert {k: v for k, v in _files(out).items() if k != "acp-owned.json"} == new
    assert crash_at > 5


def test_a_wrong_images_folder_fails_before_any_model_load(tmp_path: Path) -> None:
    annotations, _ = write_dataset(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _score(annotations, elsewhere, tmp_path / "report", tmp_path / "no-clip")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(
        f"acp: error: --images {elsewhere}: none of the first 5 images of {annotations} is there "
        f"(no {elsewhere / 'a.png'})"
    )
    assert not (tmp_path / "report").exists()


# -- costs: memory that does not grow with the results, layout pairs that do not grow with crowds --


class FixedScorer:
    """A stand-in for ``ImageScorer`` (no CLIP): each box scores what ``box_score`` says."""

    name = "fixed"
    device = "cpu"  # where a verified run puts the images it shares with the detector

    def __init__(self, box_score: Any = None):
        self.box_score = box_score or (lambda obj: 70.0)

    def score_scenes(self, items: list[tuple[Any, Any]]) -> list[Any]:
        from acp.score.image import ImageScore, InstanceScore

        results = []
        for scene, _ in items:
            objects = [InstanceScore(o.id, o.category, self.box_score(o), 50.0, 1.0, 0.3)
                       for o in scene.objects]
            local = float(np.mean([o.clis_i for o in objects])) if objects else None
            clis_i = 70.0 if local is None else (70.0 + local) / 2
            results.append(ImageScore(clis_i, 70.0, local, 0.3, objects))
        return results


def write_many(root: Path, n: int, boxes: int = 3) -> tuple[Path, Path]:
    """``n`` images (all one small file) with ``boxes`` boxes each, spread over three categories."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(images / "a.png")
    coco = {
        "info": {"description": "many"},
        "images": [{"id": i + 1, "file_name": "a.png", "width": 16, "height": 16} for i in range(n)],
        "annotations": [
            {"id": boxes * i + j + 1, "image_id": i + 1, "category_id": 1 + j % 3,
             "bbox": [0.5 * j % 8, 2.0, 1.0 + j % 7, 6.5], "area": 35.75, "iscrowd": 0}
            for i in range(n) for j in range(boxes)
        ],
        "categories": [{"id": j + 1, "name": name} for j, name in enumerate(["cat", "dog", "cow"])],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_memory_of_a_run_does_not_grow_with_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own peak (the parsed input aside) grows far less than the input between two
    sizes: no list of every image or box row, no filtered copy built whole."""
    import tracemalloc

    from acp.coco import read_coco_file
    from acp.score import dataset

    def run_peak(n: int) -> tuple[int, int]:
        annotations, images = write_many(tmp_path / str(n), n)
        tracemalloc.start()
        try:
            data = read_coco_file(annotations)
            held = tracemalloc.get_traced_memory()[0]
            monkeypatch.setattr(dataset, "read_coco_file", lambda path: data)
            tracemalloc.reset_peak()
            score_dataset(annotations, images, tmp_path / f"report-{n}", image_scorer=FixedScorer(),
                          keep_above=50, batch_size=8)
            return held, tracemalloc.get_traced_memory()[1] - held
        finally:
            tracemalloc.stop()

    run_peak(20)  # imports and caches of a first run are not the run's cost
    small_input, small_peak = run_peak(300)
    large_input, large_peak = run_peak(1200)
    assert json.loads((tmp_path / "report-1200" / "summary.json").read_text())["kept_boxes"] == 3600
    # Measured: the run grows by under 0.1 of the input's growth (old code, holding every row: 2.8).
    assert large_peak - small_peak < 0.25 * (large_input - small_input), (small_peak, large_peak)


def test_category_quantiles_are_within_0_05_of_the_exact_ones(tmp_path: Path) -> None:
    annotations, images = write_many(tmp_path, 200, boxes=5)
    rng = np.random.default_rng(3)
    values = iter([0.0, 100.0, *rng.uniform(0, 100, 998).tolist()])  # the ends of the scale too
    scorer = FixedScorer(lambda o: next(values))
    report = scored(annotations, images, tmp_path / "report", image_scorer=scorer)
    for row in report.categories:
        scores = np.array([b["clis_i"] for b in report.boxes if b["category"] == row["category"]])
        assert row["boxes"] == scores.size
        assert row["mean"] == pytest.approx(scores.mean(), abs=1e-3)
        assert row["median"] == pytest.approx(np.median(scores), abs=0.05)
        assert row["p10"] == pytest.approx(np.percentile(scores, 10), abs=0.05)
        assert row["below_60"] == pytest.approx((scores < 60).mean(), abs=1e-4)


def test_filtered_copy_keeps_the_input_keys_and_only_the_kept_rows(tmp_path: Path) -> None:
    """Images 1-3 hold a cat (90) and a dog (10), images 4-6 two cats. By default an image that
    loses a box leaves the copy (its dog would be unlabelled background); with "ignore" it stays,
    the dog an ignore region. A crowd box is not scored and goes with its image."""
    annotations, images = write_many(tmp_path, 6, boxes=2)
    coco = json.loads(annotations.read_text())
    for a in coco["annotations"]:
        a["category_id"] = 2 if a["image_id"] <= 3 and a["id"] % 2 == 0 else 1
    coco["annotations"].append({"id": 100, "image_id": 4, "category_id": 2, "bbox": [0, 0, 4, 4],
                                "area": 16, "iscrowd": 1})
    annotations.write_text(json.dumps(coco))
    cat_only = FixedScorer(lambda o: 90.0 if o.category == "cat" else 10.0)

    report = scored(annotations, images, tmp_path / "report", image_scorer=cat_only, keep_above=50)
    filtered = json.loads((tmp_path / "report" / "filtered" / "annotations.json").read_text())
    assert list(filtered) == list(coco) and filtered["info"] == coco["info"]
    assert [i["id"] for i in filtered["images"]] == [4, 5, 6]
    assert filtered["annotations"] == [a for a in coco["annotations"] if a["image_id"] >= 4]
    assert (report.summary["kept_images"], report.summary["kept_boxes"]) == (3, 7)
    assert report.summary["crowd_boxes"] == 1 and report.summary["scored_boxes"] == 12

    report = scored(annotations, images, tmp_path / "report", image_scorer=cat_only, keep_above=50,
                    removed_boxes="ignore")
    filtered = json.loads((tmp_path / "report" / "filtered" / "annotations.json").read_text())
    assert filtered["images"] == coco["images"]
    assert filtered["annotations"] == [{**a, "iscrowd": 1} if a["category_id"] == 2 and a["id"] != 100 else a
                                       for a in coco["annotations"]]
    assert report.summary["ignored_boxes"] == 3


def test_filtered_copy_renumbers_missing_and_repeated_annotation_ids(tmp_path: Path) -> None:
    annotations, images = write_many(tmp_path, 3, boxes=2)
    coco = json.loads(annotations.read_text())
    coco["annotations"][1]["id"] = coco["annotations"][0]["id"]  # a repeated id
    del coco["annotations"][2]["id"]
    annotations.write_text(json.dumps(coco))
    report = scored(annotations, images, tmp_path / "report", image_scorer=FixedScorer(), keep_above=0)
    filtered = json.loads((tmp_path / "report" / "filtered" / "annotations.json").read_text())
    ids = [a["id"] for a in filtered["annotations"]]
    assert len(set(ids)) == len(ids) == 6 and ids[0] == 1 and ids[3:] == [4, 5, 6]
    assert sorted(ids[1:3]) == [7, 8]  # after the largest id
    assert report.summary["renumbered_annotations"] == 2


def test_layout_score_of_a_crowded_image_takes_its_20_largest_boxes(tmp_path: Path) -> None:
    from acp.score.bank import MAX_OBJECTS_PER_IMAGE
    from acp.score.layout import LayoutScorer

    seen: list[list[Any]] = []

    class Recording(LayoutScorer):
        def score_layouts(self, layouts: Any) -> Any:
            seen.extend([tuple(b) for b in boxes] for _, boxes, _, _ in layouts)
            return super().score_layouts(layouts)

    annotations, images = write_many(tmp_path, 1, boxes=30)
    report = scored(annotations, images, tmp_path / "report", image_scorer=FixedScorer(),
                    layout_scorer=Recording(None))
    assert report.images[0]["boxes"] == 30 and len(report.boxes) == 30
    (used,) = seen
    assert len(used) == MAX_OBJECTS_PER_IMAGE == 20
    coco = json.loads(annotations.read_text())
    areas = sorted((a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]), reverse=True)
    assert sorted((w * h * 256 for _, _, w, h in used), reverse=True) == pytest.approx(areas[:20])


def test_the_steps_before_the_bar_are_said_on_a_terminal(tmp_path: Path, tiny_clip_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading CLIP and parsing a large COCO file come before the bar: a line each while a
    person watches stderr, none with --no-progress; a log keeps the model's load line (which
    model, from where, how long: acp.pretrained.loading) but no other step's."""
    import acp.cli._common

    annotations, images = write_dataset(tmp_path)
    args = ["score", "dataset", str(annotations), "--images", str(images), "--clip-model", str(tiny_clip_dir)]
    monkeypatch.setattr(acp.cli._common, "_terminal", lambda: True)
    watched = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert f"acp: loading CLIP (--clip-model {tiny_clip_dir}) from a local folder ... " in watched.stderr
    assert f"acp: reading {annotations} (" in watched.stderr
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "b"), "--no-progress"])
    assert "acp: loading" not in quiet.stderr and "acp: reading" not in quiet.stderr
    monkeypatch.setattr(acp.cli._common, "_terminal", lambda: False)
    logged = runner.invoke(app, [*args, "-o", str(tmp_path / "c")])
    assert "acp: reading" not in logged.stderr and logged.stderr.count("acp: loading CLIP (") == 1
