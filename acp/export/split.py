"""Train / val / test splits that stay put: each image's split is a function of its own key.

The key is the plan id acp records with every image (``image["acp"]["plan_id"]``), else the
image's ``file_name`` (a COCO file from elsewhere). Its SHA-256 is read as a number ``u`` in
[0, 1): ``u < val`` is val, ``u >= 1 - test`` is test, the rest is train. So a resumed or
extended dataset keeps every image in the split it had (no image of an earlier val set moves
into train), raising ``val`` only moves train images into val, and ``val`` and ``test`` never
trade images. The shares are those of a fair coin per image: within a few images of the
fraction at these sizes, not exact.

The split files of one ``split_coco`` run are one set: each begins with ``"acp_split": {"run":
..., "splits": [...]}``, the same run id in each, naming the splits of the set. A rerun replaces
only split files that begin so (a ``val.json`` of the user's is refused, not overwritten), and
removes those of a split it no longer writes (an old ``test.json`` would otherwise hold images
now in train). A file system renames one file at a time, so the set is replaced in an order
that keeps every moment consistent: the old ``train.json`` goes first, then the other old
files; the new files are renamed in with ``train.json`` last. Whatever moment a run is killed
at, the files present are of one run, never an image in two splits, and a ``train.json``
present means its whole set is; the rerun writes the set whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from acp.errors import InputError
from acp.paths import open_regular

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SCALE = float(1 << 64)
MARKER = "acp_split"
_MARKED = re.compile(rb'\{"acp_split":\{"run":"[0-9a-f]{32}"')


@dataclass(frozen=True)
class Fractions:
    """Shares of val and test; train is the rest."""

    val: float
    test: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("--val-fraction", self.val), ("--test-fraction", self.test)):
            if not 0.0 <= value < 1.0:
                raise InputError(f"{name}: expected a fraction in [0, 1), got {value:g}")
        if self.val + self.test >= 1.0:
            raise InputError(
                f"--val-fraction {self.val:g} + --test-fraction {self.test:g} leave no training images; "
                "expected a sum under 1"
            )

    def splits(self) -> tuple[Split, ...]:
        """The splits this set of shares can produce, in order."""
        return tuple(s for s in SPLITS if s == "train" or (self.val if s == "val" else self.test) > 0)


def image_key(image: Mapping[str, Any]) -> str:
    """What decides an image's split: acp's plan id, else its file name."""
    provenance = image.get("acp")
    if isinstance(provenance, Mapping) and isinstance(provenance.get("plan_id"), str):
        return "plan:" + provenance["plan_id"]
    return "file:" + str(image.get("file_name"))


def split_of(key: str, fractions: Fractions) -> Split:
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / _SCALE
    if u < fractions.val:
        return "val"
    if u >= 1.0 - fractions.test:
        return "test"
    return "train"


@dataclass(frozen=True)
class SplitSummary:
    files: dict[str, Path]  # split -> COCO file written
    images: dict[str, int]
    annotations: dict[str, int]


def split_coco(
    annotations: Path,
    output: Path,
    *,
    fractions: Fractions,
    images_dir: Path | None = None,
) -> SplitSummary:
    """``output/train.json``, ``val.json`` (and ``test.json``): the images of ``annotations``
    by split, each with its annotations and every category, ids unchanged. Each ``file_name``
    is relative to ``output`` (as in ``acp export merge``), so ``output`` is the image root a
    loader is given; a file name that would need ``..`` is refused (write the splits into a
    folder that holds the images: the default, the annotations file's folder, does)."""
    from acp.atomic import atomic_text_file, compact_json
    from acp.export.merge import images_root, read_instances, relative_to
    from acp.paths import UnsafePathError, path_problem

    annotations, output = Path(annotations), Path(output)
    coco = read_instances(annotations)
    root = images_root(coco, images_dir, "--images", allow_outside=False)
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a folder; give a folder for the split files")
    # Every file_name is a plain relative path (images_root checked), so one prefix moves them all.
    prefix = relative_to(root, output)
    if prefix != "." and path_problem(prefix) is not None:
        raise UnsafePathError(
            f"-o {output}: the images folder {root} is outside it, so every file_name would leave the "
            f"split files' folder ({prefix!r}); give an -o that holds the images folder"
        )
    prefix = "" if prefix == "." else prefix + "/"
    stale = _own_split_files(output, annotations)
    split_of_image = {image["id"]: split_of(image_key(image), fractions) for image in coco.images}
    splits = fractions.splits()
    written = ("info", "licenses", "categories", "images", "annotations")
    head = {k: v for k, v in coco.data.items() if k not in ("images", "annotations", MARKER)}
    head = {MARKER: {"run": uuid.uuid4().hex, "splits": list(splits)},
            **{k: head[k] for k in written if k in head},
            **{k: v for k, v in head.items() if k not in written}}
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    boxes: dict[str, int] = {}
    output.mkdir(parents=True, exist_ok=True)
    try:
        # train is entered first, so renamed last: see the module notes.
        with ExitStack() as renames:
            for split in splits:
                path = output / f"{split}.json"
                out = renames.enter_context(atomic_text_file(path))
                out.write("{" + ",".join(compact_json(k) + ":" + compact_json(v) for k, v in head.items()))
                out.write(',\n"images":[')
                n = 0
                for image in coco.images:
                    if split_of_image[image["id"]] == split:
                        moved = {**image, "file_name": prefix + image["file_name"]}
                        out.write(("," if n else "") + "\n" + compact_json(moved))
                        n += 1
                out.write('\n],\n"annotations":[')
                m = 0
                for annotation in coco.annotations:
                    if split_of_image[annotation["image_id"]] == split:
                        out.write(("," if m else "") + "\n" + compact_json(annotation))
                        m += 1
                out.write("\n]}\n")
                files[split], counts[split], boxes[split] = path, n, m
            for path in stale:  # train.json first
                path.unlink(missing_ok=True)
    except ValueError as error:  # NaN or infinity: json.load takes them, JSON does not
        raise InputError(f"{annotations}: holds a number JSON cannot represent ({error})") from None
    return SplitSummary(files=files, images=counts, annotations=boxes)


def is_split_file(path: Path) -> bool:
    """Whether ``path`` is a split file ``split_coco`` wrote (it begins with its mark)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open_regular(path) as handle:
        return _MARKED.match(handle.read(64)) is not None


def _own_split_files(output: Path, annotations: Path) -> list[Path]:
    """The split files in ``output`` that an earlier ``split_coco`` wrote (train.json first);
    ``InputError`` for one that it did not, or that is the input."""
    found = []
    for split in SPLITS:
        path = output / f"{split}.json"
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_file():
            raise InputError(f"-o {output}: {path.name} is not a file split_coco wrote; move it away "
                             "or give another -o")
        if annotations.exists() and path.samefile(annotations):
            raise InputError(f"-o {output}: would replace the input {annotations}; give another -o")
        with open_regular(path) as handle:
            start = handle.read(64)
        if not _MARKED.match(start):
            raise InputError(
                f"-o {output}: {path.name} exists and was not written by acp export coco-split (it "
                f"does not begin with its {MARKER!r} mark); acp replaces only its own: move it away "
                "or give another -o"
            )
        found.append(path)
    return found
