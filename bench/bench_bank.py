"""`acp bank build` and `Bank.load` on a synthetic COCO-train-sized file: time, peak RSS, size.

    python bench/bench_bank.py [--images 118000] [--images 30000 ...] [--points 20] [--keep DIR]

For each ``--images`` N it writes a COCO-format file shaped like ``instances_train2017.json``:
N images with COCO's image keys, 7.3 boxes per image on average (860k at 118k images), 80
categories with Zipf frequencies, and a polygon of ``--points`` points under every annotation
(formatted like COCO's, two decimals). It then runs, each in a fresh process so that the peak
RSS is the command's own:

- build: ``acp bank build FILE -o BANK`` (``Bank.from_coco`` and ``Bank.save``);
- load: ``Bank.load(BANK)`` and everything scoring reads (``pair_features``,
  ``prior_features``), i.e. the time until the first layout can be scored.

Prints one row per N: images, boxes, file MB, build s, build peak RSS MB, bank MB on disk, load
s, load peak RSS MB. Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BOXES_PER_IMAGE = 860_000 / 118_000
CATEGORIES = 80
POLYGON_POOL = 4096  # distinct polygon texts; the parse cost is the same as all-distinct ones


def write_coco(path: Path, images: int, points: int, seed: int = 0) -> int:
    """Write the file image by image (the generator itself holds no dataset); return the boxes."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    p = 1.0 / np.arange(1, CATEGORIES + 1)
    p /= p.sum()
    counts = rng.poisson(BOXES_PER_IMAGE - 1, images) + 1
    total = int(counts.sum())
    cats = rng.choice(CATEGORIES, total, p=p) + 1
    w = rng.uniform(0.02, 0.6, total) * width
    h = rng.uniform(0.02, 0.6, total) * height
    x = rng.uniform(0, 1, total) * (width - w)
    y = rng.uniform(0, 1, total) * (height - h)
    pool = [
        "[[" + ",".join(f"{v:.2f}" for v in rng.uniform(0, 480, 2 * points)) + "]]"
        for _ in range(POLYGON_POOL)
    ]
    picks = rng.integers(0, POLYGON_POOL, total)
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"info": {"description": "synthetic COCO-train-sized file"}, "licenses": [], "images": [')
        for i in range(images):
            record = {
                "license": 1, "file_name": f"{i + 1:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/train2017/{i + 1:012d}.jpg",
                "height": height, "width": width, "date_captured": "2013-11-14 11:18:45",
                "flickr_url": f"http://farm4.staticflickr.com/1/{i + 1}_abcdef_z.jpg", "id": i + 1,
            }
            out.write(("," if i else "") + json.dumps(record))
        out.write('], "annotations": [')
        k = 0
        for i, count in enumerate(counts):
            for _ in range(int(count)):
                bbox = f"[{x[k]:.2f},{y[k]:.2f},{w[k]:.2f},{h[k]:.2f}]"
                out.write(
                    ("," if k else "")
                    + f'{{"segmentation": {pool[picks[k]]}, "area": {w[k] * h[k] * 0.7:.4f}, '
                    f'"iscrowd": 0, "image_id": {i + 1}, "bbox": {bbox}, '
                    f'"category_id": {int(cats[k])}, "id": {k + 1}}}'
                )
                k += 1
        out.write('], "categories": [')
        out.write(", ".join(json.dumps({"supercategory": "thing", "id": c + 1, "name": f"class {c}"})
                            for c in range(CATEGORIES)))
        out.write("]}")
    return total


# Each step runs in its own interpreter; it prints "seconds peak_rss_kb".
BUILD = """
import resource, sys, time
from pathlib import Path
from acp.score.bank import Bank
start = time.perf_counter()
bank = Bank.from_coco([Path(sys.argv[1])])
bank.save(Path(sys.argv[2]))
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
LOAD = """
import resource, sys, time
from pathlib import Path
from acp.score.bank import Bank
start = time.perf_counter()
bank = Bank.load(Path(sys.argv[1]))
bank.pair_features, bank.prior_features
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_step(code: str, *args: Path) -> tuple[float, float]:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(result.stderr)
    seconds, rss_kb = result.stdout.split()[-2:]
    return float(seconds), float(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, action="append", help="images per file (repeatable)")
    parser.add_argument("--points", type=int, default=20, help="points per polygon")
    parser.add_argument("--keep", type=Path, help="folder for the files (kept, and reused when there)")
    args = parser.parse_args()
    sizes = args.images or [118_000]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-bank-"))
    root.mkdir(parents=True, exist_ok=True)
    print("images   boxes  file_MB  build_s  build_RSS_MB  bank_MB  load_s  load_RSS_MB")
    for n in sizes:
        coco = root / f"coco-{n}-{args.points}.json"
        boxes_file = coco.with_suffix(".boxes")
        if not coco.is_file():
            boxes_file.write_text(str(write_coco(coco, n, args.points)))
        bank = root / f"bank-{n}"
        build_s, build_rss = run_step(BUILD, coco, bank)
        size = sum(p.stat().st_size for p in bank.iterdir()) / 2**20
        load_s, load_rss = run_step(LOAD, bank)
        print(f"{n:6d} {int(boxes_file.read_text()):7d} {coco.stat().st_size / 2**20:8.0f} {build_s:8.1f} "
              f"{build_rss:13.0f} {size:8.1f} {load_s:7.2f} {load_rss:12.0f}", flush=True)


if __name__ == "__main__":
    main()
