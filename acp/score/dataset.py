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

A layout score covers the ``MAX_OBJECTS_PER_IMAGE`` (20) largest boxes of an image, the boxes
among which a bank forms its pairs (``acp.score.bank``): every pair of a crowded image's
hundreds of boxes would cost time quadratic in its boxes for little more evidence.

``score_dataset(annotations, images, output)`` writes the report folder (a new or empty one, or
an earlier report: one whose ``acp-owned.json`` lists the files its run wrote, see
``acp.owned``). The report is built in a temporary sibling folder and moved in when complete,
``summary.json`` last, replacing the files of the earlier report and nothing else (a
``filtered/`` of an earlier ``--keep-above`` run goes with them; ``report.html`` and the
user's files stay): an interrupted run leaves the earlier report whole, or no
``summary.json`` until the rerun. It holds ``images.json`` and ``boxes.json`` (JSON arrays,
one record a line), ``failures.json`` (``item`` and ``reason``), ``categories.json`` (per category: boxes,
mean, median, 10th percentile, share below the threshold), ``summary.json``, and with
``keep_above`` the filtered copy, a dataset folder ``filtered/``: ``annotations.json`` (the input
COCO, its keys in order, with the kept rows) and ``images``, a relative symbolic link to the
images folder, so its ``file_name`` values resolve from where it sits, as in an acp dataset.
An image is kept when it scores at least ``keep_above`` and none of its boxes failed. A box
scoring below it is not simply removed, which would leave its object in the image as
unlabelled background (a detector trained on the copy learns to ignore such objects): by
default (``removed_boxes="drop-image"``) its image leaves the copy; with ``"ignore"`` the image
stays and the box is written as an ignore region (``iscrowd: 1``). An annotation whose ``id`` is
missing or repeats an earlier one's is renumbered after the largest id, and counted.

With a verifier (``--verify`` / ``--detector-model``, ``acp.score.verify``) every image is also
searched for every category of the set (the names as phrases, ``aerosol_can`` as "aerosol
can"): each box is verified or missing (``verification``, and its best detection's IoU, score
and box in ``boxes.json``), each confident detection that no box of its category matches and no
crowd box covers is an unlabeled object (``unlabeled`` per image), and ``summary.json`` holds
the counts and the label fidelity, COCO AP and AP50 of the detections against the labels
(``acp.score.fidelity``; per category in ``verification.json``). ``detections.json`` lists each
image's detections (what ``acp report`` draws beside the labels). In the filtered copy a missing
box is a removed box (its image leaves, or with ``ignore`` the box becomes an ignore region), and
an unlabeled object removes its image (with ``ignore``: it is added as an ignore region, the
detection's box with ``iscrowd: 1``). What the verifier holds until the end grows with the
boxes and detections (a few numbers each), not with the images' pixels.

Crowd boxes (``iscrowd: 1``) are ignore regions, not objects: they are not scored (as a bank
leaves them out) and stay with their image in the filtered copy. Each box row of ``boxes.json``
holds its ``bbox``, and with ``keep_above`` image and box rows say whether they were ``kept``
(what ``acp report`` draws); ``summary.json`` names the images folder (``images_dir``).

Memory does not grow with the results: each image, box and failure row is written to its
temporary file as soon as it is known; the category statistics are running sums and a
histogram of 0.1-wide bins (exact count, mean and share; median and 10th percentile within
0.05); the filtered copy is streamed from the input by the rows kept. Only the input itself,
parsed whole, and its index (image rows by id, box rows per image) grow with the dataset.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np
from numpy.typing import NDArray

from acp.atomic import atomic_text_file
from acp.boxes import coco_to_plan, plan_to_coco
from acp.coco import read_coco_file, usable_id
from acp.english import count_phrase, listing
from acp.errors import InputError, quoted
from acp.images import read_rgb
from acp.owned import check_owned, replace_owned, temp_folder
from acp.paths import UnsafePathError, inside, path_problem
from acp.score.bank import MAX_OBJECTS_PER_IMAGE, OUT_OF_IMAGE_TOLERANCE
from acp.score.candidates import compose_clis, layout_fields
from acp.score.fidelity import Fidelity
from acp.score.image import ImageScorer, Scene, SceneObject
from acp.score.layout import LayoutScore, LayoutScorer
from acp.score.pixels import image_size, to_device
from acp.score.verify import PlannedBox, covers, object_fields

if TYPE_CHECKING:
    from PIL.Image import Image

    from acp.schema import DetectedBox
    from acp.score.pixels import Picture
    from acp.score.verify import CandidateCheck, Verifier

SUMMARY_THRESHOLD = 60.0  # the paper's instance threshold, for the per-category share
FILTERED_DIR = "filtered"  # the filtered copy, a dataset folder: annotations.json and images/
FILTERED_NAME = f"{FILTERED_DIR}/annotations.json"
VERIFICATION = "verification.json"  # with a verifier: per-category counts and label fidelity
DETECTIONS = "detections.json"  # with a verifier: each image's detections
REPORT_FILES = ("images.json", "boxes.json", "categories.json", "failures.json", "summary.json",
                FILTERED_DIR, VERIFICATION, DETECTIONS)  # what a report writes
WRITTEN_BY = "acp score dataset"
RemovedBoxes = Literal["drop-image", "ignore"]


@dataclass
class DatasetReport:
    """What ``score_dataset`` wrote: its files, the per-category rows and the run summary. The
    per-image and per-box results are in the files only."""

    files: list[Path]
    categories: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def failed(self) -> int:
        """Items listed in ``failures.json``."""
        return int(self.summary["failed_images"]) + int(self.summary["failed_boxes"])


class _JsonArray:
    """A JSON array written element by element to an open text file, one element a line."""

    def __init__(self, handle: TextIO):
        self.handle = handle
        self.count = 0
        handle.write("[")

    def add(self, value: Any) -> None:
        self.handle.write(",\n" if self.count else "\n")
        self.handle.write(json.dumps(value, ensure_ascii=False, allow_nan=False))
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n]\n" if self.count else "]\n")


