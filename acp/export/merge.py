"""Merge a synthetic COCO file into a real one: ``acp export merge SYNTHETIC REAL -o MERGED``.

- Categories are unified by name with the rules of ``acp.export.categories`` (case, plural,
  synonyms): a synthetic category that matches a real one takes the real id; one that matches
  none is added with a new id after the real ones. A synthetic category with a real one's id
  and exact name (a set exported with REAL's categories) keeps that id, unmatched. The real
  file's ids, categories (with all their keys, e.g. LVIS's ``frequency``), images and
  annotations are kept as they are.
- Synthetic image and annotation ids are renumbered after the largest real id, so every id is
  unique; licenses are merged the same way.
- Paths: a COCO ``file_name`` is relative to an images folder that the JSON does not name. In
  MERGED, every ``file_name`` is relative to **the folder holding MERGED** (give that folder
  as the image root when training). Each input's images folder is ``--synthetic-images`` /
  ``--real-images`` when given, else the first of ``<json folder>/images`` and ``<json folder>``
  that holds the input's first image (acp writes ``OUT/images`` next to ``OUT/annotations.json``).
  Every image must exist there, so a merged file never points at nothing. Every path stays
  inside its folder: an input ``file_name`` that leaves its images folder (absolute, ``..``, a
  symbolic link out) is refused, and so is a MERGED that would need ``..`` to reach an image
  (put MERGED in a folder that holds both image folders; supervision, for one, refuses such
  paths too). ``allow_outside_paths`` (``--allow-outside-paths``) lifts both rules;
  ``MergeSummary.outside_paths`` then counts the paths that leave MERGED's folder.
- MERGED is written atomically (temporary file and rename). It begins with
  ``"acp_merge": {"version": ...}``, the mark of a file this command wrote: an existing
  MERGED without it (an input, a file of the user's) is replaced only with ``overwrite``; an
  earlier merge is replaced by a rerun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import acp
from acp.atomic import atomic_text_file, compact_json
from acp.errors import InputError
from acp.export.categories import CategoryMatcher, load_json_file, parse_categories
from acp.paths import COCO_FILE_BYTES, UnsafePathError, inside, open_regular, path_problem

MARKER = "acp_merge"


@dataclass(frozen=True)
class MergeSummary:
    output: Path
    real_images: int
    synthetic_images: int
    annotations: int
    categories: int
    matched: dict[str, str] = field(default_factory=dict)  # synthetic name -> real name
    added: list[str] = field(default_factory=list)  # synthetic categories new to the real set
    outside_paths: int = 0  # file names that climb out of MERGED's folder with ".."


@dataclass
class CocoInstances:
    path: Path
    data: dict[str, Any]
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]


def _is_merge(path: Path) -> bool:
    """Whether ``path`` begins with the mark ``merge_coco`` writes first."""
    with open_regular(path) as handle:
        return handle.read(len(MARKER) + 4) == b'{"' + MARKER.encode() + b'":'


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_instances(path: Path) -> CocoInstances:
    """Load and check a COCO instances file; every problem is one ``InputError`` line."""
    data = load_json_file(path, limit=COCO_FILE_BYTES)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise InputError(
            f"{path}: not a COCO instances file (expected an object with 'images', 'annotations' "
            "and 'categories' lists)"
        )
    parse_categories(data["categories"], str(path))
    category_ids = {c["id"] for c in data["categories"]}
    image_ids: set[int] = set()
    for index, image in enumerate(data["images"]):
        valid = isinstance(image, dict) and _is_id(image.get("id"))
        valid = valid and isinstance(image.get("file_name"), str)
        if not valid:
            raise InputError(f"{path}: images[{index}] needs an integer 'id' and a 'file_name' string")
        if image["id"] in image_ids:
            raise InputError(f"{path}: image id {image['id']} appears twice")
        image_ids.add(image["id"])
    annotation_ids: set[int] = set()
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not all(
            _is_id(annotation.get(k)) for k in ("id", "image_id", "category_id")
        ):
            raise InputError(
                f"{path}: annotations[{index}] needs integer 'id', 'image_id' and 'category_id'"
            )
        if annotation["id"] in annotation_ids:
            raise InputError(f"{path}: annotation id {annotation['id']} appears twice")
        annotation_ids.add(annotation["id"])
        if annotation["image_id"] not in image_ids:
            raise InputError(f"{path}: annotation {annotation['id']} names image {annotation['image_id']}, "
                             "which is not in 'images'")
        if annotation["category_id"] not in category_ids:
            raise InputError(f"{path}: annotation {annotation['id']} names category "
                             f"{annotation['category_id']}, which is not in 'categories'")
    return CocoInstances(path, data, data["images"], data["annotations"], data["categories"])


def images_root(coco: CocoInstances, given: Path | None, option: str, allow_outside: bool) -> Path:
    """The folder the input's ``file_name`` values are relative to; every image must be there.

    Unless ``allow_outside``, a ``file_name`` that leaves that folder is refused before any
    file is looked at, so the merge neither probes nor points at files outside it."""
    if not coco.images:
        return given or coco.path.parent
    if not allow_outside:
        for index, image in enumerate(coco.images):
            problem = path_problem(image["file_name"])
            if problem is not None:
                raise UnsafePathError(f"{coco.path}: images[{index}].file_name: {problem}; "
                                      "pass --allow-outside-paths to merge such paths")
    roots = [given] if given is not None else [coco.path.parent / "images", coco.path.parent]
    first = coco.images[0]["file_name"]
    root = next((r for r in roots if (r / first).is_file()), None)
    if root is None:
        where = " or ".join(str(r) for r in roots)
        raise InputError(f"{coco.path}: image {first!r} not found under {where}; pass {option} DIR")
    if not allow_outside:  # links planted in the images folder
        for index, image in enumerate(coco.images):
            inside(root, image["file_name"], what=f"{coco.path}: images[{index}].file_name")
    missing = [i["file_name"] for i in coco.images if not (root / i["file_name"]).is_file()]
    if missing:
        raise InputError(
            f"{coco.path}: {len(missing)} of {len(coco.images)} images missing under {root} "
            f"(first: {missing[0]!r})"
        )
    return root


def relative_to(target: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(folder))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(os.path.abspath(target)).as_posix()


def _next_id(values: list[dict[str, Any]]) -> int:
    return max((int(v["id"]) for v in values), default=0) + 1


def merge_coco(
    synthetic: Path,
    real: Path,
    output: Path,
    *,
    synthetic_images: Path | None = None,
    real_images: Path | None = None,
    overwrite: bool = False,
    allow_outside_paths: bool = False,
) -> MergeSummary:
    """Write ``output``: ``real`` plus ``synthetic`` with unified categories and unique ids.

    ``output`` may be one of the inputs only with ``overwrite``; a ``file_name`` that leaves its
    images folder (in an input) or the output's folder (in the output) needs
    ``allow_outside_paths``."""
    synthetic, real, output = Path(synthetic), Path(real), Path(output)
    for given, role in ((real, "REAL"), (synthetic, "SYNTHETIC")):
        if not overwrite and output.exists() and given.exists() and output.samefile(given):
            raise InputError(f"-o {output} is the {role} input; write the merge to a new file "
                             "(or pass --overwrite to replace the input)")
    if os.path.lexists(output) and (output.is_dir() or not (overwrite or _is_merge(output))):
        raise InputError(f"-o {output}: exists and is not a file acp export merge wrote (no {MARKER!r} "
                         "mark at its start); give a new file, or --overwrite to replace it")
    syn, ref = read_instances(synthetic), read_instances(real)
    syn_root = images_root(syn, synthetic_images, "--synthetic-images", allow_outside_paths)
    ref_root = images_root(ref, real_images, "--real-images", allow_outside_paths)

    # Categories: real ids win; synthetic-only categories are appended.
    matcher = CategoryMatcher(parse_categories(ref.categories, str(real)))
    category_map: dict[int, int] = {}
    matched: dict[str, str] = {}
    added: list[str] = []
    categories = list(ref.categories)
    next_category = _next_id(ref.categories)
    real_by_id = {c["id"]: c for c in ref.categories}
    for category in syn.categories:
        same = real_by_id.get(category["id"])
        if same is not None and same["name"] == category["name"]:
            # Exported with REAL's categories (`generate --categories REAL`, `--balance REAL`):
            # the same id and name is the same category, whatever a name match would say.
            category_map[category["id"]] = category["id"]
            continue
        candidates = matcher.candidates(category["name"])
        if len(candidates) > 1:
            names = ", ".join(repr(c.name) for c in candidates)
            raise InputError(
                f"{synthetic}: category {category['name']!r} is ambiguous in {real} ({names}); rename it"
            )
        if candidates:
            found = candidates[0]
            category_map[category["id"]] = found.id
            matched[category["name"]] = found.name
            continue
        category_map[category["id"]] = next_category
        categories.append({**category, "id": next_category})
        added.append(category["name"])
        next_category += 1

    # Licenses: real ones kept; a synthetic one equal in name and url to a real one is shared.
    licenses = [dict(x) for x in ref.data.get("licenses") or [] if isinstance(x, dict)]
    known = {(x.get("name"), x.get("url")): x.get("id") for x in licenses}
    license_map: dict[Any, Any] = {}
    next_license = max((x["id"] for x in licenses if _is_id(x.get("id"))), default=0) + 1
    for entry in syn.data.get("licenses") or []:
        if not isinstance(entry, dict):
            continue
        signature = (entry.get("name"), entry.get("url"))
        if signature not in known:
            known[signature] = next_license
            licenses.append({**entry, "id": next_license})
            next_license += 1
        license_map[entry.get("id")] = known[signature]

    folder = output.parent
    image_offset = _next_id(ref.images) - min((i["id"] for i in syn.images), default=0)
    annotation_offset = _next_id(ref.annotations) - min((a["id"] for a in syn.annotations), default=0)
    outside = 0

    def moved(image: dict[str, Any], root: Path) -> dict[str, Any]:
        nonlocal outside
        file_name = relative_to(root / image["file_name"], folder)
        if path_problem(file_name) is not None:
            if not allow_outside_paths:
                raise UnsafePathError(
                    f"-o {output}: image {root / image['file_name']} is outside {folder}, so its "
                    f"file_name would leave the merged file's folder ({file_name!r}); write the merge "
                    "into a folder that holds both image folders, or pass --allow-outside-paths"
                )
            outside += 1
        return {**image, "file_name": file_name}

    def synthetic_image(image: dict[str, Any]) -> dict[str, Any]:
        image = {**moved(image, syn_root), "id": image["id"] + image_offset}
        if "license" in image:
            image["license"] = license_map.get(image["license"], image["license"])
        return image

    def synthetic_annotation(annotation: dict[str, Any]) -> dict[str, Any]:
        return {
            **annotation,
            "id": annotation["id"] + annotation_offset,
            "image_id": annotation["image_id"] + image_offset,
            "category_id": category_map[annotation["category_id"]],
        }

    written = ("info", "licenses", "categories", "images", "annotations", MARKER)
    extra = {k: v for k, v in ref.data.items() if k not in written}
    info = ref.data.get("info") if isinstance(ref.data.get("info"), dict) else syn.data.get("info") or {}
    images = [moved(i, ref_root) for i in ref.images] + [synthetic_image(i) for i in syn.images]
    annotations = ref.annotations + [synthetic_annotation(a) for a in syn.annotations]
    try:
        with atomic_text_file(output) as out:
            out.write("{" + compact_json(MARKER) + ":" + compact_json({"version": acp.__version__}))
            out.write(',"info":' + compact_json(info) + ',"licenses":' + compact_json(licenses))
            for key, value in extra.items():
                out.write("," + compact_json(key) + ":" + compact_json(value))
            out.write(',"categories":' + compact_json(categories) + ',\n"images":[')
            out.write(",".join("\n" + compact_json(i) for i in images))
            out.write('\n],\n"annotations":[')
            out.write(",".join("\n" + compact_json(a) for a in annotations))
            out.write("\n]}\n")
    except ValueError as error:  # NaN or infinity in an input: json.load takes them, JSON does not
        raise InputError(f"{real} or {synthetic}: holds a number JSON cannot represent ({error})") from None
    return MergeSummary(
        output=output,
        real_images=len(ref.images),
        synthetic_images=len(syn.images),
        annotations=len(annotations),
        categories=len(categories),
        matched=matched,
        added=added,
        outside_paths=outside,
    )
