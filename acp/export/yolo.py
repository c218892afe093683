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
x1 y1 x2 y2 ...``: the outline of the instance's mask (an RLE traced with contourpy's marching
squares, or the COCO polygon as given), simplified to half a pixel, the largest part of a mask
in pieces; an instance without a mask is its box as a rectangle. Boxes are clipped to the
image; crowd boxes (``iscrowd: 1``, which YOLO cannot mark as ignore regions) and boxes left
empty by the clipping are not written, and counted. A mask that cannot be used is written as
its box, and counted: an RLE whose size is not the image's, whose counts are not whole
numbers adding up to its pixels, or of more than ``MAX_MASK_PIXELS`` pixels or
``MAX_RLE_RUNS`` runs; a polygon of anything but finite numbers.

Costs are linear in the input, whatever it holds: an image's record must give its size as
positive whole numbers (else one line names it). An RLE is checked before it is decoded (a
count sum other than its size would make a decoder write past its buffer), decoded with numpy
into one byte a pixel, at most ``MAX_MASK_PIXELS`` (89 MB), cropped to its object and traced on
a grid of at most ``TRACE_CELLS`` cells (an object larger than that is averaged over square
blocks first: a 9000 x 9000 object is traced at 5 px, far below the 1000 points ultralytics
keeps of an outline). Polygon points are clamped to the image; the largest part by area is
simplified, an even sample of at most ``MAX_OUTLINE_POINTS`` of its points, since simplifying
keeps its topology at a cost that grows as the square of the points (a 160k-point zigzag took
171 s) and ultralytics samples every outline to 1000 points when it loads it.

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
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from acp.errors import InputError, quoted
from acp.export.merge import images_root, read_instances
from acp.export.split import SPLITS, Fractions, Split, image_key, split_of
from acp.images import MAX_PIXELS
from acp.owned import check_owned, replace_owned, temp_folder

Task = Literal["detect", "segment"]
Link = Literal["hardlink", "copy", "symlink"]
DATA_YAML = "data.yaml"
CATEGORY_MAP = "categories.json"
WRITTEN_BY = "acp export yolo"
ENTRIES = (DATA_YAML, CATEGORY_MAP, "images", "labels")
SIMPLIFY_PIXELS = 0.5
MAX_MASK_PIXELS = MAX_PIXELS  # an RLE of a larger image is not decoded (one byte a pixel)
MAX_RLE_RUNS = 1 << 22  # runs of an RLE (a compressed one: characters); real masks have thousands
TRACE_CELLS = 1 << 22  # grid cells traced per mask: float64, 32 MiB
MAX_OUTLINE_POINTS = 2048  # points of a part simplified, an even sample of a longer one
MAX_SIDE = (1 << 31) - 1  # an image side in pixels (PNG's own limit)
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
    unusable_masks: int = 0  # written as their boxes
    link: str = "hardlink"

    def line(self) -> str:
        splits = [s for s in SPLITS if s in self.images]
        images = " / ".join(f"{self.images[s]} {s}" for s in splits)
        boxes = " / ".join(str(self.boxes[s]) for s in splits)
        skipped = [f"{n} {what}" for n, what in ((self.crowd_skipped, "crowd boxes"),
                                                (self.empty_skipped, "boxes outside their image")) if n]
        note = f"; not written: {', '.join(skipped)}" if skipped else ""
        if self.unusable_masks:
            note += f"; {self.unusable_masks} masks unusable, written as their boxes"
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
            width, height = _size(image, source, annotations)
            lines = []
            for k in by_image.get(image["id"], ()):
                annotation = coco.annotations[k]
                if annotation.get("iscrowd"):
                    summary.crowd_skipped += 1
                    continue
                line, mask_used = _label_line(annotation, class_of[annotation["category_id"]], width, height,
                                              outline)
                if line is None:
                    summary.empty_skipped += 1
                    continue
                summary.unusable_masks += not mask_used
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


def _size(image: dict[str, Any], source: Path, annotations: Path) -> tuple[int, int]:
    width, height = image.get("width"), image.get("height")
    if width is not None or height is not None:
        if not (_pixels(width) and _pixels(height)):
            raise InputError(f"{annotations}: image {image['id']} ({image['file_name']!r}): width "
                             f"{quoted(width, 30)}, height {quoted(height, 30)}: expected whole numbers of "
                             f"pixels from 1 to {MAX_SIDE}")
        return int(width), int(height)  # type: ignore[arg-type]  # _pixels checked both
    from PIL import Image, UnidentifiedImageError

    try:  # the header only: no pixels are decoded
        with Image.open(source) as opened:
            return opened.size
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(
            f"{source}: no width/height in its record and not a readable image ({error})"
        ) from None


def _pixels(value: Any) -> bool:
    """Whether ``value`` is a side of an image in pixels (640 or 640.0; not NaN, 1e300, true)."""
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and value == int(value) and 1 <= value <= MAX_SIDE)


def _clip_box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box as pixel x0, y0, x1, y1 inside the image, or None when nothing of it is left."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(np.isfinite((x, y, w, h))):
        return None
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return x0, y0, x1, y1