class _CategoryStats:
    """Running CLIS-I statistics of one category: exact count, mean and share below the
    threshold; median and 10th percentile from a histogram of 0.1-wide bins over 0-100 (the
    quantiles are those of the values rounded to 0.1, so within 0.05 of the exact ones), in
    memory that does not grow with the boxes."""

    BINS_PER_POINT = 10

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.below = 0
        self.histogram = np.zeros(100 * self.BINS_PER_POINT + 1, dtype=np.int64)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.below += value < SUMMARY_THRESHOLD
        self.histogram[min(max(round(value * self.BINS_PER_POINT), 0), self.histogram.size - 1)] += 1

    def quantile(self, q: float) -> float:
        """As ``np.percentile(values, 100 q)`` (linear interpolation between order statistics)."""
        position = q * (self.count - 1)
        below, above = math.floor(position), math.ceil(position)
        cumulative = np.cumsum(self.histogram)
        low, high = np.searchsorted(cumulative, [below + 1, above + 1]) / self.BINS_PER_POINT
        return float(low + (high - low) * (position - below))

    def row(self, name: str) -> dict[str, Any]:
        return {
            "category": name,
            "boxes": self.count,
            "mean": round(self.total / self.count, 3),
            "median": round(self.quantile(0.5), 3),
            "p10": round(self.quantile(0.1), 3),
            f"below_{SUMMARY_THRESHOLD:g}": round(self.below / self.count, 4),
        }


def _largest(objects: tuple[SceneObject, ...], count: int) -> tuple[SceneObject, ...]:
    """The ``count`` largest objects, in their own order."""
    if len(objects) <= count:
        return objects
    by_area = sorted(range(len(objects)), key=lambda k: -objects[k].bbox[2] * objects[k].bbox[3])
    return tuple(objects[k] for k in sorted(by_area[:count]))


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
            return f"{key} must be a number or a string, got {quoted(record[key])}"
    return None


def _box_problem(bbox: Any, width: float, height: float) -> str | None:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return f"bbox must be 4 numbers [x, y, w, h], got {quoted(bbox)}"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of 400 digits
        return f"bbox must be 4 numbers [x, y, w, h], got {quoted(bbox)}"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return f"degenerate bbox {quoted(bbox)} (expected finite values, w and h > 0)"
    tol = OUT_OF_IMAGE_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {quoted(bbox)} leaves the {width:g}x{height:g} image"
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
        return None, (f"{path} is {image.width}x{image.height} but the record says "
                      f"{quoted(width, 30)}x{quoted(height, 30)}")
    return image, None


