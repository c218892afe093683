"""COCO instances writer for a streaming, resumable run.

Layout of an output folder::

    OUT/images/<file_name>      the kept images
    OUT/annotations.json        the COCO instances file (always a complete, valid file)
    OUT/coco_records.jsonl      the writer's append-only log, one line per image

Lifecycle (fiftyone-style): ``CocoWriter(out, categories)``, ``open()``, ``add_image(...)`` per
kept image, ``close()``; or ``with CocoWriter(out, categories) as writer: ...``.

Why a log next to the JSON: ``annotations.json`` is one document and cannot be appended to.
Each image is therefore appended to ``coco_records.jsonl`` as one line holding the image *and*
all its annotations (one ``write`` on an ``O_APPEND`` file, so an image is recorded whole or not
at all). The log is the source of truth; ``annotations.json`` is a checkpoint of it, written to
a temporary file and renamed, every ``checkpoint_every`` images or ``checkpoint_seconds``
(whichever comes first, checked as images are added), at ``open()`` and at ``close()``.

Why a checkpoint costs no JSON work however large the dataset: the JSON text of each image
and of its annotations is made once, in ``add_image`` (the same text goes into its log line),
and kept in memory until the next checkpoint, which writes the header, then the previous
``annotations.json``'s ``images`` elements copied as bytes, the new images, the middle, the
previous ``annotations`` elements as bytes, the new annotations, and the tail. The writer keeps
the file it last renamed open and knows where its two arrays lie, so the copy is an in-kernel
``copy_file_range`` (a plain read/write loop where that is missing): nothing is parsed or
serialised again, no fragment files double the disk use, and a reader still sees the old file
or the new one. It is still O(file size) bytes, because a renamed file must be whole: with its
fsync, 0.06 s at 100k images (a 99 MB file; re-serialising took 3 s) and 0.5-1.2 s at 1M
(1 GB), which a GPU-bound run pays about once a minute. So that a fast writer does not spend
half its time there (1000 checkpoints of a growing file are quadratic), a checkpoint due by
count waits, once a checkpoint takes 50 ms or more (about 80k images), until the time since
the last one is at least 9 times what that one took: the
checkpoints' share of the writer's time stays under ``CHECKPOINT_SHARE`` (10 %), and
``annotations.json`` lags the log by at most max(``checkpoint_seconds``, 9 x the last
checkpoint's cost). Writing the arrays in place would be O(new images) but leaves a torn file
after a crash, or to a reader. The checkpoint runs in the
calling thread: once ``add_image`` returns, a due checkpoint is on disk (callers and tests rely
on that), and at these costs a thread would buy little for its locking and its error hand-off.
``close()`` writes nothing when nothing was added since the last checkpoint and the file is
still the writer's.

Resume: ``open()`` on a folder with a log drops a line torn by a kill, reads the ids back
(next ids = largest used + 1, so none is reused), refuses a log made with other categories
(``OutputMismatchError``), and rebuilds ``annotations.json`` from the log at once (one pass,
spooling the JSON text to unnamed temporary files), so a missing or stale file is repaired
before any new work. An image enters a checkpoint only after its log line is written, so
``annotations.json`` never holds an image the log lacks. The image file is written
(atomically) *before* its log line: after a kill between the two, the image has no record, the
pipeline redoes that scene and the file is overwritten with the same name. ``add_image`` with a
key already in the log returns the existing record unchanged (``resumed=True``), so redoing a
scene never duplicates it. Memory stays flat: the writer keeps the ``key -> (image id, file
name)`` index needed to skip duplicates and the JSON of the images since the last checkpoint.

Ids start at 1. ``file_name`` is relative to ``OUT/images``. Every image carries acp's
provenance (``ImageProvenance``) under the single extra key ``"acp"``; an annotation may carry
``InstanceProvenance`` under ``"acp"`` too. Consumers that do not know the key ignore it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

import acp
from acp import defaults
from acp.atomic import atomic_path, compact_json, copy_atomic
from acp.errors import OutputMismatchError
from acp.export.categories import CategorySet
from acp.export.filenames import safe_filename
from acp.jsonl import drop_torn_tail, iter_lines, loads
from acp.lock import OutputLock
from acp.schema import Candidate, CandidateScore, ScenePlan
from acp.segment import MaskResult

if TYPE_CHECKING:
    from PIL import Image

ANNOTATIONS_NAME = "annotations.json"
IMAGES_DIR = "images"
RECORDS_NAME = "coco_records.jsonl"
RECORDS_FORMAT = 1
LICENSE = {
    "id": 1,
    "name": "unspecified: synthetic image made by acp; the generating models' licenses apply",
    "url": "",
}

ImageFormat = Literal["jpeg", "png"]
_SUFFIX = {"jpeg": ".jpg", "png": ".png"}
# The most of the writer's time that checkpoints may take, once one takes SPACED_CHECKPOINT_S
# or more (see add_image; below that, every due checkpoint is written at once).
CHECKPOINT_SHARE = 0.1
SPACED_CHECKPOINT_S = 0.05
JPEG_QUALITY = 95


@dataclass(frozen=True)
class EncodedImage:
    """An image already encoded as the writer would save it (a Ray worker encodes it, the
    driver writes it): ``add_image`` takes it like a PIL image of that ``size``."""

    data: bytes
    size: tuple[int, int]
    image_format: str


def encode_image(image: Image.Image, image_format: str, jpeg_quality: int = JPEG_QUALITY) -> EncodedImage:
    """The bytes ``CocoWriter`` saves for ``image`` (JPEG at ``jpeg_quality``, or PNG)."""
    import io

    buffer = io.BytesIO()
    if image_format == "jpeg":
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), image.size, image_format)


class ImageProvenance(BaseModel):
    """What made an image, enough to rebuild it (with the plan from ``plans.jsonl``)."""

    model_config = ConfigDict(extra="forbid")

    plan_id: str
    candidate: int = Field(ge=0, description="Index of the kept candidate within its plan.")
    caption: str
    seed: int = Field(description="Render seed of the kept candidate.")
    plan_seed: int | None = None
    planner: str
    planner_model: str | None = None
    render_model: str
    steps: int
    guidance: float
    beta: float
    prompt: str
    negative_prompt: str = ""
    clis: float | None = None
    clis_l: float | None = None
    clis_i: float | None = None
    sam_model: str | None = None
    acp_version: str = acp.__version__

    @classmethod
    def from_records(
        cls,
        plan: ScenePlan,
        candidate: Candidate,
        score: CandidateScore | None = None,
        *,
        sam_model: str | None = None,
    ) -> ImageProvenance:
        return cls(
            plan_id=plan.id,
            candidate=candidate.index,
            caption=plan.caption,
            seed=candidate.seed,
            plan_seed=plan.seed,
            planner=plan.planner,
            planner_model=plan.model,
            render_model=candidate.model,
            steps=candidate.steps,
            guidance=candidate.guidance,
            beta=candidate.beta,
            prompt=candidate.prompt,
            negative_prompt=candidate.negative_prompt,
            clis=score.clis if score else None,
            clis_l=score.clis_l if score else None,
            clis_i=score.clis_i if score else None,
            sam_model=sam_model,
        )


class InstanceProvenance(BaseModel):
    """Per-annotation provenance: the plan object it came from and its scores; with a verifier
    (``acp.score.verify``), its verdict, and for an object the detector found beyond the plan
    (a pseudo-label, or an ignore region) no ``object_id``."""

    model_config = ConfigDict(extra="forbid")

    object_id: int | None = Field(ge=0)
    description: str | None = None
    clis_i: float | None = None
    mask_score: float | None = Field(default=None, description="SAM's predicted IoU of the mask.")
    verification: Literal["verified", "refined", "pseudo-label", "ignore"] | None = None
    detection_score: float | None = Field(default=None, description="The detector's confidence.")
    planned_bbox: list[float] | None = Field(default=None, description="The plan's box, when refined.")

    def record(self) -> dict[str, Any]:
        """As written: the verifier's fields only when set (earlier files never had them)."""
        unused = {k for k in ("verification", "detection_score", "planned_bbox") if getattr(self, k) is None}
        return self.model_dump(mode="json", exclude=unused)


