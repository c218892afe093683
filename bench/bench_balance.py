"""Long-tail top-up at LVIS scale: read the histogram, plan the top-up, draw before/after.

    python bench/bench_balance.py [--scale 1.0] [--scale 0.25 ...] [--target 100]
                                  [--frequency r,c] [--companion-cap 0.1] [--points 16]
                                  [--keep DIR]

For each ``--scale`` s it writes an LVIS-shaped instances file: 1,203 categories with LVIS's
frequency split (337 rare in 1-10 images, 461 common in 11-100, 405 frequent in 101-8,000,
log-uniform), 100,000 x s images, 1-3 instances of a category per image it appears in (about
1.3M instances at s = 1), a polygon of ``--points`` points under every annotation, and
co-occurrence structure: each category belongs to one of 30 "contexts" (LVIS's scenes: kitchen,
street, ...) and takes 80% of its images from its context. Each category's image count and
instances scale with s, so the tail stays a tail. Then, each in a fresh process so that the
peak RSS is its own:

- read: ``acp.balance.read_histogram`` (streamed) and ``load_categories`` (what
  ``generate --balance`` reads of REAL's categories);
- plan: ``plan_balance`` with ``--target``, ``--frequency`` and the default companion cap;
  the before/after chart (``balance.png``) as planned, and where the budget goes.

Prints one row per scale and, for the largest, the budget split and the PNG path.

``--shape`` writes a hostile file instead, to show that time and memory stay bounded whatever
the file's shape (the ``--scale`` s sizes it the same way, about 1.3M instances at s = 1):

- ``cooccurrence``: 1,000 classes, every image holds 50 of them at random (1,225 pairs an image,
  the blow-up that co-occurrence counting must survive);
- ``tiny-images``: every annotation its own image, with a string id;
- ``one-value``: one annotation carries a string of s x 10M non-ASCII characters (above
  ``acp.cocostream.MAX_VALUE_CHARS`` it is refused, and that costs no more).

Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BANDS = (("r", 337, 1, 10), ("c", 461, 11, 100), ("f", 405, 101, 8000))
CONTEXTS = 30
IMAGES = 100_000


def write_lvis(path: Path, scale: float, points: int, seed: int = 0) -> int:
    """Write the file; return the number of instances. Annotations are written category by
    category (LVIS's order is arbitrary too), so the generator holds one category at a time."""
    rng = np.random.default_rng(seed)
    images = max(int(IMAGES * scale), 1000)
    context_of_image = rng.integers(0, CONTEXTS, images)
    by_context = [np.flatnonzero(context_of_image == k) for k in range(CONTEXTS)]
    categories = []
    bands = []
    for letter, count, low, high in BANDS:
        for _ in range(count):
            m = int(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
            if letter != "r":  # the tail is the tail at every scale
                m = max(int(m * scale), low)
            bands.append((letter, min(m, images)))
    polygon = ",".join(f"{v:.2f}" for v in rng.uniform(0, 400, points * 2))
    instances = 0
    with open(path, "w") as out:
        out.write('{"info":{"description":"bench_balance"},"annotations":[')
        first = True
        for cid, (letter, m) in enumerate(bands, start=1):
            context = int(rng.integers(0, CONTEXTS))
            own = by_context[context]
            inside = min(round(m * 0.8), own.size)
            chosen = np.union1d(rng.choice(own, inside, replace=False),
                                rng.choice(images, m - inside, replace=False))
            per_image = rng.integers(1, 4, chosen.size)
            lines = []
            for image, k in zip(chosen.tolist(), per_image.tolist(), strict=True):
                for _ in range(k):
                    instances += 1
                    lines.append(f'{{"id":{instances},"image_id":{image + 1},"category_id":{cid},'
                                 f'"bbox":[10.5,20.25,100.0,80.0],"area":8000.0,'
                                 f'"segmentation":[[{polygon}]]}}')
            if lines:
                out.write(("" if first else ",") + "\n" + ",\n".join(lines))
                first = False
            categories.append({"id": cid, "name": f"class_{cid:04d}" + ("_(thing)" if cid % 7 == 0 else ""),
                               "synonyms": [f"class_{cid:04d}"], "frequency": letter,
                               "supercategory": f"context_{context}", "image_count": int(chosen.size),
                               "instance_count": int(per_image.sum())})
        out.write('\n],"images":[')
        out.write(",\n".join(f'{{"id":{i + 1},"file_name":"{i + 1:012d}.jpg","width":640,"height":480}}'
                             for i in range(images)))
        out.write('],"licenses":[],"categories":')
        out.write(json.dumps(categories))
        out.write("}\n")
    return instances


def write_shape(path: Path, shape: str, scale: float, seed: int = 0) -> int:
    """A hostile file of ``shape`` (see above); returns the number of annotations."""
    rng = random.Random(seed)
    count = max(int(1_300_000 * scale), 1000)
    classes = 1000
    with open(path, "w") as out:
        out.write('{"categories":' + json.dumps([{"id": i, "name": f"class_{i:04d}"}
                                                for i in range(1, classes + 1)]) + ',"annotations":[')
        if shape == "cooccurrence":
            rows = (f'{{"image_id":{k // 50},"category_id":{c}}}'
                    for k in range(0, count, 50) for c in rng.sample(range(1, classes + 1), 50))
        elif shape == "tiny-images":
            rows = (f'{{"image_id":"image-{k:012d}","category_id":{rng.randint(1, classes)}}}'
                    for k in range(count))
        else:  # one-value: the annotations of cooccurrence's first images, and one huge string
            value = "\u00e9" * int(10_000_000 * scale)
            rows = iter([f'{{"image_id":0,"category_id":1,"note":"{value}"}}',
                         *(f'{{"image_id":{k},"category_id":{1 + k % classes}}}' for k in range(1000))])
            count = 1001
        first = True
        for row in rows:
            out.write(row if first else "," + row)
            first = False
        out.write("]}")
    return count


def peak_mb() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the memory of this program alone;
    ru_maxrss carries the parent's peak over the exec (the parent wrote a file of 200 MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, target: int, frequency: str, chart: Path | None,
            companion_cap: float) -> dict[str, object]:
    """Run in a fresh process: read, plan, chart; times and peak RSS."""
    from acp.balance import BalanceOptions, parse_frequency, plan_balance, plan_report, read_histogram
    from acp.errors import InputError
    from acp.export import load_categories

    base = peak_mb()
    start = time.perf_counter()
    try:
        histogram = read_histogram(path)
    except InputError as error:  # a hostile file refused: what that cost
        return {"refused": str(error)[-90:], "read_s": round(time.perf_counter() - start, 2),
                "read_peak_mb": round(peak_mb(), 1), "base_mb": round(base, 1)}
    read_s = time.perf_counter() - start
    read_peak = peak_mb()
    start = time.perf_counter()
    try:
        plan = plan_balance(histogram, BalanceOptions(target=target, frequency=parse_frequency(frequency),
                                                      companion_cap=companion_cap))
    except InputError as error:  # a top-up past MAX_TOPUP_INSTANCES: refused before planning
        return {"refused": str(error)[:90], "read_s": round(read_s, 2), "read_peak_mb": round(read_peak, 1),
                "base_mb": round(base, 1)}
    plan_s = time.perf_counter() - start
    concepts = plan.concept_input()
    start = time.perf_counter()
    load_categories([c for scene in concepts.scenes for c in scene], path)
    categories_s = time.perf_counter() - start
    chart_s = 0.0
    if chart is not None:
        start = time.perf_counter()
        plan_report(plan).write_chart(chart)
        chart_s = time.perf_counter() - start
    report = plan_report(plan)
    return {
        "instances": int(histogram.instances.sum()), "images": histogram.images,
        "categories": len(histogram.categories), "pairs": int(histogram.pair_row.size // 2),
        "read_s": round(read_s, 2), "read_peak_mb": round(read_peak, 1), "base_mb": round(base, 1),
        "plan_s": round(plan_s, 2), "categories_s": round(categories_s, 2), "chart_s": round(chart_s, 2),
        "scenes": len(plan.scenes), "budget": plan.budget(), "totals": report.totals(),
        "backoffs": sum(plan.backoffs.values()),
        "backoff_subjects": len({s for s, _, _ in plan.backoffs}),
        "total_peak_mb": round(peak_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, action="append")
    parser.add_argument("--target", type=int, default=100)
    parser.add_argument("--frequency", default="r,c")
    parser.add_argument("--companion-cap", type=float, default=0.1)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--shape", choices=("lvis", "cooccurrence", "tiny-images", "one-value"),
                        default="lvis")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shape != "lvis":
        args.frequency = ""  # no LVIS frequencies: every category is selected
    if args.child:
        path, chart = Path(args.child[0]), args.child[1]
        chart_path = Path(chart) if chart != "-" else None
        print(json.dumps(measure(path, args.target, args.frequency, chart_path, args.companion_cap)))
        return
    scales = sorted(args.scale or [0.25, 0.5, 1.0])
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-balance-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{'scale':>5} {'images':>7} {'instances':>9} {'file MB':>7} {'read s':>6} {'read MB':>7} "
          f"{'plan s':>6} {'cats s':>6} {'scenes':>6} {'peak MB':>7} {'pairs':>7}")
    last: dict[str, object] = {}
    for scale in scales:
        path = folder / f"{args.shape}_{scale:g}.json"
        if args.shape == "lvis":
            write_lvis(path, scale, args.points)
        else:
            write_shape(path, args.shape, scale)
        chart = folder / "balance.png" if scale == scales[-1] else None
        result = subprocess.run(
            [sys.executable, __file__, "--target", str(args.target), "--frequency", args.frequency,
             "--companion-cap", str(args.companion_cap), "--shape", args.shape,
             "--child", str(path), str(chart or "-")],
            capture_output=True, text=True, check=True, cwd=ROOT)
        last = json.loads(result.stdout)
        size = path.stat().st_size / 1e6
        if args.keep is None and chart is None:
            path.unlink()
        if "refused" in last:
            print(f"{scale:>5g} {'':>7} {'':>9} {size:>7.0f} {last['read_s']:>6} {last['read_peak_mb']:>7} "
                  f"refused: ...{last['refused']}")
            continue
        print(f"{scale:>5g} {last['images']:>7} {last['instances']:>9} {size:>7.0f} "
              f"{last['read_s']:>6} {last['read_peak_mb']:>7} {last['plan_s']:>6} {last['categories_s']:>6} "
              f"{last['scenes']:>6} {last['total_peak_mb']:>7} {last['pairs']:>7}")
    if "refused" in last:
        return
    budget = last["budget"]
    assert isinstance(budget, dict)
    total = max(budget["instances"], 1)
    tail = budget["to_selected_as_subject"] + budget["to_selected_as_companion"]
    print(f"largest: {last['categories']} categories, {last['pairs']} co-occurring pairs; "
          f"target {args.target} for --frequency {args.frequency}: {last['totals']}")
    print(f"budget: {budget['instances']} instances in {last['scenes']} scenes; to the selected (tail) "
          f"categories {tail} ({100 * tail / total:.1f}%: {budget['to_selected_as_subject']} as subjects, "
          f"{budget['to_selected_as_companion']} as companions), head companions past their quota "
          f"{budget['companions_past_quota']} ({100 * budget['companions_past_quota'] / total:.1f}%); "
          f"backed-off companions {last['backoffs']} (subjects {last['backoff_subjects']})")
    print(f"chart: {folder / 'balance.png'}; peak RSS of the whole child {last['total_peak_mb']} MB "
          f"(interpreter and imports {last['base_mb']} MB)")


if __name__ == "__main__":
    main()
