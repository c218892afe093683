"""Figures for `acp report`: build time, page size and thumbnails for generate-like folders.

    python bench/bench_report.py [--sizes 1000 10000 30000] [--dir DIR]

Each size runs in its own process over a fresh folder shaped like an `acp generate` output
with ``--keep-candidates``: 512x512 JPEGs (64 distinct pictures, hard-linked under every
name, so that building the folder is quick; the report opens each sampled name anew),
``annotations.json`` with 1-4 boxes and provenance per image, 4 scored candidates per plan in
``scores.jsonl``, one plan in five dropped (its candidates in ``candidates/``), 20 categories.
Every record is valid (the report leaves out what its models refuse, so an invalid one would
cost nothing). Building the folder is not timed. Printed: seconds, MB of HTML, thumbnails,
records left out (0 expected), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = 20


def make_folder(folder: Path, size: int) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    pool = folder / "pool"
    pool.mkdir(parents=True)
    for k in range(64):  # smooth pictures with a few shapes: JPEG sizes like a render's
        y, x = np.mgrid[0:512, 0:512]
        base = np.stack([(x + 3 * k) % 256, (y + 5 * k) % 256, (x + y) // 4 % 256], axis=-1).astype(np.uint8)
        picture = Image.fromarray(base)
        draw = ImageDraw.Draw(picture)
        for _ in range(4):
            x0, y0 = rng.integers(0, 400, 2)
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            draw.ellipse([int(x0), int(y0), int(x0) + 100, int(y0) + 80], fill=colour)
        picture.save(pool / f"{k}.jpg", quality=90)
    (folder / "images").mkdir()
    (folder / "candidates").mkdir()
    images, annotations = [], []
    with open(folder / "scores.jsonl", "w") as scores, open(folder / "progress.jsonl", "w") as progress, \
            open(folder / "plans.jsonl", "w") as plans:
        for n in range(size):
            plan_id = f"{n:06d}"
            boxes = [[40.0 + 100 * k, 60.0, 90.0, 120.0] for k in range(1 + n % 4)]
            objects = [{"id": k, "category": f"class{(n + k) % CATEGORIES}", "description": "a thing",
                        "bbox": [v / 512 for v in b]} for k, b in enumerate(boxes)]
            plans.write(json.dumps({"id": plan_id, "objects": objects, "caption": "a scene",
                                    "planner": "heuristic"}) + "\n")
            dropped = n % 5 == 4
            for index in range(4):
                clis = float(rng.uniform(30, 90))
                scores.write(json.dumps({"plan_id": plan_id, "index": index, "path": f"{plan_id}/{index}.png",
                                         "clis": clis, "clis_l": None, "clis_i": clis,
                                         "objects": [{"id": o["id"], "category": o["category"],
                                                      "clis_i": clis, "kept": not dropped} for o in objects],
                                         "best": index == 0, "kept": not dropped}) + "\n")
                if dropped:
                    (folder / "candidates" / plan_id).mkdir(exist_ok=True)
                    target = folder / "candidates" / plan_id / f"{index}.png"
                    os.link(pool / f"{(n + index) % 64}.jpg", target)
            progress.write(json.dumps({"plan_id": plan_id, "status": "dropped" if dropped else "kept",
                                       "reason_kind": "no candidate passes the CLIS-I threshold" if dropped
                                       else None, "clis_l_method": "sanity"}) + "\n")
            if dropped:
                continue
            image_id = len(images) + 1
            os.link(pool / f"{n % 64}.jpg", folder / "images" / f"{plan_id}.jpg")
            images.append({"id": image_id, "file_name": f"{plan_id}.jpg", "width": 512, "height": 512,
                           "acp": {"plan_id": plan_id, "clis": float(rng.uniform(50, 90)),
                                   "caption": "a scene"}})
            for k, box in enumerate(boxes):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": 1 + (n + k) % CATEGORIES, "bbox": box, "area": 10800.0,
                                    "iscrowd": 0, "acp": {"clis_i": 70.0}})
    categories = [{"id": c + 1, "name": f"class{c}", "supercategory": "object"} for c in range(CATEGORIES)]
    (folder / "annotations.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "categories": categories, "images": images, "annotations": annotations}))
    (folder / "settings.json").write_text(json.dumps({"scenes": size, "min_clis_i": 60.0, "bank": None,
                                                     "keep_candidates": True}))
    (folder / "summary.json").write_text(json.dumps({
        "scenes": size, "images_kept": len(images), "scenes_dropped": size - len(images), "scenes_failed": 0,
        "drop_reasons": {"no candidate passes the CLIS-I threshold": size - len(images)}}))
    shutil.rmtree(pool)


def run_one(size: int, folder: Path) -> dict[str, float]:
    from acp.report import write_report

    make_folder(folder, size)
    start = time.perf_counter()
    summary = write_report(folder)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    left_out = (folder / "report.html").read_text().count("Records left out as unreadable")
    return {"scenes": size, "images": summary.images, "seconds": seconds, "mb": summary.bytes / 1e6,
            "thumbnails": summary.thumbnails, "left_out": left_out, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 30_000])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-report-"))
        try:
            print(json.dumps(run_one(args.one, folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    print(f"{'scenes':>7} {'images':>7} {'seconds':>8} {'MB':>6} {'thumbnails':>10} {'left out':>8} "
          f"{'peak RSS MB':>11}")
    where = ["--dir", str(args.dir)] if args.dir else []
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), *where]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{row['scenes']:>7} {row['images']:>7} {row['seconds']:>8.2f} {row['mb']:>6.2f} "
              f"{row['thumbnails']:>10} {row['left_out']:>8} {row['peak_rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