@dataclass(frozen=True)
class Instance:
    """One object to annotate: category id, COCO pixel ``[x, y, w, h]`` box, optional SAM mask."""

    category_id: int
    bbox: tuple[float, float, float, float]
    mask: MaskResult | None = None
    provenance: InstanceProvenance | None = None
    crowd: bool = False  # an ignore region (``iscrowd: 1``)


@dataclass(frozen=True)
class ExportedImage:
    id: int
    file_name: str
    annotations: int  # how many annotations the image has
    resumed: bool  # True when the key was already exported (nothing was written this time)


@dataclass(frozen=True)
class ExportBox:
    """A box a kept image is exported with (``export_boxes``): ``key`` names it in a masks
    mapping (the object id of a planned box; ``"detection K"`` for the score's K-th detection),
    ``bbox`` pixel ``[x, y, w, h]``, ``crowd`` for an ignore region."""

    key: int | str
    category: str
    bbox: tuple[float, float, float, float]
    crowd: bool
    provenance: InstanceProvenance


def export_boxes(plan: ScenePlan, score: CandidateScore | None, size: tuple[int, int],
                 unlabeled: Literal["ignore", "pseudo-label"] | None = None) -> list[ExportBox]:
    """The boxes of a kept image of ``size`` (width, height): its kept objects (the detector's
    box where the score says ``refined``), and with a verifier's score and ``unlabeled``, each
    unlabeled object the detector found (``CandidateScore.unlabeled``) as an ignore region or
    a pseudo-label."""
    from acp.boxes import plan_to_coco

    scores = {o.id: o for o in score.objects} if score else {}
    boxes = plan_to_coco([o.bbox for o in plan.objects], *size).reshape(-1, 4).tolist()
    out = []
    for obj, box in zip(plan.objects, boxes, strict=True):
        object_score = scores.get(obj.id)
        if object_score is not None and not object_score.kept:
            continue
        planned = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        refined = object_score is not None and object_score.verification == "refined"
        found = object_score.detection_bbox if object_score is not None else None
        bbox = planned
        if refined and found:
            bbox = (float(found[0]), float(found[1]), float(found[2]), float(found[3]))
        out.append(ExportBox(obj.id, obj.category, bbox, False, InstanceProvenance(
            object_id=obj.id, description=obj.description,
            clis_i=object_score.clis_i if object_score else None,
            verification=object_score.verification if object_score and object_score.verification != "missing"
            else None,
            detection_score=object_score.detection_score if object_score else None,
            planned_bbox=[round(v, 2) for v in planned] if refined else None)))
    if score is not None and unlabeled is not None:
        index = {id(d): k for k, d in enumerate(score.detections)}
        for detection in score.unlabeled():
            x, y, w, h = detection.bbox
            provenance = InstanceProvenance(object_id=None, verification=unlabeled,
                                            detection_score=detection.score)
            out.append(ExportBox(f"detection {index[id(detection)]}", detection.category, (x, y, w, h),
                                 unlabeled == "ignore", provenance))
    return out


