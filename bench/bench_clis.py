"""CLIS figures: CLIS-L throughput and discrimination, CLIS-I throughput, bank build time.

    python bench/bench_clis.py [--nsr ../shared/data/nsr1k-spatial-train.json] [--skip-build-scale]
    python bench/bench_clis.py --speed [--bank-boxes 350000] [--layouts 30000]

1. CLIS-L throughput on one core: a bank of >= 100,000 object pairs (a synthetic COCO file,
   80 categories with Zipf frequencies), layouts of 3 objects whose three category pairs all
   have references; the vectorised scorer against a plain per-reference Python loop of the
   same formula (``tests/clis_oracle.py``'s ``loop_pair_score``), on the same layouts, scores compared.
2. CLIS-L discrimination on real layouts (NSR-1K, two objects and a relation each, from
   COCO): the bank is built from a random half of the images, the other half is scored as is
   and after each corruption; ROC AUC of real vs corrupted.
3. CLIS-I candidates/s: the tiny CLIP on CPU; on a GPU, a full-size CLIP ViT-L/14
   architecture (random weights) in float16.
4. Bank build and load time on a synthetic COCO-train-sized file (118k images, 860k boxes).

``--speed``: ``acp score layouts`` end to end (a fresh process: imports, bank load, reading and
validating every plan line, scoring, writing the JSON Lines), on a bank built from a synthetic
COCO file of ``--bank-boxes`` boxes (``bench_bank.write_coco``: 80 categories, Zipf frequencies),
for plans of 2, 3, 5, 10 and 20 objects (one stated relation): layouts/s with the compiled
kernel and with numba switched off (``ACP_NO_NUMBA=1``), whose outputs must be byte for byte the
same; then, in this process, the share of each step (read and validate, score, encode).

Sections 1 and 2 measure the paper's method (``--clis-l-method paper``); CLIS-L v2, the
default, is measured by ``bench/bench_clis_quality.py``. Prints figures; not a test, and no
test needs the NSR-1K file. CLIS-L runs on one core by construction (numpy's elementwise
operations use one thread); CLIP on CPU is set to one thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from acp.score.bank import Bank
from acp.score.layout import MIN_SUPPORT, LayoutScorer, relation_sign
from tests.clis_oracle import loop_pair_score

Box = list[float]
DEFAULT_NSR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nsr1k-spatial-train.json"


def random_box(rng: np.random.Generator, low: float = 0.03, high: float = 0.6) -> Box:
    w, h = rng.uniform(low, high, 2)
    return [float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h)]


def synthetic_coco(path: Path, images: int, categories: int, objects: tuple[int, int], seed: int) -> Path:
    """COCO-format file of random layouts; category frequencies fall as 1/rank (Zipf)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, categories + 1)
    p /= p.sum()
    width, height = 640, 480
    annotations: list[dict[str, Any]] = []
    counts = rng.integers(objects[0], objects[1] + 1, images)
    cats = rng.choice(categories, counts.sum(), p=p) + 1
    k = 0
    for image, count in enumerate(counts):
        for _ in range(count):
            x, y, w, h = random_box(rng)
            annotations.append(
                {
                    "id": k + 1,
                    "image_id": image + 1,
                    "category_id": int(cats[k]),
                    "bbox": [x * width, y * height, w * width, h * height],
                    "iscrowd": 0,
                }
            )
            k += 1
    coco = {
        "images": [{"id": i + 1, "width": width, "height": height} for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": f"class {c}"} for c in range(categories)],
    }
    path.write_text(json.dumps(coco))
    return path


# -- 1. throughput -------------------------------------------------------------------------


def loop_layout_score(
    bank: Bank, refs: dict[tuple[int, int], list[tuple[Box, Box]]], names: list[str], boxes: list[Box]
) -> float:
    """Plan score with the per-reference loop: confidence-weighted mean of pair scores."""
    total = weight = 0.0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = bank.category_by_key(names[i]), bank.category_by_key(names[j])
            assert a is not None and b is not None
            references = refs[(a, b)] if a <= b else [(o, s) for s, o in refs[(b, a)]]
            score = loop_pair_score(boxes[i], boxes[j], references, same_category=a == b)
            confidence = min(1.0, len(references) / MIN_SUPPORT)
            total += confidence * score
            weight += confidence
    return total / weight


def bench_throughput(seed: int, layouts: int, loop_layouts: int) -> None:
    print("== 1. CLIS-L throughput (one core) ==")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = synthetic_coco(
            Path(folder) / "bank.json", images=6000, categories=80, objects=(2, 11), seed=seed
        )
        bank = Bank.from_coco([path])
    print(
        f"bank: {bank.num_pairs} pairs, {len(bank.categories)} categories, "
        f"{bank.pair_keys.size} category pairs, {bank.boxes.shape[0]} boxes"
    )
    weights = np.diff(bank.category_offsets).astype(float)
    weights /= weights.sum()
    chosen: list[tuple[list[str], list[Box]]] = []
    while len(chosen) < layouts:
        ids = sorted(int(c) for c in rng.choice(len(bank.categories), 3, p=weights))
        if all(
            bank.pair_rows(ids[i], ids[j]).stop > bank.pair_rows(ids[i], ids[j]).start
            for i in range(3)
            for j in range(i + 1, 3)
        ):
            ids = list(rng.permutation(ids))
            chosen.append(([bank.categories[c].key for c in ids], [random_box(rng) for _ in range(3)]))
    sizes = []
    for names, _ in chosen:
        for i in range(3):
            for j in range(i + 1, 3):
                a, b = sorted((bank.category_by_key(names[i]), bank.category_by_key(names[j])))  # type: ignore[type-var]
                rows = bank.pair_rows(a, b)
                sizes.append(rows.stop - rows.start)
    print(
        f"layouts: {layouts} of 3 objects; references per pair: mean {np.mean(sizes):.0f}, "
        f"median {np.median(sizes):.0f}, max {max(sizes)}"
    )

    scorer = LayoutScorer(bank, method="paper")
    scorer.score_layout(*chosen[0])  # features and name matches, once
    start = time.perf_counter()
    vectorised = [scorer.score_layout(names, boxes).score for names, boxes in chosen]
    elapsed = time.perf_counter() - start
    rate = layouts / elapsed
    print(f"vectorised: {rate:,.0f} layouts/s ({1e6 / rate:.0f} us per layout)")

    refs = {}
    for k, key in enumerate(bank.pair_keys.tolist()):
        a, b = divmod(key, len(bank.categories))
        rows = slice(int(bank.pair_offsets[k]), int(bank.pair_offsets[k + 1]))
        refs[(a, b)] = list(
            zip(bank.boxes[bank.pair_a[rows]].tolist(), bank.boxes[bank.pair_b[rows]].tolist(), strict=True)
        )
    subset = chosen[:loop_layouts]
    start = time.perf_counter()
    looped = [loop_layout_score(bank, refs, names, boxes) for names, boxes in subset]
    loop_rate = len(subset) / (time.perf_counter() - start)
    difference = float(np.max(np.abs(np.array(looped) - np.array(vectorised[: len(subset)]))))
    print(f"per-reference Python loop: {loop_rate:,.1f} layouts/s on {len(subset)} layouts")
    print(
        f"speed-up: {rate / loop_rate:,.0f}x; largest score difference vectorised vs loop: {difference:.2e}"
    )


# -- 2. discrimination ---------------------------------------------------------------------

PREDICATES = {"left": "left of", "right": "right of", "top": "above", "bottom": "below", "next to": "next to"}


def clip_box(box: Box) -> Box:
    x, y, w, h = box
    w, h = min(w, 1.0), min(h, 1.0)
    x, y = min(max(x, 0.0), 1.0 - w), min(max(y, 0.0), 1.0 - h)
    return [x, y, w, h]


def around_centre(box: Box, fx: float, fy: float) -> Box:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    return clip_box([cx - w * fx / 2, cy - h * fy / 2, w * fx, h * fy])


def corrupt(kind: str, boxes: list[Box], rng: np.random.Generator) -> list[Box]:
    boxes = [list(b) for b in boxes]
    k = int(rng.integers(2))
    if kind == "random boxes":
        return [random_box(rng, 0.05, 0.7), random_box(rng, 0.05, 0.7)]
    if kind == "one shrunk to 15%":
        boxes[k] = around_centre(boxes[k], 0.15, 0.15)
    elif kind == "stacked on the other":  # moved onto the other object's centre
        other = boxes[1 - k]
        w, h = boxes[k][2:]
        boxes[k] = clip_box([other[0] + other[2] / 2 - w / 2, other[1] + other[3] / 2 - h / 2, w, h])
    elif kind == "one stretched 3x":
        boxes[k] = around_centre(boxes[k], 3.0, 1.0) if rng.integers(2) else around_centre(boxes[k], 1.0, 3.0)
    return boxes


def roc_auc(positive: list[float], negative: list[float]) -> float:
    """P(positive > negative) + P(tie) / 2 (Mann-Whitney), over all pairs."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def bench_discrimination(nsr: Path, seed: int) -> None:
    print("== 2. CLIS-L discrimination (NSR-1K real layouts vs corrupted copies) ==")
    if not nsr.is_file():
        print(f"skipped: {nsr} not found (give --nsr PATH)")
        return
    records = json.loads(nsr.read_text())
    rng = np.random.default_rng(seed)
    image_ids = sorted({r["image_id"] for r in records})
    bank_images = set(rng.permutation(image_ids)[: len(image_ids) // 2].tolist())
    bank_part = [r for r in records if r["image_id"] in bank_images]
    held_out = [r for r in records if r["image_id"] not in bank_images]
    names = sorted({r[k][0] for r in records for k in ("obj1", "obj2")})
    ids = {n: k + 1 for k, n in enumerate(names)}
    side = 1000
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": ids[n], "name": n} for n in names],
    }
    for k, record in enumerate(bank_part):
        coco["images"].append({"id": k + 1, "width": side, "height": side})
        for key in ("obj1", "obj2"):
            name, box = record[key]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": k + 1,
                    "category_id": ids[name],
                    "bbox": [v * side for v in box],
                }
            )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bank.json"
        path.write_text(json.dumps(coco))
        bank = Bank.from_coco([path])
    scorer = LayoutScorer(bank, method="paper")
    print(
        f"bank: {len(bank_part)} layouts ({bank.num_pairs} pairs) from {len(bank_images)} images; "
        f"held out: {len(held_out)} layouts from {len(image_ids) - len(bank_images)} other images"
    )

    def score(record: dict[str, Any], boxes: list[Box]) -> tuple[float, str]:
        predicate = PREDICATES.get(record["relation"], record["relation"])
        result = scorer.score_layout(
            [record["obj1"][0], record["obj2"][0]], boxes, relations=[(0, 1, predicate)]
        )
        return result.score, result.method

    real = [score(r, [r["obj1"][1], r["obj2"][1]]) for r in held_out]
    methods = {m: sum(1 for _, mm in real if mm == m) for m in ("pairs", "priors", "sanity")}
    lr = sum(1 for r in held_out if relation_sign(PREDICATES.get(r["relation"], "")))
    print(
        f"held-out layouts scored by pair references: {methods['pairs']}, by priors: {methods['priors']}, "
        f"reference-free: {methods['sanity']}; with a left/right relation: {lr}"
    )
    real_scores = [s for s, _ in real]
    passing = np.mean(np.array(real_scores) >= 50)
    print(f"real: mean CLIS-L {np.mean(real_scores):.1f}, share >= 50: {passing:.2f}")
    matched = [k for k, (_, m) in enumerate(real) if m == "pairs"]
    for kind in ("random boxes", "one shrunk to 15%", "stacked on the other", "one stretched 3x"):
        corrupted = [score(r, corrupt(kind, [r["obj1"][1], r["obj2"][1]], rng))[0] for r in held_out]
        auc = roc_auc(real_scores, corrupted)
        auc_matched = roc_auc([real_scores[k] for k in matched], [corrupted[k] for k in matched])
        print(
            f"{kind:>22}: AUC {auc:.3f} (all {len(held_out)}), {auc_matched:.3f} (the {len(matched)} with "
            f"pair references); mean corrupted CLIS-L {np.mean(corrupted):.1f}"
        )


# -- 3. CLIS-I -----------------------------------------------------------------------------


def bench_clis_i(seed: int) -> None:
    import torch
    from PIL import Image

    from acp.score.image import ImageScorer, Scene, SceneObject
    from acp.testing import tiny_clip

    print("== 3. CLIS-I throughput ==")
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    scene = Scene(
        "a cat, a dog and a bird in a garden",
        tuple(
            SceneObject(k, c, f"a photo of a {c}", tuple(random_box(rng, 0.1, 0.5)))  # type: ignore[arg-type]
            for k, c in enumerate(("cat", "dog", "bird"))
        ),
    )
    images = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(8)]

    def rate(scorer: ImageScorer, batches: int) -> float:
        scorer.score_scenes([(scene, im) for im in images])  # warm-up
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            scorer.score_scenes([(scene, im) for im in images])
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        return batches * len(images) / (time.perf_counter() - start)

    model, processor = tiny_clip()
    tiny = ImageScorer(model, processor, device="cpu")
    print(
        f"tiny CLIP, CPU, 1 thread: {rate(tiny, 10):.1f} candidates/s "
        "(512 px, 3 objects, batches of 8: 32 images per vision pass)"
    )
    if not torch.cuda.is_available():
        print("full-size CLIP ViT-L/14 float16: no CUDA device here, not measured")
        return
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from acp.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
        },
        projection_dim=768,
    )
    full = CLIPModel(config).to(torch.float16)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        tokenizer=tokenizer,
    )
    scorer = ImageScorer(full, processor, device="cuda")
    print(
        f"CLIP ViT-L/14 (random weights), float16, {torch.cuda.get_device_name()}: "
        f"{rate(scorer, 20):.1f} candidates/s (same batches)"
    )


# -- 4. bank build at COCO scale -----------------------------------------------------------


def bench_build_scale(seed: int) -> None:
    print("== 4. Bank build and load at COCO train scale ==")
    with tempfile.TemporaryDirectory() as folder:
        path = synthetic_coco(
            Path(folder) / "train.json", images=118_000, categories=80, objects=(1, 13), seed=seed
        )
        size = path.stat().st_size / 1e6
        start = time.perf_counter()
        bank = Bank.from_coco([path])
        built = time.perf_counter() - start
        bank.save(Path(folder) / "bank")
        start = time.perf_counter()
        loaded = Bank.load(Path(folder) / "bank")
        loaded.pair_features, loaded.prior_features  # noqa: B018  (read with the bank since format 2)
        load = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in (Path(folder) / "bank").iterdir()) / 1e6
    print(
        f"{bank.summary['annotations']:,} boxes in {bank.summary['images']:,} images ({size:.0f} MB JSON): "
        f"built in {built:.1f} s, {bank.num_pairs:,} pairs kept ({bank.summary['pairs_over_cap']:,} over the "
        f"per-category-pair cap); {on_disk:.0f} MB on disk, loaded with its features in {load:.2f} s"
    )


# -- 5. `acp score layouts` speed ----------------------------------------------------------


def plan_lines(count: int, objects: int, categories: int, seed: int) -> list[str]:
    """``count`` plans of ``objects`` objects (categories Zipf-distributed), one relation each."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, categories + 1)
    p /= p.sum()
    lines = []
    for k in range(count):
        names = [f"class {int(c)}" for c in rng.choice(categories, objects, p=p)]
        w, h = rng.uniform(0.05, 0.5, (2, objects))
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        objs = [{"id": i, "category": names[i], "description": f"a {names[i]}",
                 "bbox": [round(float(v), 4) for v in (x[i], y[i], w[i], h[i])]} for i in range(objects)]
        plan = {"id": f"{k:06d}", "concepts": sorted(set(names)), "caption": "a scene",
                "planner": "heuristic", "objects": objs,
                "relations": [{"subject": 0, "predicate": "left of", "object": 1}]}
        lines.append(json.dumps(plan))
    return lines


def bench_speed(bank_boxes: int, layouts: int, seed: int) -> None:
    import os
    import resource
    import subprocess
    import sys

    from bench_bank import BOXES_PER_IMAGE, CATEGORIES, write_coco

    print("== 5. `acp score layouts` end to end ==")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        boxes = write_coco(tmp / "coco.json", int(bank_boxes / BOXES_PER_IMAGE), 4, seed)
        subprocess.run([sys.executable, "-m", "acp", "bank", "build", str(tmp / "coco.json"), "-o",
                        str(tmp / "bank")], check=True, env=env, capture_output=True)
        print(f"bank: {boxes:,} boxes; {layouts:,} plans per file; rates per CPU second of the whole command")
        print("objects  compiled_layouts_per_cpu_s  numpy_layouts_per_cpu_s  identical")
        for objects in (2, 3, 5, 10, 20):
            plans = tmp / f"plans-{objects}.jsonl"
            plans.write_text("\n".join(plan_lines(layouts, objects, CATEGORIES, seed)) + "\n")
            rates, outputs = [], []
            for numpy_only in (False, True):
                out = tmp / f"scored-{objects}-{numpy_only}.jsonl"
                run_env = {**env, "ACP_NO_NUMBA": "1"} if numpy_only else env
                command = [sys.executable, "-m", "acp", "score", "layouts", str(plans), "--bank",
                           str(tmp / "bank"), "-o", str(out)]
                subprocess.run(command, check=True, env=run_env, capture_output=True)
                # Timed on the second run (numba's cache warm), in CPU seconds of the child (user +
                # system): on a shared machine its wall time measures the neighbours too.
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                command = [sys.executable, "-m", "acp", "score", "layouts", str(plans), "--bank",
                           str(tmp / "bank"), "-o", str(out)]
                subprocess.run(command, check=True, env=run_env, capture_output=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                rates.append(layouts / cpu)
                outputs.append(out.read_bytes())
            print(f"{objects:7d} {rates[0]:27,.0f} {rates[1]:24,.0f}  {outputs[0] == outputs[1]}", flush=True)
        steps(tmp / "bank", tmp / "plans-3.jsonl")


def steps(bank_path: Path, plans: Path) -> None:
    """Seconds per 1,000 layouts of each step of ``acp score layouts``, in this process."""
    from acp.jsonl import iter_lines
    from acp.schema import parse_plan_line
    from acp.score.plan_files import scored_line

    start = time.process_time()
    bank = Bank.load(bank_path)
    load = time.process_time() - start
    start = time.process_time()
    read = [plan for _, text in iter_lines(plans) if (plan := parse_plan_line(text)[0]) is not None]
    reading = time.process_time() - start
    scorer = LayoutScorer(bank)
    scorer.score_many(read[:100])  # the kernel compiled or loaded from its cache
    start = time.process_time()
    results = scorer.score_many(read)
    scoring = time.process_time() - start
    start = time.process_time()
    for plan, result in zip(read, results, strict=True):
        scored_line(plan, result)
    encoding = time.process_time() - start
    k = len(read) / 1000
    print(f"3 objects, CPU ms per 1,000 layouts: bank load {1000 * load:.0f} ms once; read and validate "
          f"{1000 * reading / k:.1f}, score {1000 * scoring / k:.1f}, encode {1000 * encoding / k:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsr", type=Path, default=DEFAULT_NSR, help="NSR-1K spatial layouts (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", type=int, default=5000, help="layouts for the vectorised timing")
    parser.add_argument("--loop-layouts", type=int, default=100, help="layouts for the loop timing")
    parser.add_argument("--skip-build-scale", action="store_true", help="skip the COCO-scale build (4)")
    parser.add_argument("--speed", action="store_true", help="only `acp score layouts` end to end (5)")
    parser.add_argument("--bank-boxes", type=int, default=350_000, help="boxes of the --speed bank")
    args = parser.parse_args()
    if args.speed:
        bench_speed(args.bank_boxes, args.layouts if args.layouts != 5000 else 30_000, args.seed)
        return
    bench_throughput(args.seed, args.layouts, args.loop_layouts)
    bench_discrimination(args.nsr, args.seed)
    bench_clis_i(args.seed)
    if not args.skip_build_scale:
        bench_build_scale(args.seed)


if __name__ == "__main__":
    main()
