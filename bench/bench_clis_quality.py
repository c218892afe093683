"""How well CLIS-L tells real layouts from corrupted ones: ROC AUC, v2 against the paper's method.

    python bench/bench_clis_quality.py ../shared/data/nsr1k-spatial-train.json [--splits 5] [--seed 0]
    python bench/bench_clis_quality.py instances_val2017.json          # any COCO-format file
    python bench/bench_clis_quality.py --synthetic 3000                # a structured synthetic world
    python bench/bench_clis_quality.py --speed                         # layouts/s, v2 and paper

The file is an NSR-1K-style list (``obj1``/``obj2`` = [category, normalised xywh], ``relation``,
``image_id``) or a COCO-format file. Its layouts are split by image, 80 % into a bank
(``Bank.from_coco``, through a COCO file written here; NSR-1K's categories get COCO's
super-categories) and 20 % to evaluate, ``--splits`` times. Each evaluated layout is scored as
it is and corrupted five ways:

- random: every box replaced by a random one (sides uniform in [0.02, 1], anywhere in frame);
- swap: two objects of different categories exchange their boxes;
- shrink: one object's sides to 15 % about its centre;
- stack: one object moved onto another's centre;
- stretch: one object 3x wide and 0.3x high about its centre (clipped to the frame).

Two-object layouts are NSR-1K's records (or COCO images' two largest boxes); multi-object
layouts are images with three objects or more (NSR-1K records of one image merged; COCO images'
up to 8 largest boxes), one object corrupted. NSR-1K's spatial split holds no image with three
objects, so ``--synthetic N`` writes a COCO file of N images of a structured world (a wide
base object, two to five items resting on it or standing beside it, each category with its own
size and aspect): not real layouts, but layouts of 1 to 7 objects with structure to learn, which
checks that scores of different sizes are comparable and that one bad object is caught.

Prints the AUC of real > corrupted per corruption
(mean over splits; multi-object ones pooled over splits, they are few), the mean scores, and the
share of real and corrupted layouts each candidate --min-clis-l keeps.

``--speed``: banks of about 10k and 100k+ pairs (``bench_bank.write_coco``'s synthetic COCO
files: 80 categories, Zipf frequencies), 5,000 random layouts of 2 and of 3 objects with a
relation, scored in one batch (``LayoutScorer.score_layouts``) and one at a time
(``score_layout``, the call ``generate`` makes), on one core; the two must agree exactly.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from acp.score.bank import Bank  # noqa: E402
from acp.score.layout import SCORING_METHODS, LayoutScorer, relation_sign  # noqa: E402
from acp.score.likelihood import FAMILIES  # noqa: E402

# MS-COCO's super-categories (the `supercategory` of its category file).
COCO_SUPER = {
    "person": ["person"],
    "vehicle": ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
    "outdoor": ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"],
    "animal": ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    "accessory": ["backpack", "umbrella", "handbag", "tie", "suitcase"],
    "sports": ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
               "skateboard", "surfboard", "tennis racket"],
    "kitchen": ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"],
    "food": ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
             "cake"],
    "furniture": ["chair", "couch", "potted plant", "bed", "dining table", "toilet"],
    "electronic": ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"],
    "appliance": ["microwave", "oven", "toaster", "sink", "refrigerator"],
    "indoor": ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"],
}
SUPER_OF = {name: sup for sup, names in COCO_SUPER.items() for name in names}
SHRINK = 0.15  # sides: the definition (its paper-method AUC, 0.81, is reproduced with it)
THRESHOLDS = (2, 5, 10, 15, 20, 25, 30, 40, 50)

# A layout: (image id, [(category, box)], [(subject index, object index, predicate)]).
Layout = tuple[Any, list[tuple[str, list[float]]], list[tuple[int, int, str]]]


def read_layouts(path: Path) -> tuple[list[Layout], dict[Any, list[Layout]]]:
    """Two-object layouts, and every image's merged multi-object layout (or the COCO image)."""
    data = json.loads(path.read_text())
    pairs: list[Layout] = []
    merged: dict[Any, Layout] = {}
    if isinstance(data, list):  # NSR-1K
        for r in data:
            objects = [(r["obj1"][0], list(r["obj1"][1])), (r["obj2"][0], list(r["obj2"][1]))]
            pairs.append((r["image_id"], objects, [(0, 1, r["relation"])]))
            image, objs, rels = merged.setdefault(r["image_id"], (r["image_id"], [], []))
            index = []
            for name, box in objects:
                key = (name, tuple(round(v, 4) for v in box))
                found = [k for k, (n, b) in enumerate(objs) if (n, tuple(round(v, 4) for v in b)) == key]
                if not found:
                    objs.append((name, box))
                index.append(found[0] if found else len(objs) - 1)
            rels.append((index[0], index[1], r["relation"]))
    else:  # COCO
        names = {c["id"]: c["name"] for c in data["categories"]}
        sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
        per_image: dict[Any, list[tuple[str, list[float]]]] = defaultdict(list)
        for a in data["annotations"]:
            if a.get("iscrowd") or a["image_id"] not in sizes:
                continue
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            if bw > 0 and bh > 0:
                per_image[a["image_id"]].append((names[a["category_id"]], [x / w, y / h, bw / w, bh / h]))
        for image, objs in per_image.items():
            objs.sort(key=lambda o: -o[1][2] * o[1][3])
            if len(objs) >= 2:
                pairs.append((image, objs[:2], []))
            merged[image] = (image, objs[:8], [])
    multi = {image: [layout] for image, layout in merged.items() if len(layout[1]) >= 3}
    return pairs, multi