def plan_instances(
    plan: ScenePlan,
    categories: CategorySet,
    *,
    score: CandidateScore | None = None,
    masks: Mapping[int | str, MaskResult] | None = None,
    size: tuple[int, int] | None = None,
    unlabeled: Literal["ignore", "pseudo-label"] | None = None,
    boxes: Sequence[ExportBox] | None = None,
) -> list[Instance]:
    """The instances of ``plan``'s objects (``export_boxes``, or ``boxes`` when given), boxes in
    pixels of ``size`` (width, height of the image; the plan's size by default).

    Objects the score marks as not kept are left out; ``masks`` maps ``ExportBox.key`` (the
    object ids) to masks (boxes without one get none; an ignore region gets its whole box when
    there are masks). A category outside ``categories`` is a ``KeyError``: an unlabelled object
    in an image would teach a detector that it is background.
    """
    size = size or (plan.width, plan.height)
    instances = []
    for box in boxes if boxes is not None else export_boxes(plan, score, size, unlabeled):
        mask = (masks or {}).get(box.key)
        if mask is None and box.crowd and masks is not None:
            mask = _rectangle(box.bbox, size)
        provenance = box.provenance.model_copy(update={"mask_score": mask.score if mask and not box.crowd
                                                       else None})
        instances.append(Instance(category_id=categories.id_for(box.category), bbox=box.bbox, mask=mask,
                                  provenance=provenance, crowd=box.crowd))
    return instances


