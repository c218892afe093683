"""`acp export yolo` and `acp export coco-split`, checked by the readers people train with."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.errors import InputError
from acp.export.split import Fractions, image_key, split_coco, split_of
from acp.export.yolo import export_yolo

runner = CliRunner()
ULTRALYTICS = (
    "ultralytics is not installed (its wheel requires torchvision, which has no build for the CPU "
    "torch here): pip install --no-deps ultralytics==8.4.190 opencv-python-headless==4.14.0.94"
)


def _coco(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _expected_boxes(data: dict[str, Any]) -> dict[str, list[tuple[int, list[float]]]]:
    """file stem -> (class, normalised xywh centre box) per non-crowd box, from the COCO file."""
    classes = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    images = {i["id"]: i for i in data["images"]}
    found: dict[str, list[tuple[int, list[float]]]] = {Path(i["file_name"]).stem: [] for i in data["images"]}
    for a in data["annotations"]:
        image = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        width, height = image["width"], image["height"]
        found[Path(image["file_name"]).stem].append(
            (classes[a["category_id"]], [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]))
    return found


def test_generate_then_yolo_passes_ultralytics_own_label_checks(tiny_dataset: Path, tmp_path: Path) -> None:
    """ultralytics' check_det_dataset reads data.yaml and its YOLODataset verifies every label
    (verify_image_label): no corrupt label, every box where the COCO file has it."""
    if importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("cv2") is None:
        pytest.skip(ULTRALYTICS)
    annotations = tiny_dataset / "annotations.json"
    for task in ("detect", "segment"):
        result = runner.invoke(app, ["export", "yolo", str(annotations), "-o", str(tmp_path / task),
                                     "--val-fraction", "0.5", "--task", task, "--no-progress"])
        assert result.exit_code == 0, result.output
    # ultralytics reads torchvision's version from its metadata when imported (only that, for
    # loading datasets); where torchvision is absent a metadata stub stands in, in the child only.
    stub = tmp_path / "stub"
    (stub / "torchvision-0.28.0.dist-info").mkdir(parents=True)
    (stub / "torchvision-0.28.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from ultralytics.data import YOLODataset
        from ultralytics.data.utils import check_det_dataset
        found = {}
        for task in ("detect", "segment"):
            data = check_det_dataset(sys.argv[1] + "/" + task + "/data.yaml")
            for split in ("train", "val"):
                dataset = YOLODataset(img_path=data[split], data=data, task=task, augment=False)
                cache = dataset.cache_labels(Path(dataset.label_files[0]).parent.with_suffix(".check.cache"))
                found[task + "/" + split] = {
                    "names": data["names"], "results": list(cache["results"]),
                    "labels": {l["im_file"].rsplit("/", 1)[1].rsplit(".", 1)[0]:
                               [[int(c), *map(float, b)] for c, b in zip(l["cls"].ravel(), l["bboxes"])]
                               for l in dataset.labels},
                    "segments": sum(len(l["segments"]) for l in dataset.labels)}
        print(json.dumps(found))
    """)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"), "YOLO_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(stub)]))}
    if importlib.util.find_spec("torchvision") is not None:
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    data = _coco(annotations)
    expected = _expected_boxes(data)
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    for task in ("detect", "segment"):
        seen = {}
        for split in ("train", "val"):
            check = found[f"{task}/{split}"]
            assert [check["names"][str(k)] for k in range(len(names))] == names
            images, missing, empty, corrupt, total = check["results"]
            assert corrupt == 0 and missing == 0 and images + empty == total > 0, check["results"]
            seen.update(check["labels"])
            if task == "segment":
                assert check["segments"] == sum(len(v) for v in check["labels"].values())
        assert set(seen) == set(expected)  # every image in exactly one split
        for stem, boxes in expected.items():
            got = sorted(seen[stem])
            assert [c for c, *_ in got] == sorted(c for c, _ in boxes)
            if task == "detect":  # segment boxes are those of the outlines, inside these
                np.testing.assert_allclose([b for _, *b in got], [b for _, b in sorted(boxes)], atol=1e-5)


