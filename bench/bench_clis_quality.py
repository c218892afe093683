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
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from acp.score.bank import Bank  # noqa: E402
from acp.score.layout import LayoutScorer  # noqa: E402

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
CORRUPTIONS = ("random", "swap", "shrink", "stack", "stretch")
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


def corrupt(layout: Layout, kind: str, rng: np.random.Generator) -> Layout | None:
    image, objects, relations = layout
    boxes = [list(b) for _, b in objects]
    names = [n for n, _ in objects]
    k = int(rng.integers(len(boxes)))
    if kind == "random":
        for i in range(len(boxes)) if len(boxes) == 2 else [k]:
            w, h = rng.uniform(0.02, 1.0, 2)
            boxes[i] = [float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h)]
    elif kind == "swap":
        options = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                   if names[i] != names[j]]
        if not options:
            return None
        i, j = options[int(rng.integers(len(options)))]
        boxes[i], boxes[j] = boxes[j], boxes[i]
    elif kind == "shrink":
        boxes[k] = scaled(boxes[k], SHRINK, SHRINK)
    elif kind == "stack":
        if len(boxes) == 2:
            k, other = 1, 0
        else:
            other = int(rng.choice([i for i in range(len(boxes)) if i != k]))
        x, y, w, h = boxes[other]
        bw, bh = boxes[k][2], boxes[k][3]
        boxes[k] = clip([x + w / 2 - bw / 2, y + h / 2 - bh / 2, bw, bh])
    elif kind == "stretch":
        boxes[k] = scaled(boxes[k], 3.0, 0.3)
    return image, list(zip(names, boxes, strict=True)), relations


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


def speed() -> None:
    from bench_bank import write_coco

    rng = np.random.default_rng(0)
    print("bank_pairs  objects  method  batch_layouts_per_s  per_layout_layouts_per_s")
    with tempfile.TemporaryDirectory() as tmp:
        for images in (400, 4500):
            path = Path(tmp) / f"coco-{images}.json"
            write_coco(path, images, 4)
            bank = Bank.from_coco([path])
            for objects in (2, 3):
                layouts = []
                for _ in range(5000):
                    names = [f"class {int(c)}" for c in np.minimum(rng.zipf(1.5, objects) - 1, 79)]
                    w, h = rng.uniform(0.03, 0.6, (2, objects))
                    boxes = [[float(rng.uniform(0, 1 - w[k])), float(rng.uniform(0, 1 - h[k])), float(w[k]),
                              float(h[k])] for k in range(objects)]
                    layouts.append((names, boxes, [(0, 1, "left of")], None))
                for method in ("v2", "paper"):
                    scorer = LayoutScorer(bank, method=method)  # type: ignore[arg-type]
                    scorer.score_layouts(layouts[:10])  # matching caches warm
                    start = time.perf_counter()
                    batch = scorer.score_layouts(layouts)
                    batch_rate = len(layouts) / (time.perf_counter() - start)
                    start = time.perf_counter()
                    single = [scorer.score_layout(*layout[:3]) for layout in layouts[:1000]]
                    single_rate = 1000 / (time.perf_counter() - start)
                    assert [r.score for r in batch[:1000]] == [r.score for r in single]
                    print(f"{bank.num_pairs:10d} {objects:8d} {method:>7} {batch_rate:20.0f} "
                          f"{single_rate:25.0f}",
                          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, nargs="?")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="images of the synthetic world, instead of a file")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="measure layouts/s instead")
    args = parser.parse_args()
    if args.speed:
        speed()
        return
    if args.synthetic:
        args.file = Path(tempfile.mkdtemp(prefix="clis-quality-")) / "synthetic.json"
        write_synthetic(args.file, args.synthetic, args.seed)
    elif args.file is None:
        parser.error("give a file or --synthetic N")
    pairs, multi = read_layouts(args.file)
    images = sorted({image for image, _, _ in pairs} | set(multi), key=str)
    print(f"{args.file}: {len(pairs)} two-object layouts, {len(multi)} images of 3+ objects, "
          f"{len(images)} images")
    two: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in ("v2", "paper")}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {m: defaultdict(list) for m in ("v2", "paper")}
    build_times = []
    for split in range(args.splits):
        rng = np.random.default_rng(args.seed + split)
        held = set(rng.permutation(len(images))[: len(images) // 5].tolist())
        test_images = {images[k] for k in held}
        bank_layouts = [p for p in pairs if p[0] not in test_images]
        bank_layouts += [m[0] for image, m in multi.items() if image not in test_images]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bank.json"
            write_bank_file(path, bank_layouts)
            start = time.perf_counter()
            bank = Bank.from_coco([path])
            build_times.append(time.perf_counter() - start)
        tests = {"two": [p for p in pairs if p[0] in test_images],
                 "multi": [m[0] for image, m in multi.items() if image in test_images]}
        for method in ("v2", "paper"):
            scorer = LayoutScorer(bank, method=method)  # type: ignore[arg-type]
            for kind, layouts in tests.items():
                real = scores(scorer, layouts)
                pooled[method][f"{kind}:real"].append(real)
                for corruption in CORRUPTIONS:
                    crng = np.random.default_rng(1000 * split + CORRUPTIONS.index(corruption))
                    bad = [c for c in (corrupt(lay, corruption, crng) for lay in layouts) if c is not None]
                    fake = scores(scorer, bad)
                    pooled[method][f"{kind}:{corruption}"].append(fake)
                    if kind == "two":
                        two[method][corruption].append(auc(real, fake))
    print(f"bank build ({len(images) * 4 // 5} images): {np.mean(build_times):.2f} s per split")
    print("\nROC AUC, real > corrupted (two-object: mean over splits; multi-object: pooled)")
    print(f"{'corruption':<10} {'2-obj v2':>9} {'2-obj paper':>12} {'multi v2':>9} {'multi paper':>12}")
    for corruption in CORRUPTIONS:
        row = [np.mean(two["v2"][corruption]), np.mean(two["paper"][corruption])]
        for method in ("v2", "paper"):
            real = np.concatenate(pooled[method]["multi:real"])
            fake = np.concatenate(pooled[method][f"multi:{corruption}"])
            row.append(auc(real, fake))
        print(f"{corruption:<10} {row[0]:>9.3f} {row[1]:>12.3f} {row[2]:>9.3f} {row[3]:>12.3f}")
    n_multi = sum(a.size for a in pooled["v2"]["multi:real"])
    print(f"(multi-object: {n_multi} real layouts over the splits)")
    for method in ("v2", "paper"):
        print(f"\n{method}: mean score and share kept at each --min-clis-l (two-object, pooled)")
        groups = ["real", *CORRUPTIONS]
        values = {g: np.concatenate(pooled[method][f"two:{g}"]) for g in groups}
        print(f"{'':<10} {'mean':>6} " + " ".join(f"{'>=' + str(t):>6}" for t in THRESHOLDS))
        for g in groups:
            v = values[g]
            print(f"{g:<10} {v.mean():>6.1f} " + " ".join(f"{(v >= t).mean():>6.2f}" for t in THRESHOLDS))
        if method == "v2":
            multi_real = np.concatenate(pooled[method]["multi:real"])
            print(f"{'multi real':<10} {multi_real.mean():>6.1f} "
                  + " ".join(f"{(multi_real >= t).mean():>6.2f}" for t in THRESHOLDS))


if __name__ == "__main__":
    main()