def _rectangle(box: tuple[float, float, float, float], size: tuple[int, int]) -> MaskResult:
    """An ignore region's mask: its whole box (pixels it touches, inside the image)."""
    import numpy as np

    from acp.segment import encode_masks

    width, height = size
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(math.ceil(box[0] + box[2]), width), min(math.ceil(box[1] + box[3]), height)
    mask = np.zeros((1, height, width), dtype=bool)
    mask[0, y0:y1, x0:x1] = True
    return encode_masks(mask, [1.0], [[x0, y0, x1, y1]])[0]


def _pixel_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """``bbox`` clipped to the image and rounded to 1/100 px; raises when nothing is left."""
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"bbox must be 4 finite numbers, got {list(bbox)}")
    x0, y0 = max(0.0, bbox[0]), max(0.0, bbox[1])
    x1, y1 = min(float(width), bbox[0] + bbox[2]), min(float(height), bbox[1] + bbox[3])
    box = (round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"bbox {list(bbox)} has no area inside the {width}x{height} image")
    return box


_MIDDLE = b'\n],\n"annotations":['
_TAIL = b"\n]}\n"
# copy_file_range cannot copy between these files (another file system, an old kernel):
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM}


class _CheckpointChanged(Exception):
    """The last ``annotations.json`` is shorter than the writer left it."""


@dataclass(frozen=True)
class _Region:
    """``size`` bytes at ``offset`` of the open file ``fd``."""

    fd: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Checkpoint:
    """The ``annotations.json`` the writer last renamed, kept open, and where its arrays' elements lie."""

    fd: int
    images: _Region
    annotations: _Region

    def is_current(self, path: Path) -> bool:
        """Whether ``path`` is still this file (not removed or replaced since)."""
        try:
            named = os.stat(path)
        except FileNotFoundError:
            return False
        held = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _append_elements(fd: int, old: _Region | None, new: bytes | _Region) -> int:
    """Write an array's elements (no brackets) to ``fd``: ``old``'s, then ``new``'s without the
    leading comma when ``old`` has none; returns the size written."""
    size = 0
    if old is not None and old.size:
        _copy(old, fd)
        size = old.size
    new_size = len(new) if isinstance(new, bytes) else new.size
    if new_size:
        skip = 0 if size else 1  # the first element has no comma before it
        if isinstance(new, bytes):
            _write_all(fd, memoryview(new)[skip:])
        else:
            _copy(_Region(new.fd, new.offset + skip, new.size - skip), fd)
        size += new_size - skip
    return size


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(region: _Region, fd: int) -> None:
    """Append ``region`` to ``fd``: in the kernel where it can, else through a buffer."""
    offset, left = region.offset, region.size
    while left:
        try:
            copied = os.copy_file_range(region.fd, fd, left, offset)
        except (AttributeError, OSError) as error:  # AttributeError: not Linux
            if isinstance(error, OSError) and error.errno not in _NO_COPY_FILE_RANGE:
                raise
            chunk = os.pread(region.fd, min(left, 1 << 20), offset)
            _write_all(fd, chunk)
            copied = len(chunk)
        if copied == 0:
            raise _CheckpointChanged
        offset += copied
        left -= copied


