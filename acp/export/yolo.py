"""YOLO (ultralytics) layout from a COCO file: ``acp export yolo ANNOTATIONS -o OUT``.

Layout of ``OUT``::

    OUT/data.yaml                   path (absolute), train, val[, test], nc, names (class -> name)
    OUT/categories.json             class id -> COCO category id, name and supercategory
    OUT/images/{train,val,test}/    the images: hard links (copies where the file system has
                                    none), or copies / symbolic links on request
    OUT/labels/{train,val,test}/    one .txt a image, one line a box (empty: background)

Class ids are 0, 1, ... in the order of the COCO category ids (every category, with or
without boxes, so the ids do not depend on the sample). A detect line is ``class x_centre
y_centre width height``, normalised to [0, 1] by the image's size; a segment line is ``class
x1 y1 x2 y2 ...``: the outline of the instance's mask (RLE decoded with pycocotools and traced
with contourpy's marching squares, or the COCO polygon as given), simplified to half a pixel,
the largest part of a mask in pieces; an instance without a mask is its box as a rectangle.
Boxes are clipped to the image; crowd boxes (``iscrowd: 1``, which YOLO cannot mark as
ignore regions) and boxes left empty by the clipping are not written, and counted.

Splits are per image, from ``acp.export.split``. ``path`` in data.yaml is absolute because
ultralytics resolves a relative one against its own datasets folder, not the yaml's: after
moving ``OUT``, edit it (or delete the line; ultralytics then uses the yaml's folder).

``OUT`` may be a new folder, an empty one, or an earlier ``acp export yolo`` output: one that
holds the ``acp-owned.json`` its export wrote, listing every file it wrote (``acp.owned``). A
re-export replaces those files and nothing else: a file of the user's beside them stays, one
inside ``images/`` or ``labels/`` (ultralytics' ``labels/train.cache``, say) is named and
refused, since it would join the new export and is not acp's to delete. Any other non-empty
folder is refused, whatever it holds. The export is built in a temporary sibling folder and
moved in when complete, ``data.yaml`` last, so an interrupted export leaves the previous one
whole, or no ``data.yaml`` (a folder no trainer takes) until the rerun. A hard-linked image is
the same file as the original: edit neither in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from acp.errors import InputError
from acp.export.merge import images_root, read_instances
from acp.export.split import SPLITS, Fractions, Split, image_key, split_of
from acp.owned import check_owned, replace_owned, temp_folder

Task = Literal["detect", "segment"]
Link = Literal["hardlink", "copy", "symlink"]
DATA_YAML = "data.yaml"
CATEGORY_MAP = "categories.json"
WRITTEN_BY = "acp export yolo"
ENTRIES = (DATA_YAML, CATEGORY_MAP, "images", "labels")
SIMPLIFY_PIXELS = 0.5
# Errors of os.link that mean "no hard links here" (another file system, FAT, a policy).
_NO_HARDLINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


@dataclass
class YoloSummary:
    output: Path
    classes: int
    images: dict[str, int] = field(default_factory=dict)  # per split
    boxes: dict[str, int] = field(default_factory=dict)
    crowd_skipped: int = 0
    empty_skipped: int = 0  # boxes with no area left inside their image
    copied: int = 0  # images copied because the file system refused a hard link
    link: str = "hardlink"

    def line(self) -> str:
        splits = [s for s in SPLITS if s in self.images]
        images = " / ".join(f"{self.images[s]} {s}" for s in splits)
        boxes = " / ".join(str(self.boxes[s]) for s in splits)
        skipped = [f"{n} {what}" for n, what in ((self.crowd_skipped, "crowd boxes"),
                                                (self.empty_skipped, "boxes outside their image")) if n]
        note = f"; not written: {', '.join(skipped)}" if skipped else ""
        return f"{images} images, {boxes} boxes, {self.classes} classes{note}"


def export_yolo(
    annotations: Path,
    output: Path,
    *,
    fractions: Fractions,
    images_dir: Path | None = None,
    task: Task = "detect",
    link: Link = "hardlink",
    progress: bool = False,
) -> YoloSummary:
    """Write the YOLO layout of ``annotations`` to ``output`` (see the module docstring)."""
    from tqdm import tqdm

    if task not in ("detect", "segment"):
        raise InputError(f"--task: expected detect or segment, got {task!r}")
    annotations, output = Path(annotations), Path(output)
    check_owned(output, WRITTEN_BY, ENTRIES)
    coco = read_instances(annotations)
    root = images_root(coco, images_dir, "--images", allow_outside=False)
    categories = sorted(coco.categories, key=lambda c: c["id"])
    class_of = {c["id"]: k for k, c in enumerate(categories)}
    outline = _Outliner() if task == "segment" else None

    by_image: dict[int, list[int]] = {}
    for k, annotation in enumerate(coco.annotations):
        by_image.setdefault(annotation["image_id"], []).append(k)
    labels_taken: dict[str, str] = {}
    for image in coco.images:  # before any file is written: two images, one label file
        label = PurePosixPath(image["file_name"]).with_suffix(".txt").as_posix()
        if label in labels_taken:
            raise InputError(f"{annotations}: images {labels_taken[label]!r} and {image['file_name']!r} "
                             f"would share the label file {label}; rename one")
        labels_taken[label] = image["file_name"]
    del labels_taken

    summary = YoloSummary(output=output, classes=len(categories), link=link)
    splits = fractions.splits()
    for split in splits:
        summary.images[split] = summary.boxes[split] = 0
    work = temp_folder(output)
    try:
        for split in splits:
            (work / "images" / split).mkdir(parents=True)
            (work / "labels" / split).mkdir(parents=True)
        for image in tqdm(coco.images, unit="image", disable=not progress):
            split = split_of(image_key(image), fractions)
            source = root / image["file_name"]
            width, height = _size(image, source)
            lines = []
            for k in by_image.get(image["id"], ()):
                annotation = coco.annotations[k]
                if annotation.get("iscrowd"):
                    summary.crowd_skipped += 1
                    continue
                line = _label_line(annotation, class_of[annotation["category_id"]], width, height, outline)
                if line is None:
                    summary.empty_skipped += 1
                    continue
                lines.append(line)
            lines = list(dict.fromkeys(lines))  # ultralytics drops repeated rows with a warning
            name = PurePosixPath(image["file_name"])
            target = work / "images" / split / name
            label_file = work / "labels" / split / name.with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            label_file.parent.mkdir(parents=True, exist_ok=True)
            summary.copied += _place(source, target, link)
            label_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            summary.images[split] += 1
            summary.boxes[split] += len(lines)
        (work / CATEGORY_MAP).write_text(json.dumps(
            [{"class": k, "coco_id": c["id"], "name": c["name"], "supercategory": c.get("supercategory")}
             for k, c in enumerate(categories)], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (work / DATA_YAML).write_text(
            _data_yaml(annotations, output, [c["name"] for c in categories], splits), encoding="utf-8"
        )
        _sync()
        replace_owned(work, output, WRITTEN_BY, commit=DATA_YAML)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _sync() -> None:
    """Everything written on disk before the rename makes it the export: one ``sync`` for the
    whole folder, since an fsync per label file cost 3 ms each (55 of 73 s at 20k images)."""
    if hasattr(os, "sync"):
        os.sync()


def _place(source: Path, target: Path, link: Link) -> int:
    """Put the image ``source`` at ``target``; 1 when it was copied because a hard link was refused."""
    if link == "symlink":
        os.symlink(os.path.abspath(source), target)
        return 0
    if link == "hardlink":
        try:
            os.link(source, target)
            return 0
        except OSError as error:
            if error.errno not in _NO_HARDLINK:
                raise
    shutil.copyfile(source, target)
    return int(link == "hardlink")


def _size(image: dict[str, Any], source: Path) -> tuple[int, int]:
    width, height = image.get("width"), image.get("height")
    if isinstance(width, int | float) and isinstance(height, int | float) and width > 0 and height > 0:
        return int(width), int(height)
    from PIL import Image, UnidentifiedImageError

    try:  # the header only: no pixels are decoded
        with Image.open(source) as opened:
            return opened.size
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(
            f"{source}: no width/height in its record and not a readable image ({error})"
        ) from None


def _clip_box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box as pixel x0, y0, x1, y1 inside the image, or None when nothing of it is left."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite((x, y, w, h))):
        return None
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return x0, y0, x1, y1


def _label_line(annotation: dict[str, Any], cls: int, width: int, height: int,
                outline: _Outliner | None) -> str | None:
    box = _clip_box(annotation.get("bbox"), width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if outline is None:
        xc, yc = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        return f"{cls} {xc:.6f} {yc:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
    points = outline(annotation.get("segmentation"), width, height)
    if points is None:
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    normalised = np.clip(points / np.array([width, height]), 0.0, 1.0)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in normalised.reshape(-1))


class _Outliner:
    """The outline of a COCO segmentation (RLE or polygons) as pixel points, or None."""

    def __init__(self) -> None:
        try:
            import contourpy
        except ImportError:
            raise InputError("--task segment needs contourpy: pip install 'acp[export]'") from None
        self._contourpy = contourpy

    def __call__(self, segmentation: Any, width: int, height: int) -> np.ndarray | None:
        if isinstance(segmentation, list):
            parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segmentation
                     if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            parts = self._trace(_decode(segmentation, width, height))
        else:
            return None
        return _largest_outline(parts)

    def _trace(self, mask: np.ndarray | None) -> list[np.ndarray]:
        if mask is None or not mask.any():
            return []
        padded = np.pad(mask.astype(np.float32), 1)
        generator = self._contourpy.contour_generator(z=padded, line_type=self._contourpy.LineType.Separate)
        # Array index (col, row) of the padded mask to image coordinates: pixel centres sit at
        # i + 0.5, and the padding shifts by one.
        return [np.asarray(line, dtype=np.float64) - 0.5 for line in generator.lines(0.5)]


def _decode(segmentation: dict[str, Any], width: int, height: int) -> np.ndarray | None:
    from pycocotools import mask as mask_utils

    try:
        rle = segmentation
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, *segmentation.get("size", (height, width)))
        elif isinstance(segmentation["counts"], str):
            rle = {**segmentation, "counts": segmentation["counts"].encode("ascii")}
        return np.asarray(mask_utils.decode(rle), dtype=bool)
    except (TypeError, ValueError, KeyError, UnicodeEncodeError):
        return None


def _largest_outline(parts: Sequence[np.ndarray]) -> np.ndarray | None:
    from shapely.geometry import Polygon

    best, best_area = None, 0.0
    for points in parts:
        if len(points) < 3 or not np.isfinite(points).all():
            continue
        polygon = Polygon(points).simplify(SIMPLIFY_PIXELS, preserve_topology=True)
        if polygon.is_empty or polygon.geom_type != "Polygon" or polygon.area <= best_area:
            continue
        best, best_area = np.asarray(polygon.exterior.coords)[:-1], polygon.area
    return best if best is not None and len(best) >= 3 else None


def _data_yaml(annotations: Path, output: Path, names: list[str], splits: tuple[Split, ...]) -> str:
    import yaml

    data: dict[str, Any] = {"path": str(output.resolve()), "train": "images/train"}
    data["val"] = "images/val" if "val" in splits else "images/train"
    if "test" in splits:
        data["test"] = "images/test"
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    header = (f"# acp export yolo of {annotations.resolve()}\n"
              f"# class id -> COCO category id: {CATEGORY_MAP}\n")
    if "val" not in splits:
        header += "# no val split (--val-fraction 0): val is the train folder; point it at your own\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
