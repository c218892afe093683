"""Realism and diversity of offline plans with and without `--bank`, on NSR-1K split by image.

    python bench/bench_plan_bank.py ../shared/data/nsr1k-spatial-train.json [--splits 5] [--plans 5]

Each split puts 80 % of the images into a bank (as bench_clis_quality.py builds it) and keeps
the other 20 % to evaluate: the concept pair of every held-out layout is planned ``--plans``
times (seeds 0, 1, ...) by the heuristic planner alone and with the bank, and everything is
scored with CLIS-L v3 against the same bank, which holds none of the held-out layouts:

- realism: the median CLIS-L and the share at or above the default --min-clis-l (10) of the
  held-out real layouts, of the heuristic plans and of the bank plans; also the bank plans
  scored against a second bank built from the other half of the training images only
  ("cross": planned from one half, judged by the other);
- diversity: the mean IoU between the boxes of the same object in two plans of the same
  concept pair (lower is more diverse; for real layouts, between two real layouts of the same
  concept pair in the whole file), and the share of bank plans that repeat a box of their
  source image to within 0.5 % of the frame (a copy).

Not a test; no test needs the NSR-1K file.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_clis_quality import read_layouts, write_bank_file  # noqa: E402

from acp.boxes import iou_aligned  # noqa: E402
from acp.defaults import MIN_CLIS_L  # noqa: E402
from acp.plan.base import PlanSettings, SceneRequest  # noqa: E402
from acp.plan.heuristic import HeuristicPlanner  # noqa: E402
from acp.score.bank import Bank  # noqa: E402
from acp.score.layout import LayoutScorer  # noqa: E402


def bank_of(layouts: list) -> Bank:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        write_bank_file(Path(tmp) / "bank.json", layouts)
        return Bank.from_coco([Path(tmp) / "bank.json"])


def diversity(plans: list[list]) -> float:  # type: ignore[type-arg]
    """Mean IoU of the same object's boxes over every two plans of one concept set."""
    values = []
    for group in plans:
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                boxes_a = np.array([o.bbox for o in group[a].objects])
                boxes_b = np.array([o.bbox for o in group[b].objects])
                values.append(float(iou_aligned(boxes_a, boxes_b).mean()))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--plans", type=int, default=5, help="plans per held-out concept pair")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    pairs, _ = read_layouts(args.file)
    images = sorted({image for image, _, _ in pairs}, key=str)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("real", "heuristic", "bank", "bank cross")}
    spread: dict[str, list[float]] = {"heuristic": [], "bank": []}
    copies, sourced, total = 0, 0, 0
    same: dict[tuple[str, ...], list[np.ndarray]] = {}
    for _, objects, _ in pairs:
        same.setdefault(tuple(n for n, _ in objects), []).append(np.array([b for _, b in objects]))
    real_iou = float(np.mean([iou_aligned(g[a], g[b]).mean() for g in same.values()
                              for a in range(len(g)) for b in range(a + 1, len(g))]))
    for split in range(args.splits):
        rng = np.random.default_rng(args.seed + split)
        order = rng.permutation(len(images))
        test = {images[k] for k in order[: len(images) // 5]}
        train = [images[k] for k in order[len(images) // 5:]]
        half = set(train[: len(train) // 2])
        bank = bank_of([p for p in pairs if p[0] not in test])
        plan_half = bank_of([p for p in pairs if p[0] in half])
        judge_half = bank_of([p for p in pairs if p[0] not in test and p[0] not in half])
        held = [p for p in pairs if p[0] in test]
        scorer = LayoutScorer(bank)
        real = scorer.score_layouts([([n for n, _ in objs], [b for _, b in objs], rels, None)
                                     for _, objs, rels in held])
        rows["real"].append(np.array([r.score for r in real]))
        settings = PlanSettings()
        planners = {"heuristic": HeuristicPlanner(settings), "bank": HeuristicPlanner(settings, bank=bank),
                    "bank cross": HeuristicPlanner(settings, bank=plan_half)}
        for name, planner in planners.items():
            made = []
            for k, (_, objects, _) in enumerate(held):
                concepts = tuple(n for n, _ in objects)
                made.append([planner.plan(SceneRequest(f"{k:06d}", concepts, seed))
                             for seed in range(args.plans)])
            flat = [p for group in made for p in group]
            judge = LayoutScorer(judge_half) if name == "bank cross" else scorer
            rows[name].append(np.array([r.score for r in judge.score_many(flat)]))
            if name in spread:
                spread[name].append(diversity(made))
            if name == "bank":
                layouts = planner.layouts
                assert layouts is not None
                for plan in flat:
                    total += 1
                    if not plan.examples:
                        continue
                    sourced += 1
                    image = int(np.flatnonzero(bank.image_ids == plan.examples[0])[0])
                    source = np.array([b for _, b in layouts.boxes_of(image)])
                    boxes = np.array([o.bbox for o in plan.objects])
                    gap = np.abs(boxes[:, None, :] - source[None, :, :]).max(axis=2).min(axis=1)
                    copies += bool((gap < 0.005).any())
    print(f"{args.file.name}: {args.splits} splits by image, {args.plans} plans per held-out concept pair")
    print(f"{'layouts':<22} {'median CLIS-L':>13} {'>= ' + format(MIN_CLIS_L, 'g'):>8} {'mean IoU':>9}")
    real_median = float(np.median(np.concatenate(rows["real"])))
    for name, values in rows.items():
        v = np.concatenate(values)
        iou = f"{np.mean(spread[name]) if name in spread else real_iou if name == 'real' else math.nan:>9.3f}"
        print(f"{name:<22} {np.median(v):>13.1f} {(v >= MIN_CLIS_L).mean():>8.2f} {iou}")
    bank_median = float(np.median(np.concatenate(rows["bank"])))
    print(f"bank plans' median / real median: {bank_median / real_median:.2f}; drawn from a retrieved "
          f"image: {sourced / max(total, 1):.2f}; a box within 0.5 % of its source's: "
          f"{copies / max(sourced, 1):.3f}")


if __name__ == "__main__":
    main()