WORLD = {  # category: (super-category, typical side, aspect w/h, placement)
    "bed": ("furniture", 0.6, 1.8, "base"), "table": ("furniture", 0.5, 1.6, "base"),
    "couch": ("furniture", 0.55, 2.2, "base"), "cat": ("animal", 0.14, 1.1, "on"),
    "dog": ("animal", 0.2, 1.2, "on"), "cup": ("kitchen", 0.06, 0.8, "on"),
    "bowl": ("kitchen", 0.09, 1.6, "on"),
    "book": ("indoor", 0.08, 1.3, "on"), "vase": ("indoor", 0.06, 0.5, "on"),
    "lamp": ("indoor", 0.1, 0.3, "beside"), "person": ("person", 0.25, 0.4, "beside"),
    "plant": ("furniture", 0.15, 0.7, "beside"),
}


def write_synthetic(path: Path, images: int, seed: int = 0) -> None:
    """A COCO file of a structured world (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names = list(WORLD)
    bases = [n for n in names if WORLD[n][3] == "base"]
    others = [n for n in names if WORLD[n][3] != "base"]
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": k + 1, "name": n, "supercategory": WORLD[n][0]} for k, n in enumerate(names)]}

    def sized(name: str) -> tuple[float, float]:
        _, side, aspect, _ = WORLD[name]
        s = side * float(np.exp(rng.normal(0, 0.2)))
        a = aspect * float(np.exp(rng.normal(0, 0.15)))
        return min(s * a ** 0.5, 0.95), min(s / a ** 0.5, 0.95)

    for i in range(images):
        base = bases[int(rng.integers(len(bases)))]
        bw, bh = sized(base)
        bx, by = float(rng.uniform(0.02, 0.98 - bw)), float(rng.uniform(0.45, max(0.46, 0.98 - bh)))
        objects = [(base, [bx, by, bw, min(bh, 0.99 - by)])]
        for _ in range(int(rng.integers(1, 6))):
            name = others[int(rng.integers(len(others)))]
            w, h = sized(name)
            if WORLD[name][3] == "on":
                x = bx + float(rng.uniform(0, max(bw - w, 0.01)))
                y = by - h + float(rng.uniform(0, 0.3)) * bh
            else:
                side = 1 if rng.uniform() < 0.5 else -1
                x = bx + bw + 0.02 if side > 0 else bx - w - 0.02
                y = by + bh - h + float(rng.normal(0, 0.02))
            objects.append((name, clip([x, y, w, h])))
        coco["images"].append({"id": i + 1, "width": 1000, "height": 1000})
        for name, (x, y, w, h) in objects:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": names.index(name) + 1,
                                        "bbox": [x * 1000, y * 1000, w * 1000, h * 1000], "iscrowd": 0})
    path.write_text(json.dumps(coco))


def write_bank_file(path: Path, layouts: list[Layout]) -> None:
    images: dict[Any, list[tuple[str, list[float]]]] = {}
    for image, objects, _ in layouts:
        seen = images.setdefault(image, [])
        for name, box in objects:
            if (name, box) not in seen:
                seen.append((name, box))
    names = sorted({n for objs in images.values() for n, _ in objs})
    ids = {n: k + 1 for k, n in enumerate(names)}
    coco: dict[str, Any] = {
        "images": [{"id": k + 1, "width": 1000, "height": 1000} for k in range(len(images))],
        "annotations": [],
        "categories": [{"id": ids[n], "name": n, "supercategory": SUPER_OF.get(n, n)} for n in names],
    }
    for k, objs in enumerate(images.values()):
        for name, (x, y, w, h) in objs:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k + 1,
                                        "category_id": ids[name],
                                        "bbox": [x * 1000, y * 1000, w * 1000, h * 1000],
                                        "iscrowd": 0})
    path.write_text(json.dumps(coco))


def clip(box: list[float]) -> list[float]:
    x, y, w, h = box
    w, h = min(max(w, 1e-3), 1.0), min(max(h, 1e-3), 1.0)
    return [min(max(x, 0.0), 1.0 - w), min(max(y, 0.0), 1.0 - h), w, h]


def scaled(box: list[float], sx: float, sy: float) -> list[float]:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    w, h = min(w * sx, 1.0), min(h * sy, 1.0)
    return clip([cx - w / 2, cy - h / 2, w, h])


# -- the perturbation family -----------------------------------------------------------------
# Every degree of freedom of a box (its centre's x and y, its width and height: moved, scaled,
# reshaped, one side alone) and of a pair (the offset's length and direction, the size ratio,
# which box is which), each both ways and at two or more strengths, and whole-layout ones. A
# perturbation changes one random object k, one random pair (k and a partner j), or the whole
# layout; boxes are then put back into the frame (sizes capped at the frame). Stated relations
# are kept, as a plan's text would be. The five corruptions of earlier figures are marked *.

Boxes = list[list[float]]
Relations = list[tuple[int, int, str]]
Perturb = Callable[[list[str], Boxes, Relations, np.random.Generator], "Boxes | None"]


def centre(box: list[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def placed(box: list[float], cx: float, cy: float) -> list[float]:
    return clip([cx - box[2] / 2, cy - box[3] / 2, box[2], box[3]])


def random_box(rng: np.random.Generator) -> list[float]:
    w, h = rng.uniform(0.02, 1.0, 2)
    return [float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h)]


def one(change: Callable[[list[float]], list[float]]) -> Perturb:
    def apply(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
        k = int(rng.integers(len(boxes)))
        boxes[k] = change(boxes[k])
        return boxes
    return apply


def pair(change: Callable[[list[float], list[float]], tuple[list[float], list[float]]]) -> Perturb:
    def apply(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
        k, j = (int(v) for v in rng.choice(len(boxes), 2, replace=False))
        boxes[k], boxes[j] = change(boxes[k], boxes[j])
        return boxes
    return apply


def layout(change: Callable[[list[float]], list[float]]) -> Perturb:
    def apply(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
        return [change(b) for b in boxes]
    return apply


def moved(dx: float, dy: float) -> Callable[[list[float]], list[float]]:
    return lambda b: placed(b, centre(b)[0] + dx, centre(b)[1] + dy)


def offset(transform: Callable[[float, float], tuple[float, float]]) -> Perturb:
    """Box k moved so that its offset from box j becomes ``transform(dx, dy)``."""
    def change(k: list[float], j: list[float]) -> tuple[list[float], list[float]]:
        (kx, ky), (jx, jy) = centre(k), centre(j)
        dx, dy = transform(kx - jx, ky - jy)
        return placed(k, jx + dx, jy + dy), j
    return pair(change)


def swap_sizes(k: list[float], j: list[float]) -> tuple[list[float], list[float]]:
    return placed([0, 0, j[2], j[3]], *centre(k)), placed([0, 0, k[2], k[3]], *centre(j))


def named_random(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
    """Every box random in a two-object layout, one box in a larger one (as in earlier figures)."""
    for k in range(len(boxes)) if len(boxes) == 2 else [int(rng.integers(len(boxes)))]:
        boxes[k] = random_box(rng)
    return boxes


def named_swap(
    names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator
) -> Boxes | None:
    options = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if names[i] != names[j]]
    if not options:
        return None
    i, j = options[int(rng.integers(len(options)))]
    boxes[i], boxes[j] = boxes[j], boxes[i]
    return boxes


def named_stack(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
    """The second object (a random one past two) onto another's centre."""
    if len(boxes) == 2:
        k, other = 1, 0
    else:
        k = int(rng.integers(len(boxes)))
        other = int(rng.choice([i for i in range(len(boxes)) if i != k]))
    boxes[k] = placed(boxes[k], *centre(boxes[other]))
    return boxes