def score_dataset(
    annotations: Path,
    images_dir: Path,
    output: Path,
    *,
    image_scorer: ImageScorer,
    layout_scorer: LayoutScorer | None = None,
    keep_above: float | None = None,
    removed_boxes: RemovedBoxes = "drop-image",
    batch_size: int = 8,
    progress: bool = False,
    on_failure: Callable[[str, str], None] | None = None,
    verifier: Verifier | None = None,
) -> DatasetReport:
    """Score every image and box of a COCO file into the report folder ``output`` (see the
    module docstring). ``on_failure(item, reason)`` is called as each failure is found;
    ``verifier`` checks every box and finds unlabeled objects."""
    if removed_boxes not in ("drop-image", "ignore"):
        raise InputError(f"--removed-boxes: expected drop-image or ignore, got {removed_boxes!r}")
    output = Path(output)
    _check_output(output)
    data = read_coco_file(annotations)
    names = ["images.json", "boxes.json", "categories.json", "failures.json", "summary.json"]
    if verifier is not None:
        names += [VERIFICATION, DETECTIONS]
    if keep_above is not None:
        names.append(FILTERED_NAME)
    work = temp_folder(output)
    try:
        summary, categories = _write_report(work, output, data, names, annotations, images_dir,
                                            image_scorer=image_scorer, layout_scorer=layout_scorer,
                                            keep_above=keep_above, removed_boxes=removed_boxes,
                                            batch_size=batch_size, progress=progress, on_failure=on_failure,
                                            verifier=verifier)
        replace_owned(work, output, WRITTEN_BY, commit="summary.json")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return DatasetReport(files=[output / name for name in names], categories=categories, summary=summary)