def test_yolo_boxes_round_trip_through_supervision(tiny_dataset: Path, tmp_path: Path) -> None:
    """A second, independent YOLO reader (supervision's) gets back the COCO file's pixel boxes."""
    import supervision as sv

    out = tmp_path / "yolo"
    summary = export_yolo(tiny_dataset / "annotations.json", out, fractions=Fractions(0.5))
    data = _coco(tiny_dataset / "annotations.json")
    by_name = {i["file_name"]: i for i in data["images"]}
    boxes: dict[str, list[list[float]]] = {name: [] for name in by_name}
    file_of = {i["id"]: i["file_name"] for i in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[file_of[a["image_id"]]].append([x, y, x + w, y + h])
    read = 0
    for split in ("train", "val"):
        dataset = sv.DetectionDataset.from_yolo(
            images_directory_path=str(out / "images" / split),
            annotations_directory_path=str(out / "labels" / split), data_yaml_path=str(out / "data.yaml"))
        assert dataset.classes == [c["name"] for c in data["categories"]]
        assert len(dataset) == summary.images[split]
        for path, _, detections in dataset:
            expected = np.array(sorted(boxes[Path(path).name])).reshape(-1, 4)
            np.testing.assert_allclose(np.array(sorted(detections.xyxy.tolist())).reshape(-1, 4), expected,
                                       atol=0.01)
            read += 1
    assert read == len(data["images"])
    assert summary.images["train"] > 0 and summary.images["val"] > 0
    assert summary.boxes["train"] + summary.boxes["val"] == len(data["annotations"])
    mapping = json.loads((out / "categories.json").read_text())
    assert [(m["class"], m["coco_id"]) for m in mapping] == [(k, c["id"]) for k, c in
                                                              enumerate(sorted(data["categories"],
                                                                               key=lambda c: c["id"]))]


def test_coco_split_partitions_the_images_with_the_same_boxes(tiny_dataset: Path, tmp_path: Path) -> None:
    """train.json + val.json hold every image once and every box unchanged; pycocotools and
    supervision load them with the split files' folder as the image root."""
    import supervision as sv
    from pycocotools.coco import COCO

    folder = tmp_path / "dataset"
    folder.mkdir()
    shutil.copytree(tiny_dataset / "images", folder / "images")
    (folder / "annotations.json").write_bytes((tiny_dataset / "annotations.json").read_bytes())
    summary = split_coco(folder / "annotations.json", folder, fractions=Fractions(0.5))
    data = _coco(folder / "annotations.json")
    seen_images, seen_boxes = [], []
    for split in ("train", "val"):
        coco = COCO(str(summary.files[split]))
        assert coco.loadCats(coco.getCatIds()) == data["categories"]
        for image in coco.dataset["images"]:
            assert (folder / image["file_name"]).is_file()
        seen_images += [i["id"] for i in coco.dataset["images"]]
        seen_boxes += coco.dataset["annotations"]
        dataset = sv.DetectionDataset.from_coco(images_directory_path=str(folder),
                                                annotations_path=str(summary.files[split]))
        assert len(dataset) == summary.images[split] > 0
    assert sorted(seen_images) == sorted(i["id"] for i in data["images"])
    assert sorted(seen_boxes, key=lambda a: a["id"]) == data["annotations"]


def test_coco_split_in_torchvision_gives_the_same_boxes(tiny_dataset: Path, tmp_path: Path) -> None:
    try:
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    except (ImportError, RuntimeError) as error:  # RuntimeError: a CUDA build beside a CPU torch
        pytest.skip(f"no working torchvision here ({type(error).__name__}: {str(error)[:80]}); "
                    "the torchvision wheel for torch 2.13 is a CUDA build that a CPU torch cannot load")
    summary = split_coco(tiny_dataset / "annotations.json", tiny_dataset, fractions=Fractions(0.5))
    data = _coco(tiny_dataset / "annotations.json")
    for split in ("train", "val"):
        dataset = wrap_dataset_for_transforms_v2(CocoDetection(str(tiny_dataset), str(summary.files[split])),
                                                 target_keys=("image_id", "boxes", "labels"))
        for _, target in dataset:
            expected = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in expected)]
            np.testing.assert_allclose(target["boxes"].tolist(), np.array(xyxy).reshape(-1, 4), atol=1e-3)
            assert target["labels"].tolist() == [a["category_id"] for a in expected]


