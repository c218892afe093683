"""Scoring an existing COCO dataset: every image and every box, and a filtered copy.

Per image: CLIS-I (caption vs image, and every box), CLIS-L when a bank is given, and the
composite ``clis`` (as for candidates, ``acp.score.candidates.compose_clis``). Per box: its
instance CLIS-I and terms. The caption is acp's provenance (``image["acp"]["caption"]``) when
acp exported the set, otherwise built from the category names ("a photo of two dogs and a
cat"); a box's description is ``annotation["acp"]["description"]`` when present, else "a
{category}" ("an apple").

What cannot be scored is reported item by item, with a reason, and the run goes on: an image
record that is not an object, lacks ``id`` or ``file_name`` or repeats an earlier image's id
(the annotations of that id belong to the first), a ``file_name`` that leaves the images
folder (absolute, ``..``, or through a symbolic link; refused before the file is touched, so
no message tells whether it exists), a missing or undecodable image file or one whose header
claims more than ``acp.images.MAX_PIXELS`` pixels, a decoded size that differs from the
record's; an annotation that is not an object or lacks ``image_id``,
``category_id`` or ``bbox``, of an unknown image, with an unknown category id, a
degenerate box or one reaching more than ``OUT_OF_IMAGE_TOLERANCE`` pixels outside its image.
An item is named by its id (``image 3``, ``annotation 12``), or by its position when it has
none (``images[4]``, ``annotations[7]``). A failed image is not scored, nor are its boxes; a
failed box is left out of its image's score.

A layout score, when a bank is given, is written as in every acp output
(``acp.score.candidates.layout_fields``): ``clis_l`` null when it is reference-free, the
sanity score then in ``clis_l_sanity``, and ``clis_l_method``.

``DatasetReport.write(folder)`` writes, each file atomically: ``images.json``, ``boxes.json``,
``categories.json`` (per category: boxes, mean, median, 10th percentile, share below the
threshold), ``failures.json``, ``summary.json``, and with ``keep_above`` ``filtered.json``: the
input COCO without the boxes scoring below it and without the images scoring below it or left
with no box; failed images and boxes are left out too.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acp.boxes import coco_to_plan
from acp.english import count_phrase, listing
from acp.errors import InputError
from acp.images import read_rgb
from acp.jsonl import write_atomic
from acp.paths import UnsafePathError, inside, path_problem
from acp.score.bank import OUT_OF_IMAGE_TOLERANCE, read_coco_file, usable_id
from acp.score.candidates import compose_clis, layout_fields
from acp.score.image import ImageScorer, Scene, SceneObject
from acp.score.layout import LayoutScorer

if TYPE_CHECKING:
    from PIL.Image import Image

SUMMARY_THRESHOLD = 60.0  # the paper's instance threshold, for the per-category share
REPORT_FILES = ("images.json", "boxes.json", "categories.json", "failures.json", "summary.json",
                "filtered.json")  # what DatasetReport.write may write


@dataclass
class DatasetReport:
    images: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    filtered: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def write(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        files = {
            "images.json": self.images,
            "boxes.json": self.boxes,
            "categories.json": self.categories,
            "failures.json": self.failures,
            "summary.json": self.summary,
        }
        if self.filtered is not None:
            files["filtered.json"] = self.filtered
        written = []
        for name, content in files.items():
            indent = None if name == "filtered.json" else 1
            write_atomic(folder / name, json.dumps(content, indent=indent, ensure_ascii=False) + "\n")
            written.append(folder / name)
        return written


def build_caption(names: list[str]) -> str:
    """"a photo of two dogs and a cat" from category names, in order of first appearance."""
    counts = Counter(names)
    parts = [count_phrase(name, n) for name, n in counts.items()]
    return "a photo of " + listing(parts) if parts else "a photo"


def _record_problem(record: Any, keys: tuple[str, ...]) -> str | None:
    """Why an image or annotation record cannot be used: not an object, or a key missing
    (``bbox`` is only required to be there; ``_box_problem`` checks its value)."""
    if not isinstance(record, dict):
        return f"not a JSON object, got {type(record).__name__}"
    missing = [key for key in keys if key not in record]
    if missing:
        return "no " + " and no ".join(repr(key) for key in missing)
    for key in keys:
        if key.endswith("id") and not usable_id(record[key]):
            return f"{key} must be a number or a string, got {record[key]!r}"
    return None


def _box_problem(bbox: Any, width: float, height: float) -> str | None:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return f"degenerate bbox {bbox!r} (expected finite values, w and h > 0)"
    tol = OUT_OF_IMAGE_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {bbox!r} leaves the {width:g}x{height:g} image"
    return None


def _clipped(bbox: list[float], width: float, height: float) -> tuple[float, float, float, float]:
    x0, y0 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
    x1 = min(width, float(bbox[0]) + float(bbox[2]))
    y1 = min(height, float(bbox[1]) + float(bbox[3]))
    x, y, w, h = coco_to_plan([x0, y0, x1 - x0, y1 - y0], width, height).tolist()
    return x, y, w, h


def _open(path: Path, width: Any, height: Any) -> tuple[Image | None, str | None]:
    image, reason = read_rgb(path)
    if image is None:
        return None, f"{path}: {reason}"
    if width is not None and height is not None and (width, height) != image.size:
        return None, f"{path} is {image.width}x{image.height} but the record says {width}x{height}"
    return image, None


def score_dataset(
    annotations: Path,
    images_dir: Path,
    *,
    image_scorer: ImageScorer,
    layout_scorer: LayoutScorer | None = None,
    keep_above: float | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> DatasetReport:
    """Score every image and box of a COCO file (see the module docstring)."""
    from tqdm import tqdm

    data = read_coco_file(annotations)
    report = DatasetReport()
    failed_images, failed_boxes = 0, 0

    def fail_image(item: str, reason: str) -> None:
        nonlocal failed_images
        failed_images += 1
        report.failures.append({"item": item, "reason": reason})

    def fail_box(item: str, reason: str) -> None:
        nonlocal failed_boxes
        failed_boxes += 1
        report.failures.append({"item": item, "reason": reason})

    categories = {
        c["id"]: str(c.get("name"))
        for c in data["categories"]
        if isinstance(c, dict) and usable_id(c.get("id"))
    }
    records: dict[Any, dict[str, Any]] = {}
    first_row: dict[Any, int] = {}
    for k, img in enumerate(data["images"]):
        problem = _record_problem(img, ("id", "file_name"))
        if problem is None and img["id"] in records:
            problem = f"images[{k}] repeats the id of images[{first_row[img['id']]}]"
        if problem is None and not (isinstance(img["file_name"], str) and img["file_name"].strip()):
            problem = f"file_name must be a non-empty string, got {img['file_name']!r}"
        if problem is not None:
            known = isinstance(img, dict) and usable_id(img.get("id"))
            fail_image(f"image {img['id']}" if known else f"images[{k}]", problem)
            continue
        records[img["id"]] = img
        first_row[img["id"]] = k
    by_image: dict[Any, list[tuple[str, dict[str, Any]]]] = {key: [] for key in records}
    for k, ann in enumerate(data["annotations"]):
        label = f"annotation {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotations[{k}]"
        problem = _record_problem(ann, ("image_id", "category_id", "bbox"))
        if problem is not None:
            fail_box(label, problem)
        elif ann["image_id"] not in records:
            fail_box(label, f"unknown image id {ann['image_id']!r}")
        elif ann["category_id"] not in categories:
            fail_box(label, f"unknown category id {ann['category_id']!r}")
        else:
            by_image[ann["image_id"]].append((label, ann))

    kept_boxes: set[Any] = set()
    kept_images: set[Any] = set()  # COCO ids
    kept_records: set[int] = set()  # Python ids of their records (a duplicate id is not kept)
    batch: list[tuple[dict[str, Any], Scene, Image, list[dict[str, Any]]]] = []

    def flush() -> None:
        scores = image_scorer.score_scenes([(scene, image) for _, scene, image, _ in batch])
        for (record, scene, _, anns), score in zip(batch, scores, strict=True):
            layout = None
            if layout_scorer is not None:
                layout = layout_scorer.score_layout(
                    [o.category for o in scene.objects], [o.bbox for o in scene.objects]
                )
            clis = compose_clis(layout, score.clis_i)
            for ann, instance in zip(anns, score.objects, strict=True):
                report.boxes.append(
                    {
                        "id": ann.get("id"),
                        "image_id": record["id"],
                        "category": instance.category,
                        "clis_i": round(instance.clis_i, 3),
                        "text_similarity": round(instance.text_similarity, 3),
                        "category_confidence": round(instance.category_confidence, 3),
                    }
                )
                if keep_above is not None and instance.clis_i >= keep_above:
                    kept_boxes.add(id(ann))
            report.images.append(
                {
                    "id": record["id"],
                    "file_name": record.get("file_name"),
                    "clis": round(clis, 3),
                    **layout_fields(layout),
                    "clis_i": round(score.clis_i, 3),
                    "clis_i_global": round(score.global_score, 3),
                    "clis_i_local": round(score.local_score, 3) if score.local_score is not None else None,
                    "boxes": len(anns),
                    "caption": scene.caption,
                }
            )
            if keep_above is not None and clis >= keep_above and (
                not anns or any(id(a) in kept_boxes for a in anns)
            ):
                kept_images.add(record["id"])
                kept_records.add(id(record))
        batch.clear()

    boxes_of_failed_images = 0
    for record in tqdm(records.values(), unit="image", disable=not progress):
        try:  # checked before the file is touched: no answer tells whether it exists
            path = inside(Path(images_dir), record["file_name"], what="file_name")
        except UnsafePathError as error:
            fail_image(f"image {record['id']}", str(error))
            boxes_of_failed_images += len(by_image[record["id"]])
            continue
        image, why = _open(path, record.get("width"), record.get("height"))
        if image is None:
            fail_image(f"image {record['id']}", why or "unreadable")
            boxes_of_failed_images += len(by_image[record["id"]])
            continue
        objects: list[SceneObject] = []
        anns: list[dict[str, Any]] = []
        for label, ann in by_image[record["id"]]:
            problem = _box_problem(ann["bbox"], image.width, image.height)
            if problem:
                fail_box(label, problem)
                continue
            name = categories[ann["category_id"]]
            provenance = ann["acp"] if isinstance(ann.get("acp"), dict) else {}
            description = provenance.get("description") or count_phrase(name, 1)
            bbox = _clipped(ann["bbox"], image.width, image.height)
            objects.append(SceneObject(len(objects), name, str(description), bbox))
            anns.append(ann)
        acp = record["acp"] if isinstance(record.get("acp"), dict) else {}
        caption = acp.get("caption") or build_caption([o.category for o in objects])
        batch.append((record, Scene(str(caption), tuple(objects)), image, anns))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()

    report.categories = _category_summary(report.boxes)
    if keep_above is not None:
        filtered = copy.copy(data)
        filtered["images"] = [img for img in data["images"] if id(img) in kept_records]
        filtered["annotations"] = [
            a for a in data["annotations"] if id(a) in kept_boxes and a["image_id"] in kept_images
        ]
        report.filtered = filtered
    report.summary = {
        "annotations": str(annotations),
        "images": len(data["images"]),
        "scored_images": len(report.images),
        "failed_images": failed_images,
        "boxes": len(data["annotations"]),
        "scored_boxes": len(report.boxes),
        "failed_boxes": failed_boxes,
        "boxes_of_failed_images": boxes_of_failed_images,
        "keep_above": keep_above,
        "kept_images": len(kept_images) if keep_above is not None else None,
        "kept_boxes": len(report.filtered["annotations"]) if report.filtered is not None else None,
        "clip_model": image_scorer.name,
        "bank": bool(layout_scorer is not None and layout_scorer.bank is not None),
    }
    return report


def _category_summary(boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped: dict[str, list[float]] = {}
    for box in boxes:
        grouped.setdefault(box["category"], []).append(box["clis_i"])
    rows = []
    for name, values in sorted(grouped.items()):
        array = np.asarray(values)
        rows.append(
            {
                "category": name,
                "boxes": int(array.size),
                "mean": round(float(array.mean()), 3),
                "median": round(float(np.median(array)), 3),
                "p10": round(float(np.percentile(array, 10)), 3),
                f"below_{SUMMARY_THRESHOLD:g}": round(float((array < SUMMARY_THRESHOLD).mean()), 4),
            }
        )
    return rows


def check_paths(annotations: Path, images_dir: Path, output: Path, *, probe: int = 10) -> None:
    """``InputError`` for what would otherwise fail only once every image is scored (``output``
    cannot take a report) or fail image by image (``images_dir`` is not the folder the first
    ``probe`` file names are relative to). Cheap next to a model load: call it before one."""
    _check_output(Path(output))
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"--images {images_dir}: not a folder; expected the folder of the dataset's images")
    data = read_coco_file(annotations)
    names = [  # only names that stay inside the folder are probed: no check tells what exists outside
        img["file_name"]
        for img in data["images"]
        if isinstance(img, dict) and path_problem(img.get("file_name")) is None
    ][:probe]
    if names and not any(_is_file_inside(images_dir, name) for name in names):
        raise InputError(
            f"--images {images_dir}: none of the first {len(names)} images of {annotations} is there "
            f"(no {images_dir / names[0]}); expected the folder their file_name values are relative to"
        )


def _is_file_inside(folder: Path, name: str) -> bool:
    try:
        return inside(folder, name).is_file()
    except UnsafePathError:
        return False


def _check_output(output: Path) -> None:
    """A report may be written to a new folder, or over an earlier report: its files are
    replaced whole, so rerunning refreshes it. Files of the same names from elsewhere (a
    category file called categories.json) are not replaced."""
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a folder; give another --output")
    if not output.exists():
        existing = next(p for p in output.absolute().parents if p.exists())
        if not existing.is_dir():
            raise InputError(f"-o {output}: {existing} is not a folder")
        return
    clashing = sorted(p.name for p in output.iterdir() if p.name in REPORT_FILES)
    if clashing and not _is_report(output):
        raise InputError(
            f"-o {output}: the folder holds files of no earlier report ({', '.join(clashing)}), "
            "which the report would replace; give another --output"
        )


def _is_report(folder: Path) -> bool:
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"scored_images", "clip_model"} <= summary.keys()
