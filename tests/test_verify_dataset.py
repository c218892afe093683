"""``acp score dataset --detector-model``: every box verified or missing, unlabeled objects per
image, label fidelity equal to COCOeval's, the filtered copy without (or with ignore regions for)
what the detector disputes; with a detector stand-in, then the tiny OWLv2 through the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from acp.cli import app
from acp.score.dataset import score_dataset
from acp.score.verify import Detection, Verifier, VerifySettings
from tests.test_fidelity import category_ap, cocoeval
from tests.test_score_dataset import FixedScorer

runner = CliRunner()
CAT, DOG = [10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 20.0, 20.0]
# Per image (each a solid grey of its number): its labels (category, box, crowd) and what the
# stand-in detects in it.
IMAGES: list[tuple[list[tuple[str, list[float], bool]], list[Detection]]] = [
    # All there.
    ([("cat", CAT, False)], [Detection("cat", 0.9, tuple(CAT))]),  # type: ignore[arg-type]
    # The dog is not there: a missing box.
    ([("cat", CAT, False), ("dog", DOG, False)], [Detection("cat", 0.9, tuple(CAT))]),  # type: ignore[arg-type]
    # A dog no box labels: an unlabeled object.
    ([("cat", CAT, False)], [Detection("cat", 0.9, tuple(CAT)), Detection("dog", 0.8, tuple(DOG))]),  # type: ignore[arg-type]
    # The same dog inside a crowd region: labelled as an ignore region already.
    ([("cat", CAT, False), ("dog", [35.0, 35.0, 29.0, 29.0], True)],
     [Detection("cat", 0.9, tuple(CAT)), Detection("dog", 0.8, tuple(DOG))]),  # type: ignore[arg-type]
]


def first_red(image: Any) -> int:
    """The red level of pixel (0, 0): of a PIL image, or of the device tensor a verified run
    shares between CLIP and the detector."""
    return int(image[0, 0, 0]) if hasattr(image, "shape") else int(image.getpixel((0, 0))[0])


class StandIn:
    name = "stand-in"
    family = "owl"

    def __init__(self) -> None:
        self.queries: list[list[str]] = []

    def detect(self, images: Sequence[Image.Image], queries: Sequence[Sequence[str]], min_score: float
               ) -> list[list[Detection]]:
        self.queries += [list(q) for q in queries]
        return [[d for d in IMAGES[first_red(image) - 1][1] if d.category in asked]
                for image, asked in zip(images, queries, strict=True)]


def write(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    coco: dict[str, Any] = {"info": {"description": "verified"}, "images": [], "annotations": [],
                            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    for k, (labels, _) in enumerate(IMAGES, start=1):
        Image.new("RGB", (64, 64), (k, k, k)).save(images / f"{k}.png")
        coco["images"].append({"id": k, "file_name": f"{k}.png", "width": 64, "height": 64})
        for name, box, crowd in labels:
            coco["annotations"].append({"id": 10 * k + len(coco["annotations"]), "image_id": k,
                                        "category_id": 1 if name == "cat" else 2, "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": int(crowd)})
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def read(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


@pytest.mark.parametrize("removed", ["drop-image", "ignore"])
def test_the_verifier_in_a_dataset_report(tmp_path: Path, removed: str) -> None:
    annotations, images = write(tmp_path)
    detector = StandIn()
    out = tmp_path / "report"
    report = score_dataset(annotations, images, out, image_scorer=FixedScorer(), keep_above=50,
                           removed_boxes=removed,  # type: ignore[arg-type]
                           verifier=Verifier(detector, VerifySettings(detector_model="stand-in")))
    assert detector.queries == [["cat", "dog"]] * 4  # every category asked in every image
    boxes = read(out, "boxes.json")
    assert [b["verification"] for b in boxes] == ["verified", "verified", "missing", "verified", "verified"]
    assert [i["unlabeled"] for i in read(out, "images.json")] == [0, 0, 1, 0]
    summary = report.summary
    assert summary == read(out, "summary.json")
    assert (summary["verified_boxes"], summary["missing_boxes"], summary["unlabeled_objects"],
            summary["images_with_unlabeled"]) == (4, 1, 1, 1)

    # Label fidelity: pycocotools over the same labels and detections.
    evaluation, names = cocoeval([(list(labels), [(d.category, d.score, list(d.box)) for d in found])
                                  for labels, found in IMAGES])
    assert summary["label_fidelity"]["ap"] == pytest.approx(evaluation.stats[0], abs=1e-4)
    assert summary["label_fidelity"]["ap50"] == pytest.approx(evaluation.stats[1], abs=1e-4)
    verification = read(out, "verification.json")
    rows = {c["category"]: c for c in verification["categories"]}
    for k, name in enumerate(names):
        assert rows[name]["ap"] == pytest.approx(category_ap(evaluation, k), abs=1e-4)
    assert (rows["cat"]["verified"], rows["dog"]["missing"], rows["dog"]["unlabeled"]) == (4, 1, 1)
    assert [len(i["detections"]) for i in read(out, "detections.json")] == [1, 1, 2, 2]

    filtered = read(out, "filtered/annotations.json")
    coco = json.loads(annotations.read_text())
    if removed == "drop-image":
        assert [i["id"] for i in filtered["images"]] == [1, 4]  # 2 loses its dog, 3 has an unlabeled one
        assert filtered["annotations"] == [a for a in coco["annotations"] if a["image_id"] in (1, 4)]
        assert summary["added_ignore_regions"] == 0
        return
    assert [i["id"] for i in filtered["images"]] == [1, 2, 3, 4]
    dog_of_2 = next(a for a in filtered["annotations"] if a["image_id"] == 2 and a["category_id"] == 2)
    assert dog_of_2["iscrowd"] == 1  # missing: an ignore region
    added = filtered["annotations"][len(coco["annotations"]):]
    assert len(added) == 1 and summary["added_ignore_regions"] == 1
    (region,) = added
    assert (region["image_id"], region["category_id"], region["bbox"], region["iscrowd"]) == (3, 2, DOG, 1)
    ids = [a["id"] for a in filtered["annotations"]]
    assert len(set(ids)) == len(ids) and region["id"] > max(a["id"] for a in coco["annotations"])


def test_without_a_verifier_no_verifier_file_or_field(tmp_path: Path) -> None:
    annotations, images = write(tmp_path)
    out = tmp_path / "report"
    score_dataset(annotations, images, out, image_scorer=FixedScorer())
    assert not (out / "verification.json").exists() and not (out / "detections.json").exists()
    assert "label_fidelity" not in read(out, "summary.json")
    assert all("verification" not in b for b in read(out, "boxes.json"))


def test_the_cli_with_the_tiny_detector(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    annotations, images = write(tmp_path)
    out = tmp_path / "report"
    result = runner.invoke(app, ["score", "dataset", str(annotations), "--images", str(images), "-o",
                                 str(out), "--clip-model", str(tiny_models["clip"]), "--detector-model",
                                 str(tiny_models["owlv2"]), "--keep-above", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = read(out, "summary.json")
    assert summary["verified_boxes"] + summary["missing_boxes"] == 5
    assert set(summary["label_fidelity"]) == {"ap", "ap50"}
    assert "label fidelity" in result.output and "boxes verified" in result.output
    assert len(read(out, "detections.json")) == 4
    assert read(out, "verification.json")["detector_family"] == "owl"


def test_the_python_api_verifies_as_the_command_line_does(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from acp import api

    annotations, images = write(tmp_path)
    runner.invoke(app, ["score", "dataset", str(annotations), "--images", str(images), "-o",
                        str(tmp_path / "cli"), "--clip-model", str(tiny_models["clip"]), "--detector-model",
                        str(tiny_models["owlv2"]), "--no-progress"])
    report = api.score_dataset(annotations, images, tmp_path / "api", clip_model=str(tiny_models["clip"]),
                               detector_model=str(tiny_models["owlv2"]), device="cpu", progress=False)
    assert report.summary["label_fidelity"] == read(tmp_path / "cli", "summary.json")["label_fidelity"]
    assert read(tmp_path / "api", "verification.json") == read(tmp_path / "cli", "verification.json")
    assert (tmp_path / "api" / "report.html").is_file()


def test_a_bad_detector_is_one_line_before_any_model_loads(tmp_path: Path, tiny_models: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from acp.score.image import ImageScorer

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ImageScorer, "from_pretrained", no_load)
    annotations, images = write(tmp_path)
    out = tmp_path / "report"
    for detector, said in [(str(tmp_path / "no-such-detector"), "no-such-detector"),
                           (str(tiny_models["gligen"]), "gligen")]:
        result = runner.invoke(app, ["score", "dataset", str(annotations), "--images", str(images), "-o",
                                     str(out), "--clip-model", str(tiny_models["clip"]), "--detector-model",
                                     detector, "--no-progress"])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "--detector-model" in lines[0] and said in lines[0], lines
        assert not out.exists()


def test_an_image_without_labels_is_searched_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image with no box: a dog the detector finds there is an unlabeled object (its image
    leaves the filtered copy); an empty one stays. (It crashed the run: no boxes to scale.)"""
    from acp.boxes import iou_matrix, plan_to_coco
    from tests import test_verify_dataset as module

    assert plan_to_coco([], 64, 64).shape == (0, 4) and iou_matrix([], [DOG]).shape == (0, 1)
    monkeypatch.setattr(module, "IMAGES", [([], [Detection("dog", 0.8, tuple(DOG))]),  # type: ignore[arg-type]
                                           ([], [])])
    annotations, images = write(tmp_path)
    out = tmp_path / "report"
    report = score_dataset(annotations, images, out, image_scorer=FixedScorer(), keep_above=50,
                           verifier=Verifier(StandIn(), VerifySettings(detector_model="stand-in")))
    assert [(i["unlabeled"], i["kept"]) for i in read(out, "images.json")] == [(1, False), (0, True)]
    assert report.summary["unlabeled_objects"] == 1 and report.summary["label_fidelity"]["ap"] is None
    assert [i["id"] for i in read(out, "filtered/annotations.json")["images"]] == [2]