def _split_folder(tiny_dataset: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copytree(tiny_dataset / "images", folder / "images")
    (folder / "annotations.json").write_bytes((tiny_dataset / "annotations.json").read_bytes())
    return folder / "annotations.json"


def _present_splits(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: _coco(p) for p in sorted(folder.glob("*.json")) if p.stem in ("train", "val", "test")}


def test_a_split_killed_between_its_files_never_puts_an_image_in_two_splits(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at every rename and removal in turn while a new split replaces an old one (val
    0.5 -> 0.2 moves images from val to train): the files present are of one run (so no image
    is in two), a train.json present has its whole set beside it, and the rerun is right."""
    annotations = _split_folder(tiny_dataset, tmp_path / "expected")
    split_coco(annotations, annotations.parent, fractions=Fractions(0.2))
    expected = {k: [i["id"] for i in v["images"]] for k, v in _present_splits(annotations.parent).items()}
    real_replace, real_unlink = os.replace, os.unlink
    finished = False
    crash_at = 0
    while not finished:
        crash_at += 1
        annotations = _split_folder(tiny_dataset, tmp_path / f"run{crash_at}")
        split_coco(annotations, annotations.parent, fractions=Fractions(0.5, 0.2))
        calls = 0

        def crashing(real: Any, crash_at: int = crash_at) -> Any:
            def call(*args: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == crash_at:
                    raise KeyboardInterrupt  # stands for the kill
                return real(*args)
            return call

        monkeypatch.setattr(os, "replace", crashing(real_replace))
        monkeypatch.setattr(os, "unlink", crashing(real_unlink))
        try:
            split_coco(annotations, annotations.parent, fractions=Fractions(0.2))
            finished = True
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "unlink", real_unlink)
        present = _present_splits(annotations.parent)
        ids = [i["id"] for p in present.values() for i in p["images"]]
        assert len(ids) == len(set(ids)), crash_at
        assert len({p["acp_split"]["run"] for p in present.values()}) <= 1, crash_at
        if "train" in present:
            assert set(present) == set(present["train"]["acp_split"]["splits"]), crash_at
        split_coco(annotations, annotations.parent, fractions=Fractions(0.2))
        rerun = _present_splits(annotations.parent)
        assert {k: [i["id"] for i in v["images"]] for k, v in rerun.items()} == expected
    assert crash_at > 5  # writes, removals and renames: each was a crash point


def test_a_split_replaces_only_its_own_files_and_removes_its_stale_ones(tiny_dataset: Path,
                                                                        tmp_path: Path) -> None:
    annotations = _split_folder(tiny_dataset, tmp_path / "dataset")
    folder = annotations.parent
    split_coco(annotations, folder, fractions=Fractions(0.3, 0.3))
    assert set(_present_splits(folder)) == {"train", "val", "test"}
    split_coco(annotations, folder, fractions=Fractions(0.3))  # no test split now
    assert set(_present_splits(folder)) == {"train", "val"}  # the old test.json held train images
    (folder / "val.json").write_text('{"mine": true}')  # the user's own
    for command in ([], ["-o", str(folder)]):
        result = runner.invoke(app, ["export", "coco-split", str(annotations), *command])
        assert result.exit_code == 1 and "val.json exists and was not written by acp" in result.output
    assert (folder / "val.json").read_text() == '{"mine": true}'
    own = folder / "train.json"
    with pytest.raises(InputError, match="would replace the input"):
        split_coco(own, folder, fractions=Fractions(0.3), images_dir=folder)


def test_splits_stay_put_as_a_dataset_grows_and_fractions_change() -> None:
    keys = [image_key({"acp": {"plan_id": f"{n:06d}"}}) for n in range(20_000)]
    small = [split_of(k, Fractions(0.1)) for k in keys]
    assert small[:10_000] == [split_of(k, Fractions(0.1)) for k in keys[:10_000]]  # per image
    assert abs(small.count("val") / len(keys) - 0.1) < 0.01
    larger = [split_of(k, Fractions(0.2)) for k in keys]
    assert all(b == "val" for a, b in zip(small, larger, strict=True) if a == "val")  # val only grows
    with_test = [split_of(k, Fractions(0.1, 0.1)) for k in keys]
    assert [s == "val" for s in with_test] == [s == "val" for s in small]  # test takes from train
    assert abs(with_test.count("test") / len(keys) - 0.1) < 0.01
    assert image_key({"file_name": "a/b.jpg"}) == "file:a/b.jpg"


@pytest.mark.parametrize("val, test", [(-0.1, 0.0), (1.0, 0.0), (0.6, 0.4), (0.2, 1.5)])
def test_bad_fractions_are_one_line_naming_the_option(val: float, test: float) -> None:
    with pytest.raises(InputError, match=r"--(val|test)-fraction"):
        Fractions(val, test)


def _handmade(root: Path, annotations: list[dict[str, Any]], **image: Any) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (100, 50), "white").save(root / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50, **image}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 7, "iscrowd": 0, **a}
                            for k, a in enumerate(annotations)],
            "categories": [{"id": 9, "name": "late"}, {"id": 7, "name": "early"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "annotations.json"


def _labels(out: Path) -> list[list[float]]:
    (label,) = (out / "labels").rglob("*.txt")
    return [[float(v) for v in line.split()] for line in label.read_text().splitlines()]


def test_boxes_are_clipped_and_crowd_and_empty_boxes_left_out(tmp_path: Path) -> None:
    annotations = _handmade(tmp_path, [
        {"bbox": [-10, 10, 30, 20]},  # leaves the image on the left: clipped to x 0-20
        {"bbox": [10, 10, 20, 20], "iscrowd": 1},
        {"bbox": [120, 10, 20, 20]},  # wholly outside
        {"bbox": [10, 10, 0, 20]},
        {"bbox": [50, 25, 50, 25]},
        {"bbox": [50, 25, 50, 25]},  # the same box twice: one line
    ])
    summary = export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0))
    assert _labels(tmp_path / "yolo") == [[0, 0.1, 0.4, 0.2, 0.4], [0, 0.75, 0.75, 0.5, 0.5]]
    assert (summary.crowd_skipped, summary.empty_skipped) == (1, 2)
    # Class ids follow the COCO ids: 7 is class 0, 9 class 1; with no val split, val is train.
    data_yaml = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "names:\n  0: early\n  1: late\n" in data_yaml and "val: images/train" in data_yaml


def test_segment_outlines_from_rle_and_polygons(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    mask = np.zeros((50, 100), dtype=np.uint8)
    mask[10:30, 20:60] = 1  # a 40 x 20 rectangle
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = _handmade(tmp_path, [
        {"bbox": [20, 10, 40, 20], "segmentation": rle},
        {"bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10], [1, 1, 2, 1, 2, 2]]},
        {"bbox": [70, 20, 10, 10]},  # no mask: its box
    ])
    export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0), task="segment")
    from shapely.geometry import Polygon

    rows = _labels(tmp_path / "yolo")
    outlines = [Polygon(np.array(r[1:]).reshape(-1, 2) * [100, 50]) for r in rows]
    assert abs(outlines[0].area - 800) < 40 and outlines[0].bounds == pytest.approx((20, 10, 60, 30), abs=0.6)
    assert outlines[1].area == pytest.approx(50)  # the larger part
    assert outlines[2].bounds == pytest.approx((70, 20, 80, 30))


def test_the_rle_decoder_reads_what_pycocotools_writes() -> None:
    """acp decodes RLE itself (pycocotools writes past its buffer when the counts add up to more
    than the mask): compressed and plain counts, for masks of every kind."""
    from pycocotools import mask as mask_utils

    from acp.export.yolo import decode_rle

    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = [rng.random((height, width)) < rng.random(), np.ones((height, width), bool),
                np.zeros((height, width), bool)][trial % 3]
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        decoded = decode_rle({"size": [height, width], "counts": rle["counts"].decode()}, width, height)
        assert decoded is not None and (decoded == mask).all()
        flat = mask.T.reshape(-1)  # column-major runs, background first
        edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        runs = ([0] if flat[0] else []) + np.diff(np.r_[0, edges, flat.size]).tolist()
        decoded = decode_rle({"size": [height, width], "counts": runs}, width, height)
        assert decoded is not None and (decoded == mask).all()


def _points_into_shapely(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import shapely.geometry

    seen: list[int] = []
    real = shapely.geometry.Polygon

    def counting(points: Any) -> Any:
        seen.append(len(points))
        return real(points)

    monkeypatch.setattr(shapely.geometry, "Polygon", counting)
    return seen


# A table of masks no export can use; each is written as its box, counted, in bounded time
# and memory (before: a traceback, a 37 GiB allocation, or a decoder writing past its buffer).
UNUSABLE_MASKS = {
    "rle of 200000 x 200000 pixels": ({"size": [200000, 200000], "counts": [40_000_000_000]}, 200000, 200000),
    "rle counts 1e15": ({"size": [50, 100], "counts": [1e15, 5]}, 100, 50),
    "rle counts 10**15": ({"size": [50, 100], "counts": [10**15, 5]}, 100, 50),
    "rle counts past the mask": ({"size": [50, 100], "counts": [4000, 4000]}, 100, 50),
    "rle counts short of the mask": ({"size": [50, 100], "counts": [10, 10]}, 100, 50),
    "rle negative counts": ({"size": [50, 100], "counts": [5100, -100]}, 100, 50),
    "rle counts of strings": ({"size": [50, 100], "counts": ["5000"]}, 100, 50),
    "rle string past the mask": ({"size": [50, 100], "counts": "0000000P1"}, 100, 50),
    "rle string not ascii": ({"size": [50, 100], "counts": "é"}, 100, 50),
    "rle string cut short": ({"size": [50, 100], "counts": "P"}, 100, 50),
    "rle string of 1000 continued groups": ({"size": [50, 100], "counts": "o" * 1000 + "1"}, 100, 50),
    "rle of another size": ({"size": [25, 100], "counts": [2500]}, 100, 50),
    "rle without a size": ({"counts": [5000]}, 100, 50),
    "polygon of strings": ([["0", "0", "9", "0", "9", "9"]], 100, 50),
    "polygon of lists": ([[[0, 0], [9, 0], [9, 9]]], 100, 50),
    "polygon with NaN": ([[0, 0, float("nan"), 0, 9, 9]], 100, 50),
    "polygon with 10**400": ([[0, 0, 10**400, 0, 9, 9]], 100, 50),
    "polygon of booleans": ([[True, False, True, True, False, True]], 100, 50),
    "polygon on a line": ([[0, 0, 5, 5, 9, 9]], 100, 50),
}


@pytest.mark.parametrize("name", list(UNUSABLE_MASKS))
def test_an_unusable_mask_is_its_box_and_counted(tmp_path: Path, name: str) -> None:
    segmentation, width, height = UNUSABLE_MASKS[name]
    annotations = _handmade(tmp_path, [{"bbox": [10, 10, 20, 20], "segmentation": segmentation}],
                            width=width, height=height)
    summary = export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0), task="segment")
    assert summary.unusable_masks == 1 and "1 masks unusable, written as their boxes" in summary.line()
    (row,) = _labels(tmp_path / "yolo")
    box = np.array(row[1:]).reshape(-1, 2) * [width, height]
    np.testing.assert_allclose(box, [[10, 10], [30, 10], [30, 30], [10, 30]], atol=1e-3)


def test_a_huge_polygon_is_simplified_from_a_bounded_sample(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Simplifying with its topology kept costs the square of the points (a 160k-point zigzag
    took 171 s): at most MAX_OUTLINE_POINTS of them reach shapely, an even sample; points far
    outside the image are clamped to it first."""
    from shapely.geometry import Polygon

    from acp.export.yolo import MAX_OUTLINE_POINTS

    seen = _points_into_shapely(monkeypatch)
    angle = np.linspace(0, 2 * np.pi, 160_000, endpoint=False)
    circle = np.c_[50 + 20 * np.cos(angle), 25 + 20 * np.sin(angle)]
    zigzag = np.c_[np.linspace(0, 99, 160_000), (np.arange(160_000) % 2) * 1e300]
    annotations = _handmade(tmp_path, [
        {"bbox": [30, 5, 40, 40], "segmentation": [circle.reshape(-1).tolist()]},
        {"bbox": [0, 0, 99, 49], "segmentation": [zigzag.reshape(-1).tolist()]},
    ])
    summary = export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0), task="segment")
    assert seen and max(seen) <= MAX_OUTLINE_POINTS
    outline = Polygon(np.array(_labels(tmp_path / "yolo")[0][1:]).reshape(-1, 2) * [100, 50])
    assert outline.area == pytest.approx(np.pi * 20**2, rel=0.05)  # within the half-pixel simplification
    assert summary.images["train"] == 1