def _write_report(
    work: Path, output: Path, data: dict[str, Any], names: list[str], annotations: Path, images_dir: Path,
    *, image_scorer: ImageScorer, layout_scorer: LayoutScorer | None, keep_above: float | None,
    removed_boxes: RemovedBoxes, batch_size: int, progress: bool,
    on_failure: Callable[[str, str], None] | None, verifier: Verifier | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score into the files ``names`` of ``work``, the next content of ``output``."""
    with ExitStack() as files:
        handles = {name: files.enter_context(atomic_text_file(work / name)) for name in names}
        images_out, boxes_out, failures_out = (
            _JsonArray(handles[name]) for name in ("images.json", "boxes.json", "failures.json")
        )
        run = _Run(data, images_out, boxes_out, failures_out, on_failure)
        run.removed_boxes = removed_boxes
        if verifier is not None:
            run.checks = _Checks(verifier, run.categories, _JsonArray(handles[DETECTIONS]))
        run.score(Path(images_dir), image_scorer, layout_scorer, keep_above, batch_size, progress)
        for array in (images_out, boxes_out, failures_out, *([run.checks.out] if run.checks else [])):
            array.close()
        categories = [stats.row(name) for name, stats in sorted(run.stats.items())]
        handles["categories.json"].write(json.dumps(categories, indent=1, ensure_ascii=False,
                                                    allow_nan=False) + "\n")
        renumbered = 0
        if keep_above is not None:
            renumbered = _write_filtered(handles[FILTERED_NAME], data, run.kept_images, run.kept_boxes,
                                         run.ignored_boxes, run.checks.regions if run.checks else [])
            _link_images(work / FILTERED_DIR, output / FILTERED_DIR, Path(images_dir))
        summary = {
            "annotations": str(annotations),
            "images_dir": str(Path(images_dir).resolve()),
            "images": len(data["images"]),
            "scored_images": images_out.count,
            "failed_images": run.failed_images,
            "boxes": len(data["annotations"]),
            "scored_boxes": boxes_out.count,
            "failed_boxes": run.failed_boxes,
            "boxes_of_failed_images": run.boxes_of_failed_images,
            "crowd_boxes": run.crowd_boxes,
            "keep_above": keep_above,
            "removed_boxes": removed_boxes if keep_above is not None else None,
            "kept_images": int(run.kept_images.sum()) if keep_above is not None else None,
            "kept_boxes": int(run.kept_boxes.sum()) if keep_above is not None else None,
            "ignored_boxes": int(run.ignored_boxes.sum()) if keep_above is not None else None,
            "renumbered_annotations": renumbered if keep_above is not None else None,
            "clip_model": image_scorer.name,
            "bank": bool(layout_scorer is not None and layout_scorer.bank is not None),
        }
        if run.checks is not None:
            summary.update(run.checks.finish(handles[VERIFICATION], keep_above is not None))
        handles["summary.json"].write(json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False)
                                      + "\n")
    return summary, categories


class _Run:
    """One scoring pass. Holds the input's index (the rows to score, the box rows of each image)
    and which rows are kept, never a result: every image, box and failure row goes to its file
    as soon as it is known."""

    def __init__(
        self,
        data: dict[str, Any],
        images_out: _JsonArray,
        boxes_out: _JsonArray,
        failures_out: _JsonArray,
        on_failure: Callable[[str, str], None] | None,
    ):
        self.data = data
        self.images_out, self.boxes_out, self.failures_out = images_out, boxes_out, failures_out
        self.on_failure = on_failure
        self.failed_images = self.failed_boxes = self.boxes_of_failed_images = self.crowd_boxes = 0
        self.removed_boxes: RemovedBoxes = "drop-image"
        self.checks: _Checks | None = None
        self.stats: dict[str, _CategoryStats] = {}
        # Kept rows, and the index below: numpy arrays of a few bytes a row, not Python objects.
        self.kept_images = np.zeros(len(data["images"]), dtype=bool)  # rows in the filtered copy
        self.kept_boxes = np.zeros(len(data["annotations"]), dtype=bool)
        self.ignored_boxes = np.zeros(len(data["annotations"]), dtype=bool)  # kept as iscrowd 1
        # Boxes of each image row that could not be scored: such an image leaves the filtered copy.
        self.failed_in_image = np.zeros(len(data["images"]), dtype=np.int64)
        self.categories = {
            c["id"]: str(c.get("name"))
            for c in data["categories"]
            if isinstance(c, dict) and usable_id(c.get("id"))
        }
        rows: dict[Any, int] = {}  # image id -> row in data["images"]; the first of a repeated id
        for k, img in enumerate(data["images"]):
            problem = _record_problem(img, ("id", "file_name"))
            if problem is None and img["id"] in rows:
                problem = f"images[{k}] repeats the id of images[{rows[img['id']]}]"
            if problem is None and not (isinstance(img["file_name"], str) and img["file_name"].strip()):
                problem = f"file_name must be a non-empty string, got {img['file_name']!r}"
            if problem is not None:
                known = isinstance(img, dict) and usable_id(img.get("id"))
                self.fail_image(f"image {img['id']}" if known else f"images[{k}]", problem)
                continue
            rows[img["id"]] = k
        self.image_rows = np.fromiter(rows.values(), dtype=np.int64, count=len(rows))  # to score, in order
        owner = np.full(len(data["annotations"]), -1, dtype=np.int64)  # image row of each usable box
        for k, ann in enumerate(data["annotations"]):
            problem = _record_problem(ann, ("image_id", "category_id", "bbox"))
            if problem is None and ann["image_id"] not in rows:
                problem = f"unknown image id {ann['image_id']!r}"
            elif problem is None and ann["category_id"] not in self.categories:
                problem = f"unknown category id {ann['category_id']!r}"
            if problem is not None:
                self.fail_box(_box_label(k, ann), problem)
                if isinstance(ann, dict) and usable_id(ann.get("image_id")) and ann["image_id"] in rows:
                    self.failed_in_image[rows[ann["image_id"]]] += 1
            else:
                owner[k] = rows[ann["image_id"]]
        usable = np.flatnonzero(owner >= 0)
        # The boxes of image row r: box_rows[box_offsets[r]:box_offsets[r + 1]], in file order.
        self.box_rows = usable[np.argsort(owner[usable], kind="stable")]
        self.box_offsets = np.searchsorted(owner[self.box_rows], np.arange(len(data["images"]) + 1))

    def _fail(self, item: str, reason: str) -> None:
        self.failures_out.add({"item": item, "reason": reason})
        if self.on_failure is not None:
            self.on_failure(item, reason)

    def fail_image(self, item: str, reason: str) -> None:
        self.failed_images += 1
        self._fail(item, reason)

    def fail_box(self, item: str, reason: str) -> None:
        self.failed_boxes += 1
        self._fail(item, reason)

    def score(
        self,
        images_dir: Path,
        image_scorer: ImageScorer,
        layout_scorer: LayoutScorer | None,
        keep_above: float | None,
        batch_size: int,
        progress: bool,
    ) -> None:
        from tqdm import tqdm

        batch: list[tuple[int, Scene, Image, list[int], list[int]]] = []
        for row in tqdm(self.image_rows.tolist(), unit="image", disable=not progress):
            item = self._prepare(row, images_dir)
            if item is not None:
                batch.append(item)
            if len(batch) >= batch_size:
                self._flush(batch, image_scorer, layout_scorer, keep_above)
        if batch:
            self._flush(batch, image_scorer, layout_scorer, keep_above)

    def _prepare(self, row: int, images_dir: Path) -> tuple[int, Scene, Image, list[int], list[int]] | None:
        """The image of ``row`` read and its boxes checked; ``None`` (and a failure) if unreadable."""
        record = self.data["images"][row]
        boxes = self.box_rows[self.box_offsets[row]:self.box_offsets[row + 1]].tolist()
        try:  # checked before the file is touched: no answer tells whether it exists
            path = inside(images_dir, record["file_name"], what="file_name")
        except UnsafePathError as error:
            self.fail_image(f"image {record['id']}", str(error))
            self.boxes_of_failed_images += len(boxes)
            return None
        image, why = _open(path, record.get("width"), record.get("height"))
        if image is None:
            self.fail_image(f"image {record['id']}", why or "unreadable")
            self.boxes_of_failed_images += len(boxes)
            return None
        objects: list[SceneObject] = []
        kept: list[int] = []
        crowd: list[int] = []
        for k in boxes:
            ann = self.data["annotations"][k]
            if ann.get("iscrowd"):  # an ignore region, not an object: not scored, as in a bank
                self.crowd_boxes += 1
                crowd.append(k)
                continue
            problem = _box_problem(ann["bbox"], image.width, image.height)
            if problem:
                self.fail_box(_box_label(k, ann), problem)
                self.failed_in_image[row] += 1
                continue
            name = self.categories[ann["category_id"]]
            provenance = ann["acp"] if isinstance(ann.get("acp"), dict) else {}
            description = provenance.get("description") or count_phrase(name, 1)
            bbox = _clipped(ann["bbox"], image.width, image.height)
            objects.append(SceneObject(len(objects), name, str(description), bbox))
            kept.append(k)
        acp = record["acp"] if isinstance(record.get("acp"), dict) else {}
        caption = acp.get("caption") or build_caption([o.category for o in objects])
        return row, Scene(str(caption), tuple(objects)), image, kept, crowd

    def _flush(
        self,
        batch: list[tuple[int, Scene, Image, list[int], list[int]]],
        image_scorer: ImageScorer,
        layout_scorer: LayoutScorer | None,
        keep_above: float | None,
    ) -> None:
        pictures: Sequence[Picture] = [image for _, _, image, _, _ in batch]
        if self.checks is not None:  # CLIP and the detector read one copy on the device
            pictures = to_device(pictures, image_scorer.device)
        scores = image_scorer.score_scenes([(scene, picture) for (_, scene, _, _, _), picture in
                                            zip(batch, pictures, strict=True)])
        checks: list[CandidateCheck | None] = [None] * len(batch)
        if self.checks is not None:  # one detection pass for the batch
            checks = list(self.checks.check([(picture, scene) for (_, scene, _, _, _), picture in
                                             zip(batch, pictures, strict=True)]))
        layouts: list[LayoutScore | None] = [None] * len(batch)
        if layout_scorer is not None:  # the largest boxes, as the bank forms its pairs; one pass
            largest = [_largest(scene.objects, MAX_OBJECTS_PER_IMAGE) for _, scene, _, _, _ in batch]
            layouts = list(layout_scorer.score_layouts(
                [([o.category for o in objects], [o.bbox for o in objects], (), None) for objects in largest]
            ))
        for (row, scene, image, boxes, crowd), score, layout, check in zip(batch, scores, layouts, checks,
                                                                          strict=True):
            record = self.data["images"][row]
            clis = compose_clis(layout, score.clis_i)
            # The filtered copy: an image with a box that could not be scored is left out, as is
            # (by default) one with a box under the threshold or missing to the detector, or
            # an object no box labels, which would otherwise teach a detector that the object is
            # background; "ignore" keeps it, the box (and the unlabeled object) as iscrowd 1.
            verdicts = check.boxes if check is not None else [None] * len(score.objects)
            passing = [keep_above is not None and instance.clis_i >= keep_above
                       and (verdict is None or verdict.verified)
                       for instance, verdict in zip(score.objects, verdicts, strict=True)]
            crowd_boxes = [self.data["annotations"][k] for k in crowd]
            unlabeled = self.checks.unlabeled(check, crowd_boxes) if self.checks is not None and check else []
            kept_image = (keep_above is not None and clis >= keep_above and not self.failed_in_image[row]
                          and ((all(passing) and not unlabeled) or self.removed_boxes == "ignore"))
            if kept_image and unlabeled and self.checks is not None:
                self.checks.add_regions(record["id"], unlabeled)
            if self.checks is not None and check is not None:
                self.checks.record(record, image, scene, crowd_boxes, check, unlabeled)
            for k, instance, passed, verdict in zip(boxes, score.objects, passing, verdicts, strict=True):
                box_id = self.data["annotations"][k].get("id")
                box = {
                    "id": box_id if usable_id(box_id) else None,
                    "image_id": record["id"],
                    "category": instance.category,
                    "bbox": self.data["annotations"][k]["bbox"],
                    "clis_i": round(instance.clis_i, 3),
                    "text_similarity": round(instance.text_similarity, 3),
                    "category_confidence": round(instance.category_confidence, 3),
                }
                if verdict is not None:
                    box.update(object_fields(verdict, refine=False))
                if keep_above is not None:
                    box["kept"] = bool(kept_image and passed)
                self.boxes_out.add(box)
                # The summary is of the rounded scores, as boxes.json lists them.
                self.stats.setdefault(instance.category, _CategoryStats()).add(round(instance.clis_i, 3))
                if kept_image:
                    self.kept_boxes[k] = passed
                    self.ignored_boxes[k] = not passed
            image_row = {
                "id": record["id"],
                "file_name": record.get("file_name"),
                "clis": round(clis, 3),
                **layout_fields(layout),
                "clis_i": round(score.clis_i, 3),
                "clis_i_global": round(score.global_score, 3),
                "clis_i_local": round(score.local_score, 3) if score.local_score is not None else None,
                "boxes": len(boxes),
                "caption": scene.caption,
            }
            if check is not None:
                image_row["verification"] = (round(check.verification, 3)
                                             if check.verification is not None else None)
                image_row["unlabeled"] = len(unlabeled)
            if keep_above is not None:
                image_row["kept"] = bool(kept_image)
            self.images_out.add(image_row)
            if kept_image:
                self.kept_images[row] = True
                self.kept_boxes[crowd] = True  # ignore regions stay ignore regions
        batch.clear()


class _Checks:
    """The verifier's part of a scoring pass (module notes): every category asked in every
    image, the verdicts, the label-fidelity columns, per-category counts, and the ignore regions
    the filtered copy adds."""

    def __init__(self, verifier: Verifier, categories: dict[Any, str], detections_out: _JsonArray):
        from acp.balance import prompt_phrase

        self.verifier, self.categories, self.out = verifier, categories, detections_out
        self.phrase_of = {name: prompt_phrase(name) for name in dict.fromkeys(categories.values())}
        self.name_of: dict[str, str] = {}  # the first category a phrase names
        for name, phrase in self.phrase_of.items():
            self.name_of.setdefault(phrase, name)
        self.id_of: dict[str, Any] = {}
        for category_id, name in categories.items():
            self.id_of.setdefault(name, category_id)
        self.queries = list(self.name_of)
        self.fidelity = Fidelity()
        self.counts: dict[str, Counter[str]] = {}
        self.regions: list[dict[str, Any]] = []
        self.images_with_unlabeled = 0

    def check(self, items: list[tuple[Picture, Scene]]) -> list[CandidateCheck]:
        """One detection pass over the images, each asked for every category of the set."""
        prepared = []
        for image, scene in items:
            boxes = plan_to_coco([o.bbox for o in scene.objects], *image_size(image)).reshape(-1, 4).tolist()
            planned = [PlannedBox(o.id, self.phrase_of[o.category], (b[0], b[1], b[2], b[3]))
                       for o, b in zip(scene.objects, boxes, strict=True)]
            prepared.append((image, planned, self.queries))
        return self.verifier.check(prepared)

    def unlabeled(self, check: CandidateCheck, crowd: list[dict[str, Any]]) -> list[DetectedBox]:
        """Confident detections no box of their category matched, nor a crowd box covers."""
        return [d for d in check.unplanned if not any(covers(ann["bbox"], d.bbox) for ann in crowd)]

    def record(self, record: dict[str, Any], image: Image, scene: Scene, crowd: list[dict[str, Any]],
               check: CandidateCheck, unlabeled: list[DetectedBox]) -> None:
        """Count an image's verdicts, keep its labels and detections for the AP, write its row."""
        for obj, verdict in zip(scene.objects, check.boxes, strict=True):
            counts = self.counts.setdefault(obj.category, Counter())
            counts["verified" if verdict.verified else "missing"] += 1
        for found in unlabeled:
            self.counts.setdefault(self.name_of[found.category], Counter())["unlabeled"] += 1
        self.images_with_unlabeled += bool(unlabeled)
        boxes = plan_to_coco([o.bbox for o in scene.objects], *image.size).reshape(-1, 4).tolist()
        labels = [(o.category, b, False) for o, b in zip(scene.objects, boxes, strict=True)]
        labels += [(self.categories[ann["category_id"]], ann["bbox"], True) for ann in crowd]
        self.fidelity.add(labels, [(self.name_of[d.category], d.score, d.bbox) for d in check.detections])
        verification = check.verification
        self.out.add({"id": record["id"], "file_name": record.get("file_name"),
                      "verification": round(verification, 3) if verification is not None else None,
                      "unlabeled": len(unlabeled),
                      "detections": [{**d.model_dump(mode="json"), "category": self.name_of[d.category]}
                                     for d in check.detections]})

    def add_regions(self, image_id: Any, unlabeled: list[DetectedBox]) -> None:
        """The filtered copy's ignore regions for an image's unlabeled objects."""
        for found in unlabeled:
            x, y, w, h = found.bbox
            category = self.id_of[self.name_of[found.category]]
            self.regions.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                                 "area": round(w * h, 2), "iscrowd": 1,
                                 "acp": {"verification": "ignore", "detection_score": found.score}})

    def finish(self, handle: TextIO, filtered: bool) -> dict[str, Any]:
        """Write ``verification.json``; return the summary's verifier fields."""
        fidelity = self.fidelity.result().record()
        by_name = {c["category"]: c for c in fidelity["categories"]}
        rows = []
        for name in sorted(set(self.counts) | set(by_name)):
            counts, figures = self.counts.get(name, Counter()), by_name.get(name, {})
            rows.append({"category": name, "verified": counts["verified"], "missing": counts["missing"],
                         "unlabeled": counts["unlabeled"], "ap": figures.get("ap"),
                         "ap50": figures.get("ap50"), "detections": figures.get("detections", 0)})
        thresholds = self.verifier.thresholds
        kinds = ("verified", "missing", "unlabeled")
        total = {key: sum(c[key] for c in self.counts.values()) for key in kinds}
        label_fidelity = {"ap": fidelity["ap"], "ap50": fidelity["ap50"]}
        handle.write(json.dumps({
            "detector_model": self.verifier.detector.name, "detector_family": self.verifier.detector.family,
            "detection_threshold": thresholds.min_score, "unplanned_threshold": thresholds.confident_score,
            "verify_iou": thresholds.match_iou, **total, "images_with_unlabeled": self.images_with_unlabeled,
            "label_fidelity": label_fidelity, "categories": rows}, indent=1, ensure_ascii=False) + "\n")
        return {"detector_model": self.verifier.detector.name, "verified_boxes": total["verified"],
                "missing_boxes": total["missing"], "unlabeled_objects": total["unlabeled"],
                "images_with_unlabeled": self.images_with_unlabeled, "label_fidelity": label_fidelity,
                "added_ignore_regions": len(self.regions) if filtered else None}