def _label_line(annotation: dict[str, Any], cls: int, width: int, height: int,
                outline: _Outliner | None) -> tuple[str | None, bool]:
    """The label line (None: the box has nothing inside the image), and False when the
    annotation has a mask that could not be used (its box is the outline)."""
    box = _clip_box(annotation.get("bbox"), width, height)
    if box is None:
        return None, True
    x0, y0, x1, y1 = box
    if outline is None:
        xc, yc = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        return f"{cls} {xc:.6f} {yc:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}", True
    segmentation = annotation.get("segmentation")
    points = outline(segmentation, width, height)
    has_mask = bool(segmentation) if isinstance(segmentation, list | dict) else segmentation is not None
    used = points is not None or not has_mask
    if points is None:
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    normalised = np.clip(points / np.array([width, height]), 0.0, 1.0)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in normalised.reshape(-1)), used


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
            parts = [_polygon(p, width, height) for p in segmentation]
            return _simplified(max((p for p in parts if p is not None), key=_area, default=None))
        if isinstance(segmentation, dict):
            mask = decode_rle(segmentation, width, height)
            return _simplified(self._trace(mask)) if mask is not None else None
        return None

    def _trace(self, mask: np.ndarray) -> np.ndarray | None:
        """The largest outline of ``mask``, traced on at most ``TRACE_CELLS`` cells."""
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return None
        top, left = int(rows[0]), int(columns[0])
        crop = mask[top : int(rows[-1]) + 1, left : int(columns[-1]) + 1]
        block = max(1, math.ceil(math.sqrt(crop.size / TRACE_CELLS)))
        # Padded by a block of zeros around (so every outline closes) and to whole blocks; each
        # cell is the share of its block's pixels inside the mask.
        h, w = -(-crop.shape[0] // block) + 2, -(-crop.shape[1] // block) + 2
        grid = np.zeros((h * block, w * block), dtype=np.uint8)
        grid[block : block + crop.shape[0], block : block + crop.shape[1]] = crop
        cells = grid.reshape(h, block, w, block).sum(axis=(1, 3), dtype=np.float64) / (block * block)
        del grid
        generator = self._contourpy.contour_generator(
            z=cells, line_type=self._contourpy.LineType.ChunkCombinedOffset, chunk_size=0)
        lines: Any = generator.lines(0.5)  # one chunk: all points, and where each line starts
        points, offsets = lines[0][0], lines[1][0]
        if points is None or len(offsets) < 2:
            return None
        # The largest closed line by area (shoelace, every line at once). Cell (i, j) is block
        # (i - 1, j - 1) of the crop: its centre is pixel (left + j * block - block / 2, top + ...).
        x, y = points[:, 0], points[:, 1]
        cross = x[:-1] * y[1:] - x[1:] * y[:-1]
        cross = np.append(cross, 0.0)
        cross[offsets[1:] - 1] = 0.0  # no term joins one line to the next
        areas = np.abs(np.add.reduceat(cross, offsets[:-1]))
        k = int(np.argmax(areas))
        line = points[offsets[k] : offsets[k + 1]]
        return line * block - block / 2 + np.array([left, top], dtype=np.float64)


def _polygon(part: Any, width: int, height: int) -> np.ndarray | None:
    """A COCO polygon ``[x1, y1, x2, y2, ...]`` as points clamped to the image, or None."""
    if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in part):
        return None
    try:
        points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # an integer beyond any float
        return None
    if not np.isfinite(points).all():
        return None
    return np.clip(points, 0.0, np.array([width, height], dtype=np.float64))


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _simplified(points: np.ndarray | None) -> np.ndarray | None:
    """``points`` simplified to ``SIMPLIFY_PIXELS``; None when nothing of area is left."""
    from shapely.geometry import Polygon

    if points is None or len(points) < 3 or _area(points) <= 0:
        return None
    if len(points) > MAX_OUTLINE_POINTS:
        points = points[np.linspace(0, len(points) - 1, MAX_OUTLINE_POINTS).round().astype(np.int64)]
    polygon = Polygon(points).simplify(SIMPLIFY_PIXELS, preserve_topology=True)
    if polygon.is_empty or polygon.geom_type != "Polygon" or polygon.area <= 0:
        return None
    best = np.asarray(polygon.exterior.coords)[:-1]
    return best if len(best) >= 3 else None


def decode_rle(segmentation: dict[str, Any], width: int, height: int) -> np.ndarray | None:
    """The mask of a COCO RLE (compressed or not) of a ``width`` x ``height`` image, as a
    ``height`` x ``width`` bool array; None when it is not one (see the module notes)."""
    size = segmentation.get("size")
    if not isinstance(size, list) or size != [height, width] or height * width > MAX_MASK_PIXELS:
        return None
    counts = segmentation.get("counts")
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
    elif isinstance(counts, list) and len(counts) <= MAX_RLE_RUNS:
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_MASK_PIXELS
                   for c in counts):
            return None
        runs = np.asarray(counts, dtype=np.int64)
    else:
        return None
    if runs is None or (runs < 0).any() or int(runs.sum()) != height * width:
        return None
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True  # runs alternate, background first
    return np.repeat(values, runs).reshape(width, height).T  # column-major, as COCO stores it


def _rle_string_counts(text: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, with numpy):
    each count is 5-bit groups, least significant first, a group with bit 0x20 continuing it
    (bit 0x10 of its last group the sign), stored as characters 48 + group; from the fourth
    count on, each is a difference from the count two before. None when it is not one."""
    if len(text) > MAX_RLE_RUNS or not text.isascii():
        return None
    groups = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    if groups.min() < 0 or groups.max() > 63 or groups[-1] & 0x20:
        return None
    ends = np.flatnonzero((groups & 0x20) == 0)  # the last group of each count
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:  # more than 35 bits: beyond any mask's size
        return None
    shift = 5 * (np.arange(groups.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((groups & 0x1F) << shift, starts)
    negative = (groups[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = values.copy()
    counts[3::2] += np.cumsum(values[1::2])[:-1]
    counts[4::2] += np.cumsum(values[2::2])[:-1]
    return counts


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