def test_a_large_mask_is_traced_on_a_bounded_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask is cropped to its object and, past TRACE_CELLS, averaged over square blocks
    before tracing: the grid traced stays bounded and the outline keeps its place and size.
    A mask of more than MAX_MASK_PIXELS is not decoded at all."""
    import contourpy
    from pycocotools import mask as mask_utils
    from shapely.geometry import Polygon

    from acp.export import yolo

    grids: list[int] = []
    real = contourpy.contour_generator

    def recording(*args: Any, z: np.ndarray, **kwargs: Any) -> Any:
        grids.append(z.size)
        return real(*args, z=z, **kwargs)

    monkeypatch.setattr(contourpy, "contour_generator", recording)
    monkeypatch.setattr(yolo, "TRACE_CELLS", 400)
    rows, columns = np.mgrid[:50, :100]
    disc = ((columns - 60) ** 2 + (rows - 25) ** 2 < 20**2).astype(np.uint8)  # 40 x 40 pixels: 1600
    rle = mask_utils.encode(np.asfortranarray(disc))
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = _handmade(tmp_path, [{"bbox": [40, 5, 40, 40], "segmentation": rle}])
    export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0), task="segment")
    assert grids and max(grids) <= (20 + 2) ** 2  # blocks of 2 x 2, and a border of one
    outline = Polygon(np.array(_labels(tmp_path / "yolo")[0][1:]).reshape(-1, 2) * [100, 50])
    assert outline.area == pytest.approx(np.pi * 20**2, rel=0.05)
    assert outline.centroid.coords[0] == pytest.approx((60, 25), abs=0.5)
    monkeypatch.setattr(yolo, "MAX_MASK_PIXELS", 100 * 50 - 1)
    summary = export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.0), task="segment")
    assert summary.unusable_masks == 1


@pytest.mark.parametrize("width", [float("inf"), float("nan"), 1e300, -5, 0, 640.5, "640", True, [640]])
def test_an_image_size_that_is_no_size_is_one_line(tmp_path: Path, width: Any) -> None:
    annotations = _handmade(tmp_path, [{"bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5]]}])
    coco = _coco(annotations)
    coco["images"][0]["width"] = width
    annotations.write_text(json.dumps(coco))  # NaN and inf are written as NaN and Infinity
    result = runner.invoke(app, ["export", "yolo", str(annotations), "-o", str(tmp_path / "y"),
                                 "--task", "segment", "--no-progress"])
    assert result.exit_code == 1 and "width" in result.output and "expected whole numbers" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "y").exists()


def test_images_are_hard_links_unless_asked_or_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = _handmade(tmp_path, [{"bbox": [0, 0, 5, 5]}])
    source = tmp_path / "images" / "a.png"

    def exported(out: Path) -> Path:
        (image,) = (out / "images").rglob("a.png")
        return image

    export_yolo(annotations, tmp_path / "linked", fractions=Fractions(0.0))
    assert exported(tmp_path / "linked").stat().st_ino == source.stat().st_ino
    export_yolo(annotations, tmp_path / "copied", fractions=Fractions(0.0), link="copy")
    assert exported(tmp_path / "copied").stat().st_ino != source.stat().st_ino
    export_yolo(annotations, tmp_path / "symlinked", fractions=Fractions(0.0), link="symlink")
    assert exported(tmp_path / "symlinked").resolve() == source.resolve()

    def cross_device(*args: Any, **kwargs: Any) -> None:  # another file system: no hard links
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    summary = export_yolo(annotations, tmp_path / "fallback", fractions=Fractions(0.0))
    assert summary.copied == 1 and exported(tmp_path / "fallback").read_bytes() == source.read_bytes()


def _tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Relative path -> content of every file under ``folder`` but those under ``skip``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.relative_to(folder).as_posix().startswith(skip)}


def _mine(folder: Path) -> dict[str, bytes]:
    """A user's files in an export folder: a project beside it, and a dataset."""
    before = set(_tree(folder))
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "notes.txt").write_text("keep me")
    (folder / "real" / "images").mkdir(parents=True)
    (folder / "real" / "annotations.json").write_text("{}")
    (folder / "real" / "images" / "0001.jpg").write_bytes(b"jpeg")
    return {k: v for k, v in _tree(folder).items() if k not in before}


