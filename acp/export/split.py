"""Train / val / test splits that stay put: each image's split is a function of its own key.

The key is the plan id acp records with every image (``image["acp"]["plan_id"]``), else the
image's ``file_name`` (a COCO file from elsewhere). Its SHA-256 is read as a number ``u`` in
[0, 1): ``u < val`` is val, ``u >= 1 - test`` is test, the rest is train. So a resumed or
extended dataset keeps every image in the split it had (no image of an earlier val set moves
into train), raising ``val`` only moves train images into val, and ``val`` and ``test`` never
trade images. The shares are those of a fair coin per image: within a few images of the
fraction at these sizes, not exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from acp.errors import InputError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SCALE = float(1 << 64)


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
    split_of_image = {image["id"]: split_of(image_key(image), fractions) for image in coco.images}
    written = ("info", "licenses", "categories", "images", "annotations")
    head = {k: v for k, v in coco.data.items() if k not in ("images", "annotations")}
    head = {**{k: head[k] for k in written if k in head},
            **{k: v for k, v in head.items() if k not in written}}
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    boxes: dict[str, int] = {}
    output.mkdir(parents=True, exist_ok=True)
    try:
        for split in fractions.splits():
            path = output / f"{split}.json"
            with atomic_text_file(path) as out:
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
    except ValueError as error:  # NaN or infinity: json.load takes them, JSON does not
        raise InputError(f"{annotations}: holds a number JSON cannot represent ({error})") from None
    return SplitSummary(files=files, images=counts, annotations=boxes)