def random_one(names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator) -> Boxes:
    boxes[int(rng.integers(len(boxes)))] = random_box(rng)
    return boxes


def sized(fx: float, fy: float) -> Callable[[list[float]], list[float]]:
    return lambda b: scaled(b, fx, fy)


def mirrored(b: list[float]) -> list[float]:
    return [1 - b[0] - b[2], b[1], b[2], b[3]]


def left_right(relations: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    return [r for r in relations if relation_sign(r[2])]


def pair_mirrored(
    names: list[str], boxes: Boxes, relations: Relations, rng: np.random.Generator
) -> Boxes | None:
    """The subject of a stated left/right relation mirrored about its object's centre."""
    stated = left_right(relations)
    if not stated:
        return None
    k, j, _ = stated[int(rng.integers(len(stated)))]
    (kx, ky), (jx, _) = centre(boxes[k]), centre(boxes[j])
    boxes[k] = placed(boxes[k], 2 * jx - kx, ky)
    return boxes


# (name, family, perturbation); LOFO: the family is what a held-out check leaves out whole.
PERTURBATIONS: list[tuple[str, str, Perturb]] = [
    ("random layout *", "random", named_random),
    ("random box", "random", random_one),
    ("move right 0.25", "position", one(moved(0.25, 0))),
    ("move right 0.5", "position", one(moved(0.5, 0))),
    ("move left 0.25", "position", one(moved(-0.25, 0))),
    ("move left 0.5", "position", one(moved(-0.5, 0))),
    ("move down 0.25", "position", one(moved(0, 0.25))),
    ("move down 0.5", "position", one(moved(0, 0.5))),
    ("move up 0.25", "position", one(moved(0, -0.25))),
    ("move up 0.5", "position", one(moved(0, -0.5))),
    ("sides x0.15 *", "size", one(sized(SHRINK, SHRINK))),
    ("sides x0.33", "size", one(sized(1 / 3, 1 / 3))),
    ("sides x0.5", "size", one(sized(0.5, 0.5))),
    ("sides x2", "size", one(sized(2, 2))),
    ("sides x3", "size", one(sized(3, 3))),
    ("3x wide 0.3x high *", "shape", one(sized(3.0, 0.3))),
    ("0.3x wide 3x high", "shape", one(sized(0.3, 3.0))),
    ("aspect x4, area kept", "shape", one(sized(2, 0.5))),
    ("aspect /4, area kept", "shape", one(sized(0.5, 2))),
    ("width x3", "side", one(sized(3, 1))),
    ("width x0.33", "side", one(sized(1 / 3, 1))),
    ("height x3", "side", one(sized(1, 3))),
    ("height x0.33", "side", one(sized(1, 1 / 3))),
    ("stacked on another *", "distance", named_stack),
    ("offset x0.33", "distance", offset(lambda dx, dy: (dx / 3, dy / 3))),
    ("offset x2", "distance", offset(lambda dx, dy: (2 * dx, 2 * dy))),
    ("offset x3", "distance", offset(lambda dx, dy: (3 * dx, 3 * dy))),
    ("offset mirrored left-right, L/R stated", "direction", pair_mirrored),
    ("offset mirrored up-down", "direction", offset(lambda dx, dy: (dx, -dy))),
    ("offset turned +90", "direction", offset(lambda dx, dy: (-dy, dx))),
    ("offset turned -90", "direction", offset(lambda dx, dy: (dy, -dx))),
    ("one x2, other x0.5", "pair size", pair(lambda k, j: (scaled(k, 2, 2), scaled(j, 0.5, 0.5)))),
    ("one x3, other x0.33", "pair size", pair(lambda k, j: (scaled(k, 3, 3), scaled(j, 1 / 3, 1 / 3)))),
    ("boxes swapped *", "identity", named_swap),
    ("sizes swapped", "identity", pair(swap_sizes)),
    ("layout upside down", "layout", layout(lambda b: [b[0], 1 - b[1] - b[3], b[2], b[3]])),
    ("layout mirrored, L/R stated", "layout", layout(mirrored)),
    ("layout transposed", "layout", layout(lambda b: [b[1], b[0], b[3], b[2]])),
    ("layout zoomed out x0.5", "layout",
     layout(lambda b: placed([0, 0, b[2] / 2, b[3] / 2], 0.5 + (centre(b)[0] - 0.5) / 2,
                             0.5 + (centre(b)[1] - 0.5) / 2))),
    ("layout zoomed in x1.6", "layout",
     layout(lambda b: placed([0, 0, 1.6 * b[2], 1.6 * b[3]], 0.5 + 1.6 * (centre(b)[0] - 0.5),
                             0.5 + 1.6 * (centre(b)[1] - 0.5)))),
]


# Controls, not corruptions: a real layout mirrored (no left/right stated) is a real layout,
# and so is one nudged by 2 % of the frame; a scorer should NOT flag them (AUC near 0.5).
CONTROLS: list[tuple[str, str, Perturb]] = [
    ("(control) layout mirrored, no L/R stated", "control", layout(mirrored)),
    ("(control) one box moved 0.02", "control", one(moved(0.02, 0.02))),
]


def perturb(layout_: Layout, kind: int, rng: np.random.Generator) -> Layout | None:
    """Layout ``layout_`` under ``ALL[kind]``, or None where that perturbation does not apply."""
    image, objects, relations = layout_
    names = [n for n, _ in objects]
    name = ALL[kind][0]
    stated = bool(left_right(relations))
    if name.endswith("no L/R stated") if stated else name.endswith(", L/R stated"):
        return None
    change = ALL[kind][2]
    if len(objects) < 2 and ALL[kind][1] in ("distance", "direction", "pair size", "identity"):
        return None
    boxes = change(names, [list(b) for _, b in objects], relations, rng)
    if boxes is None:
        return None
    return image, list(zip(names, boxes, strict=True)), relations


ALL = PERTURBATIONS + CONTROLS


def scores(scorer: LayoutScorer, layouts: list[Layout]) -> np.ndarray:
    results = scorer.score_layouts([([n for n, _ in objs], [b for _, b in objs], rels, None)
                                    for _, objs, rels in layouts])
    return np.array([r.score for r in results])


def auc(real: np.ndarray, fake: np.ndarray) -> float:
    """P(real > corrupted), ties counting half (Mann-Whitney)."""
    if real.size == 0 or fake.size == 0:
        return float("nan")
    greater = (real[:, None] > fake[None, :]).mean()
    ties = (real[:, None] == fake[None, :]).mean()
    return float(greater + 0.5 * ties)


def evaluate(path: Path, kinds: tuple[str, ...], splits: int, seed: int, methods: tuple[str, ...],
             left_out: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """AUCs per method, kind ("two", "multi") and row of ``ALL`` (one per split), and the real
    and perturbed scores pooled over splits; the bank built from 80 % of the images each time.
    ``left_out``: v3's weights are fitted without that perturbation family, and only its rows
    are evaluated."""
    pairs, multi = read_layouts(path)
    images = sorted({image for image, _, _ in pairs} | set(multi), key=str)
    print(f"{path.name}: {len(pairs)} two-object layouts, {len(multi)} images of 3+ objects, "
          f"{len(images)} images", flush=True)
    aucs: dict[str, Any] = defaultdict(list)
    pooled: dict[str, Any] = defaultdict(list)
    for split in range(splits):
        rng = np.random.default_rng(seed + split)
        held = set(rng.permutation(len(images))[: len(images) // 5].tolist())
        test_images = {images[k] for k in held}
        bank_layouts = [p for p in pairs if p[0] not in test_images]
        bank_layouts += [m[0] for image, m in multi.items() if image not in test_images]
        with tempfile.TemporaryDirectory() as tmp:
            write_bank_file(Path(tmp) / "bank.json", bank_layouts)
            families = tuple(f for f in FAMILIES if f != left_out)
            bank = Bank.from_coco([Path(tmp) / "bank.json"], families=families)
        tests = {"two": [p for p in pairs if p[0] in test_images],
                 "multi": [m[0] for image, m in multi.items() if image in test_images]}
        for method in methods:
            scorer = LayoutScorer(bank, method=method)  # type: ignore[arg-type]
            for kind in kinds:
                layouts = tests[kind]
                real = scores(scorer, layouts)
                pooled[method, kind, "real"].append(real)
                for row in range(len(ALL)):
                    if left_out is not None and ALL[row][1] != left_out:
                        continue
                    prng = np.random.default_rng(1000 * split + row)
                    changed = [(k, perturb(lay, row, prng)) for k, lay in enumerate(layouts)]
                    kept = [k for k, c in changed if c is not None]
                    if len(kept) < 5:
                        continue
                    fake = scores(scorer, [c for _, c in changed if c is not None])
                    aucs[method, kind, row].append(auc(real[kept], fake))
                    pooled[method, kind, row].append(fake)
    return aucs, pooled


def leave_one_family_out(args: argparse.Namespace) -> None:
    """The v3 AUC of each row, with v3's weights fitted against every perturbation family (as
    acp fits them) and against all families but the row's own: how v3 does on a kind of
    corruption its fit never saw."""
    sources: list[tuple[str, Path, str]] = []
    if args.file is not None:
        sources.append(("2-obj", args.file, "two"))
    if args.synthetic:
        path = Path(tempfile.mkdtemp(prefix="clis-quality-")) / "synthetic.json"
        write_synthetic(path, args.synthetic, args.seed)
        sources.append(("multi syn", path, "multi"))
    table: dict[tuple[str, int, bool], float] = {}
    for label, path, kind in sources:
        full, _ = evaluate(path, (kind,), args.splits, args.seed, ("v3",))
        for family in FAMILIES:
            held, _ = evaluate(path, (kind,), args.splits, args.seed, ("v3",), left_out=family)
            for row, (_, row_family, _) in enumerate(ALL):
                if row_family == family and ("v3", kind, row) in held:
                    table[label, row, True] = float(np.mean(held["v3", kind, row]))
                    table[label, row, False] = float(np.mean(full["v3", kind, row]))
    labels = [label for label, _, _ in sources]
    width = max(len(name) for name, _, _ in ALL)
    print("\nv3 ROC AUC: weights fitted with every family / without the row's family (left out)")
    print(f"{'perturbation':<{width}} {'family':<10} " + " ".join(f"{label + ' all':>14} {label + ' out':>14}"
                                                            for label in labels))
    for row, (name, family, _) in enumerate(ALL):
        if family == "control":
            continue
        cells = []
        for label in labels:
            for out in (False, True):
                value = table.get((label, row, out))
                cells.append(f"{value:>14.3f}" if value is not None else f"{'-':>14}")
        print(f"{name:<{width}} {family:<10} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, nargs="?", help="NSR-1K-style or COCO-format file")
    parser.add_argument("--synthetic", type=int, default=2000, metavar="N",
                        help="images of the synthetic multi-object world (0: none)")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(SCORING_METHODS))
    parser.add_argument("--leave-one-family-out", action="store_true",
                        help="v3 only: each family's rows with the weights fitted without that family")
    args = parser.parse_args()
    if args.leave_one_family_out:
        leave_one_family_out(args)
        return
    methods = tuple(args.methods.split(","))
    sources: list[tuple[str, Path, tuple[str, ...]]] = []
    if args.file is not None:
        sources.append(("real", args.file, ("two", "multi")))
    if args.synthetic:
        path = Path(tempfile.mkdtemp(prefix="clis-quality-")) / "synthetic.json"
        write_synthetic(path, args.synthetic, args.seed)
        sources.append(("synthetic", path, ("multi",)))
    if not sources:
        parser.error("give a file or --synthetic N")
    columns: list[tuple[str, str, str]] = []  # (source, kind, method)
    aucs: dict[Any, Any] = {}
    pooled: dict[Any, Any] = {}
    for source, path, kinds in sources:
        start = time.perf_counter()
        a, p = evaluate(path, kinds, args.splits, args.seed, methods)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        for (method, kind, row), values in a.items():
            aucs[source, kind, method, row] = values
        for (method, kind, row), values in p.items():
            pooled[source, kind, method, row] = values
        for kind in kinds:
            if any(key[:2] == (source, kind) for key in aucs):
                columns += [(source, kind, m) for m in methods]

    print("\nROC AUC, real > perturbed (mean over splits; * the five corruptions of earlier figures)")
    heads = [f"{'2-obj' if k == 'two' else 'multi'}{' syn' if s == 'synthetic' else ''} {m}"
             for s, k, m in columns]
    width = max(len(name) for name, _, _ in ALL)
    print(f"{'perturbation':<{width}} {'family':<10} " + " ".join(f"{h:>15}" for h in heads))
    worst: dict[Any, float] = {}
    for row, (name, family, _) in enumerate(ALL):
        cells = []
        for column in columns:
            values = aucs.get((*column, row))
            value = float(np.mean(values)) if values else float("nan")
            cells.append(f"{value:>15.3f}" if values else f"{'-':>15}")
            if values and family != "control":
                worst[column] = min(worst.get(column, 1.0), value)
        print(f"{name:<{width}} {family:<10} " + " ".join(cells))
    print(f"{'worst corruption':<{width}} {'':<10} " + " ".join(f"{worst.get(c, float('nan')):>15.3f}"
                                                            for c in columns))
    for source, kind, method in columns:
        real = np.concatenate(pooled[source, kind, method, "real"])
        print(f"\n{source} {kind}-object layouts, {method}: mean score and share kept at each --min-clis-l")
        print(f"{'':<{width}} {'mean':>6} " + " ".join(f"{'>=' + str(t):>6}" for t in THRESHOLDS))
        print(f"{'real':<{width}} {real.mean():>6.1f} " + " ".join(f"{(real >= t).mean():>6.2f}"
                                                                  for t in THRESHOLDS))
        for row, (name, _, _) in enumerate(ALL):
            if name.endswith("*") and (source, kind, method, row) in pooled:
                v = np.concatenate(pooled[source, kind, method, row])
                print(f"{name:<{width}} {v.mean():>6.1f} " + " ".join(f"{(v >= t).mean():>6.2f}"
                                                                     for t in THRESHOLDS))


if __name__ == "__main__":
    main()