def test_a_rerun_replaces_only_the_files_its_export_wrote(tiny_dataset: Path, tmp_path: Path) -> None:
    """A re-export replaces the files the earlier export listed in acp-owned.json and keeps the
    user's (a project, a dataset) beside them; no temporary is left."""
    annotations = tiny_dataset / "annotations.json"
    out = tmp_path / "yolo"
    export_yolo(annotations, out, fractions=Fractions(0.5))
    written = set(_tree(out))
    mine = _mine(out)
    export_yolo(annotations, out, fractions=Fractions(0.1))
    assert {k: v for k, v in _tree(out).items() if k in mine} == mine
    train = {p.name for p in (out / "images" / "train").iterdir()}
    val = {p.name for p in (out / "images" / "val").iterdir()}
    assert train and not train & val and len(train | val) == len(_coco(annotations)["images"])
    assert "acp-owned.json" in written
    assert [p.name for p in tmp_path.iterdir()] == ["yolo"]  # no temporary left beside it
    assert set(json.loads((out / "acp-owned.json").read_text())["files"]) == (
        set(_tree(out)) - set(mine) - {"acp-owned.json"})


@pytest.mark.parametrize("written", ["data.yaml+categories.json", "nothing"])
def test_a_folder_acp_did_not_list_is_refused_whatever_it_holds(tiny_dataset: Path, tmp_path: Path,
                                                                 written: str) -> None:
    """A data.yaml and a categories.json prove nothing (a project's src/ and thesis.tex were
    deleted for them): without acp-owned.json a non-empty folder is refused and left as it was."""
    out = tmp_path / "project"
    out.mkdir()
    if written != "nothing":
        (out / "data.yaml").write_text("path: .\n")
        (out / "categories.json").write_text("[]")
    before = {**_mine(out), **_tree(out)}
    result = runner.invoke(app, ["export", "yolo", str(tiny_dataset / "annotations.json"), "-o", str(out)])
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    assert result.exit_code == 1 and "no acp-owned.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_file_acp_did_not_write_among_its_own_is_named_and_kept(tiny_dataset: Path, tmp_path: Path) -> None:
    """ultralytics' label cache (or an image dropped into images/train) would join the new
    export, and it is not acp's to delete: the re-export refuses, naming it, and changes nothing."""
    annotations = tiny_dataset / "annotations.json"
    out = tmp_path / "yolo"
    export_yolo(annotations, out, fractions=Fractions(0.5))
    (out / "labels" / "train.cache").write_text("ultralytics' cache")  # a trainer was here
    before = _tree(out)
    with pytest.raises(InputError, match=r"did not write among its own \(labels/train\.cache\)"):
        export_yolo(annotations, out, fractions=Fractions(0.1))
    assert _tree(out) == before
    (out / "labels" / "train.cache").unlink()
    export_yolo(annotations, out, fractions=Fractions(0.1))