def _box_label(row: int, ann: Any) -> str:
    return f"annotation {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotations[{row}]"


def _write_filtered(
    handle: TextIO, data: dict[str, Any], kept_images: NDArray[np.bool_], kept_boxes: NDArray[np.bool_],
    ignored_boxes: NDArray[np.bool_], regions: list[dict[str, Any]] | None = None,
) -> int:
    """The input COCO with only the kept rows of its images and annotations, streamed record by
    record (the same text as ``json.dumps`` of the filtered copy, which is never built). Ignored
    boxes are written with ``iscrowd: 1``; an annotation whose ``id`` is missing or repeats an
    earlier one's gets a new id after the largest; returns how many did. ``regions`` (the
    verifier's ignore regions of unlabeled objects) follow the annotations, numbered after them."""
    kept = {"images": kept_images, "annotations": kept_boxes | ignored_boxes}
    numbered = (a["id"] for a in data["annotations"] if isinstance(a, dict) and isinstance(a.get("id"), int))
    next_id = 1 + max((i for i in numbered if not isinstance(i, bool)), default=0)
    seen: set[Any] = set()
    renumbered = 0
    handle.write("{")
    for n, (key, value) in enumerate(data.items()):
        handle.write((", " if n else "") + json.dumps(key, ensure_ascii=False) + ": ")
        if key not in kept:
            handle.write(_copied(value, key))
            continue
        handle.write("[")
        last = 0
        for written, k in enumerate(np.flatnonzero(kept[key]).tolist()):
            record = value[k]
            if key == "annotations":
                if not usable_id(record.get("id")) or record["id"] in seen:
                    record = {**record, "id": next_id}
                    next_id += 1
                    renumbered += 1
                seen.add(record["id"])
                if ignored_boxes[k]:
                    record = {**record, "iscrowd": 1}
            handle.write((", " if written else "") + _copied(record, f"{key}[{k}]"))
            last = written + 1
        if key == "annotations":
            for region in regions or []:
                text = _copied({"id": next_id, **region}, "an ignore region")
                handle.write((", " if last else "") + text)
                next_id += 1
                last += 1
        handle.write("]")
    handle.write("}\n")
    return renumbered


def _copied(value: Any, where: str) -> str:
    """``value`` of the input as JSON text for the filtered copy. NaN and infinity, which the
    input may hold (``json`` reads them, 1e999 too), are no JSON: one ``InputError`` naming
    where, not an invalid file."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InputError(f"{where} of the input holds NaN or infinity, which JSON cannot hold; the "
                         "filtered copy would repeat it") from None


def _link_images(folder: Path, final: Path, images_dir: Path) -> None:
    """``folder/images``: a relative symbolic link to the scored images folder, right once
    ``folder`` is moved to ``final``, so that the filtered copy's ``file_name`` values resolve
    from where it sits, as in an acp dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(images_dir.resolve(), final.resolve())
    os.symlink(target, folder / "images", target_is_directory=True)


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
    """A report may be written to a new or empty folder, or over an earlier report (its
    ``acp-owned.json``), replacing only the files that report wrote."""
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a folder; give another --output")
    if not output.exists():
        existing = next(p for p in output.absolute().parents if p.exists())
        if not existing.is_dir():
            raise InputError(f"-o {output}: {existing} is not a folder")
        return
    try:
        check_owned(output, WRITTEN_BY, REPORT_FILES)
    except InputError as error:
        raise InputError(f"-o {error}") from None