class CocoWriter:
    """Writes ``OUT/images`` and ``OUT/annotations.json`` image by image; resumable."""

    def __init__(
        self,
        out_dir: Path,
        categories: CategorySet,
        *,
        description: str = "acp synthetic dataset",
        image_format: ImageFormat = defaults.IMAGE_FORMAT,  # type: ignore[assignment]
        jpeg_quality: int = JPEG_QUALITY,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        lock: OutputLock | None = None,
    ):
        if image_format not in _SUFFIX:
            raise ValueError(f"image_format must be one of {sorted(_SUFFIX)}, got {image_format!r}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if not checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0, got {checkpoint_seconds}")
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / IMAGES_DIR
        self.annotations_path = self.out_dir / ANNOTATIONS_NAME
        self.records_path = self.out_dir / RECORDS_NAME
        self.categories = categories
        self.image_format: ImageFormat = image_format
        self.jpeg_quality = jpeg_quality
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._description = description
        self._category_ids = categories.ids()
        self._info: dict[str, Any] = {}
        self._index: dict[str, tuple[int, str, int]] = {}  # key -> (image id, file name, annotations)
        self._file_names: set[str] = set()
        self._next_image_id = 1
        self._next_annotation_id = 1
        self._annotation_count = 0
        # The JSON of the images (and their annotations) logged since the last checkpoint, each
        # element preceded by ",\n" as it will stand in annotations.json.
        self._new_images: list[bytes] = []
        self._new_annotations: list[bytes] = []
        self._since_checkpoint = 0
        self._checkpointed_at = 0.0
        self._checkpoint_cost = 0.0  # seconds the last checkpoint took
        self._last: _Checkpoint | None = None
        self._log_fd = -1
        # One writer per folder: a second would hand out the same ids. A caller that already
        # holds the folder's lock (a run folder) passes it; otherwise the writer takes it.
        self._given_lock = lock
        self._lock_held = lock or OutputLock(self.out_dir)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> CocoWriter:
        """Create the folder or resume it; rebuilds ``annotations.json`` from the log."""
        if self._log_fd >= 0:
            return self
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._resume()
        except BaseException:
            self._release()
            raise
        return self

    def _resume(self) -> None:
        # Temporary files of writes cut short by a kill; no other writer can be mid-write now.
        for stale in (*self.images_dir.glob(".*.tmp"), *self.out_dir.glob(f".{ANNOTATIONS_NAME}.*.tmp")):
            stale.unlink(missing_ok=True)
        drop_torn_tail(self.records_path)
        self._log_fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._rebuild()

    def close(self) -> Path:
        """Write the final ``annotations.json`` and release the folder; returns its path."""
        if self._log_fd < 0:
            return self.annotations_path
        try:
            self.checkpoint()
        finally:
            self._release()
        return self.annotations_path

    def _release(self) -> None:
        for fd in (self._log_fd, self._last.fd if self._last else -1):
            if fd >= 0:
                os.close(fd)
        self._log_fd = -1
        self._last = None
        self._unlock()

    def __enter__(self) -> CocoWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def image_count(self) -> int:
        return len(self._index)

    @property
    def annotation_count(self) -> int:
        return self._annotation_count

    def __contains__(self, key: object) -> bool:
        """Whether an image with this key (e.g. a plan id) is already exported."""
        return key in self._index

    # -- writing ---------------------------------------------------------------------------

    def add_image(
        self,
        key: str,
        image: Image.Image | Path | EncodedImage,
        instances: Sequence[Instance],
        provenance: ImageProvenance | None = None,
    ) -> ExportedImage:
        """Save ``image`` under ``OUT/images`` and record it with its annotations.

        ``key`` identifies the image across runs (the plan id); the file name is made from it by
        ``safe_filename``. ``image`` is a PIL image (saved as ``image_format``), the same
        already encoded (``encode_image``), or a path to an image file (copied as is, keeping
        its suffix). A key already exported is not written
        again. Raises ``ValueError`` for an instance with an unknown category, a box outside the
        image, or a mask that is empty or of another size: those are the caller's to filter.
        """
        if self._log_fd < 0:
            raise RuntimeError("CocoWriter.open() must be called before add_image()")
        if key in self._index:
            image_id, file_name, count = self._index[key]
            return ExportedImage(id=image_id, file_name=file_name, annotations=count, resumed=True)
        width, height = self._image_size(image)
        image_id = self._next_image_id
        annotations = [self._annotation(i, image_id, width, height) for i in instances]
        file_name = self._file_name(key, image)
        image_record: dict[str, Any] = {
            "id": image_id,
            "file_name": file_name,
            "width": width,
            "height": height,
            "license": LICENSE["id"],
        }
        if provenance is not None:
            image_record["acp"] = provenance.model_dump(mode="json")
        for offset, annotation in enumerate(annotations):
            annotation["id"] = self._next_annotation_id + offset
        # The log line is {"kind","key","image","annotations"} made of the very text that goes
        # into annotations.json. A NaN score or an unencodable key fails here, before any write.
        image_json = compact_json(image_record)
        annotation_jsons = [compact_json(a) for a in annotations]
        line = (
            f'{{"kind":"image","key":{compact_json(key)},"image":{image_json},'
            f'"annotations":[{",".join(annotation_jsons)}]}}\n'
        ).encode()
        new_image = (",\n" + image_json).encode()
        new_annotations = "".join(",\n" + a for a in annotation_jsons).encode()

        self._save_image(image, self.images_dir / file_name)
        self._append_log(line)

        self._remember(key, image_id, file_name, [a["id"] for a in annotations])
        self._new_images.append(new_image)
        self._new_annotations.append(new_annotations)
        self._since_checkpoint += 1
        elapsed = monotonic() - self._checkpointed_at
        due = self._since_checkpoint >= self.checkpoint_every or elapsed >= self.checkpoint_seconds
        # A checkpoint is O(file size): past a million images one takes a second, so slow ones
        # are spaced to keep their share of the writer's time under CHECKPOINT_SHARE.
        spaced = self._checkpoint_cost >= SPACED_CHECKPOINT_S
        if due and (not spaced or elapsed >= self._checkpoint_cost * (1 / CHECKPOINT_SHARE - 1)):
            self.checkpoint()
        return ExportedImage(id=image_id, file_name=file_name, annotations=len(annotations), resumed=False)

    def checkpoint(self) -> None:
        """Bring ``annotations.json`` up to date with every image added (atomic; no work when it
        already is)."""
        if self._log_fd < 0:
            raise RuntimeError("CocoWriter.open() must be called before checkpoint()")
        if self._last is None:  # the last rebuild failed: only the log knows everything
            self._rebuild()
            return
        if self._since_checkpoint == 0 and self._last.is_current(self.annotations_path):
            self._checkpointed_at = monotonic()
            return
        try:
            self._write_annotations(b"".join(self._new_images), b"".join(self._new_annotations))
        except _CheckpointChanged:  # someone cut the file the writer held: start again from the log
            self._rebuild()
            return
        self._new_images.clear()
        self._new_annotations.clear()
        self._since_checkpoint = 0

    def _rebuild(self) -> None:
        """Read the whole log back (index and JSON text) and write ``annotations.json`` from it."""
        self._index.clear()
        self._file_names.clear()
        self._next_image_id = self._next_annotation_id = 1
        self._annotation_count = 0
        self._new_images.clear()
        self._new_annotations.clear()
        self._since_checkpoint = 0
        if self._last is not None:
            os.close(self._last.fd)
            self._last = None
        with tempfile.TemporaryFile(dir=self.out_dir) as images, tempfile.TemporaryFile(
            dir=self.out_dir
        ) as annotations:
            header = self._load_log(images, annotations)
            if header is None:
                self._info = {
                    "description": self._description,
                    "version": acp.__version__,
                    "year": _dt.date.today().year,
                    "contributor": "acp",
                    "url": "",
                    "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                header_line = {
                    "kind": "header",
                    "format": RECORDS_FORMAT,
                    "info": self._info,
                    "categories": self.categories.to_coco(),
                }
                self._append_log((compact_json(header_line) + "\n").encode())
            images.flush()
            annotations.flush()
            self._write_annotations(
                _Region(images.fileno(), 0, images.tell()),
                _Region(annotations.fileno(), 0, annotations.tell()),
            )

    def _write_annotations(self, images: bytes | _Region, annotations: bytes | _Region) -> None:
        """Write ``annotations.json``: the last checkpoint's arrays plus ``images`` and
        ``annotations`` (elements each preceded by ",\n"), to a temporary file renamed over it.
        The new file stays open as the next checkpoint's source."""
        started = monotonic()
        header = (
            '{"info":' + compact_json(self._info)
            + ',"licenses":' + compact_json([LICENSE])
            + ',"categories":' + compact_json(self.categories.to_coco())
            + ',\n"images":['
        ).encode()
        last = self._last
        fd = -1
        try:
            with atomic_path(self.annotations_path) as tmp:
                fd = os.open(tmp, os.O_RDWR)
                _write_all(fd, header)
                images_at = len(header)
                images_size = _append_elements(fd, last.images if last else None, images)
                _write_all(fd, _MIDDLE)
                annotations_at = images_at + images_size + len(_MIDDLE)
                annotations_size = _append_elements(fd, last.annotations if last else None, annotations)
                _write_all(fd, _TAIL)
                os.fsync(fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        if last is not None:
            os.close(last.fd)
        self._last = _Checkpoint(
            fd, _Region(fd, images_at, images_size), _Region(fd, annotations_at, annotations_size)
        )
        self._checkpointed_at = monotonic()
        self._checkpoint_cost = self._checkpointed_at - started

    # -- helpers ---------------------------------------------------------------------------

    def _append_log(self, line: bytes) -> None:
        written = os.write(self._log_fd, line)
        if written != len(line):  # a short write only happens on a full disk
            raise OSError(f"short write to {self.records_path}: {written} of {len(line)} bytes")

    def _annotation(self, instance: Instance, image_id: int, width: int, height: int) -> dict[str, Any]:
        if instance.category_id not in self._category_ids:
            raise ValueError(f"category_id {instance.category_id} is not among the dataset's categories")
        x, y, w, h = _pixel_box(instance.bbox, width, height)
        annotation: dict[str, Any] = {
            "id": 0,  # assigned when the image is recorded
            "image_id": image_id,
            "category_id": instance.category_id,
            "bbox": [x, y, w, h],
            "area": round(w * h, 2),
            "iscrowd": 1 if instance.crowd else 0,
        }
        mask = instance.mask
        if mask is not None:
            if mask.area <= 0 or mask.problem:
                raise ValueError(f"mask not usable ({mask.problem or 'empty'}): drop it before export")
            if list(mask.rle.get("size", [])) != [height, width]:
                raise ValueError(
                    f"mask size {mask.rle.get('size')} differs from the image's [{height}, {width}]"
                )
            annotation["segmentation"] = {"size": [height, width], "counts": mask.rle["counts"]}
            annotation["area"] = mask.area
        if instance.provenance is not None:
            annotation["acp"] = instance.provenance.record()
        return annotation

    def _image_size(self, image: Image.Image | Path | EncodedImage) -> tuple[int, int]:
        if isinstance(image, Path | str):
            from acp.images import image_size

            return image_size(Path(image))
        return image.size

    def _file_name(self, key: str, image: Image.Image | Path | EncodedImage) -> str:
        if isinstance(image, EncodedImage) and image.image_format != self.image_format:
            raise ValueError(f"image encoded as {image.image_format}, the writer saves {self.image_format}")
        suffix = Path(image).suffix.lower() if isinstance(image, Path | str) else _SUFFIX[self.image_format]
        if not suffix:
            raise ValueError(f"image file {image} needs a suffix such as .png: readers go by it")
        name = safe_filename(key) + suffix
        if name in self._file_names:  # two keys that sanitise alike: keep both, apart
            digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
            name = f"{safe_filename(key)}-{digest}{suffix}"
        return name

    def _save_image(self, image: Image.Image | Path | EncodedImage, target: Path) -> None:
        if isinstance(image, Path | str):
            copy_atomic(Path(image), target)
            return
        if not isinstance(image, EncodedImage):
            image = encode_image(image, self.image_format, self.jpeg_quality)
        with atomic_path(target) as tmp:
            tmp.write_bytes(image.data)

    def _remember(self, key: str, image_id: int, file_name: str, annotation_ids: list[int]) -> None:
        self._index[key] = (image_id, file_name, len(annotation_ids))
        self._file_names.add(file_name)
        self._next_image_id = max(self._next_image_id, image_id + 1)
        if annotation_ids:
            self._next_annotation_id = max(self._next_annotation_id, max(annotation_ids) + 1)
        self._annotation_count += len(annotation_ids)

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for number, text in iter_lines(self.records_path):
            try:
                record = loads(text)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or record.get("kind") not in ("header", "image"):
                raise OutputMismatchError(
                    f"{self.records_path}:{number}: not an acp COCO record; move the folder away or "
                    "use another output folder"
                )
            yield number, record

    def _load_log(self, images: BinaryIO, annotations: BinaryIO) -> dict[str, Any] | None:
        """Read the log back into the index, writing the JSON text of its images and annotations
        (each preceded by ",\n") to ``images`` and ``annotations``; returns the log's header, or
        None for a new log."""
        header = None
        for number, record in self._records():
            if record["kind"] == "header":
                if header is None:
                    header = record
                    self._check_header(record)
                continue
            if header is None:
                raise OutputMismatchError(f"{self.records_path}:{number}: image record before the header")
            try:
                image = record["image"]
                annotation_ids = [int(a["id"]) for a in record["annotations"]]
                self._remember(record["key"], int(image["id"]), image["file_name"], annotation_ids)
            except (KeyError, TypeError, ValueError):
                raise OutputMismatchError(f"{self.records_path}:{number}: malformed image record") from None
            images.write((",\n" + compact_json(image)).encode())
            if record["annotations"]:
                annotations.write("".join(",\n" + compact_json(a) for a in record["annotations"]).encode())
        return header

    def _check_header(self, header: dict[str, Any]) -> None:
        if header.get("format") != RECORDS_FORMAT:
            raise OutputMismatchError(
                f"{self.records_path}: written by another acp version (format {header.get('format')}, "
                f"expected {RECORDS_FORMAT}); use another output folder"
            )
        if header.get("categories") != self.categories.to_coco():
            raise OutputMismatchError(
                f"{self.out_dir}: holds a dataset with other categories; rerun with the same concepts "
                "and category file, or use another output folder"
            )
        self._info = header.get("info") or {}

    def _lock(self) -> None:
        if self._given_lock is None:
            self._lock_held.acquire()
        elif not self._given_lock.held:
            raise RuntimeError("CocoWriter: the lock given is not held")

    def _unlock(self) -> None:
        if self._given_lock is None:
            self._lock_held.release()