def test_an_export_killed_at_any_rename_leaves_old_or_no_dataset_and_a_rerun_repairs_it(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at each rename of the replacement in turn: data.yaml and everything it points to
    are the old export's or the new one's, never a mix; the user's files stay; the rerun gives
    the new export."""
    annotations = tiny_dataset / "annotations.json"
    expected = tmp_path / "expected"
    export_yolo(annotations, expected, fractions=Fractions(0.1))
    new = _tree(expected, skip=("acp-owned.json",))
    # data.yaml names its folder: compare it with the path made neutral
    new["data.yaml"] = new["data.yaml"].replace(str(expected.resolve()).encode(), b"OUT")
    real_replace = os.replace
    for crash_at in range(1, 20):
        out = tmp_path / f"yolo{crash_at}"
        export_yolo(annotations, out, fractions=Fractions(0.5))
        old = _tree(out, skip=("acp-owned.json",))
        old["data.yaml"] = old["data.yaml"].replace(str(out.resolve()).encode(), b"OUT")
        mine = _mine(out)
        calls = 0

        def crashing(source: Any, target: Any, crash_at: int = crash_at) -> None:
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise KeyboardInterrupt  # stands for the kill: nothing after it runs
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", crashing)
        try:
            export_yolo(annotations, out, fractions=Fractions(0.1))
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        assert {k: v for k, v in _tree(out).items() if k in mine} == mine, crash_at
        left = _tree(out, skip=("acp-owned.json", *mine))
        if "data.yaml" in left:
            left["data.yaml"] = left["data.yaml"].replace(str(out.resolve()).encode(), b"OUT")
            assert left in (old, new), crash_at
        listed = set(json.loads((out / "acp-owned.json").read_text())["files"])
        assert set(left) <= listed, crash_at
        export_yolo(annotations, out, fractions=Fractions(0.1))
        again = _tree(out, skip=("acp-owned.json", *mine))
        again["data.yaml"] = again["data.yaml"].replace(str(out.resolve()).encode(), b"OUT")
        assert again == new and {k: v for k, v in _tree(out).items() if k in mine} == mine
        if finished:
            break
    assert not finished or crash_at > 3  # the replacement took several renames, each one tried


def test_two_images_with_one_label_name_are_refused(tmp_path: Path) -> None:
    annotations = _handmade(tmp_path, [])
    coco = _coco(annotations)
    Image.new("RGB", (100, 50)).save(tmp_path / "images" / "a.jpg")
    coco["images"].append({"id": 2, "file_name": "a.jpg", "width": 100, "height": 50})
    annotations.write_text(json.dumps(coco))
    with pytest.raises(InputError, match=r"would share the label file a\.txt"):
        export_yolo(annotations, tmp_path / "yolo", fractions=Fractions(0.1))
    assert not (tmp_path / "yolo").exists()


def test_export_cli_errors_are_one_line(tmp_path: Path) -> None:
    annotations = _handmade(tmp_path, [{"bbox": [0, 0, 5, 5]}], file_name="../a.png")
    result = runner.invoke(app, ["export", "yolo", str(annotations), "-o", str(tmp_path / "y")])
    assert result.exit_code == 1 and "climbs out of its folder" in result.output
    result = runner.invoke(app, ["export", "yolo", str(annotations), "-o", str(tmp_path / "y"), "--copy",
                                 "--symlink"])
    assert result.exit_code == 1 and "--copy and --symlink" in result.output
    result = runner.invoke(app, ["export", "coco-split", str(tmp_path / "nothing.json")])
    assert result.exit_code == 1 and "nothing.json" in result.output and len(result.output.splitlines()) == 1
