"""Figures for `acp export yolo` (hard links) and `acp export coco-split` on synthetic datasets.

    python bench/bench_export.py [--sizes 10000 30000 100000] [--dir DIR]

Each size runs in its own process (so peak RSS is that size's) over a fresh acp-like dataset
under the system temp directory (``--dir`` to choose), removed afterwards: ``images/`` holds
one tiny JPEG per image (distinct files: a hard link needs its own target), and
``annotations.json`` 1-4 boxes per image with acp's usual provenance. Building the dataset is
not timed (and synced to disk first). Printed: seconds, images per second and peak RSS of each export.
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


def make_dataset(folder: Path, size: int) -> Path:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buffer, format="JPEG", quality=90)
    payload = buffer.getvalue()
    images = folder / "images"
    images.mkdir(parents=True)
    records, annotations = [], []
    for n in range(size):
        name = f"{n:06d}.jpg"
        (images / name).write_bytes(payload)
        records.append({"id": n + 1, "file_name": name, "width": 512, "height": 512, "license": 1,
                        "acp": {"plan_id": f"{n:06d}", "candidate": n % 4, "caption": "a dog and a frisbee",
                                "seed": n, "planner": "heuristic", "render_model": "gligen", "steps": 25,
                                "guidance": 7.5, "beta": 0.3, "prompt": "a dog and a frisbee", "clis": 70.0}})
        for k in range(1 + n % 4):
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": 1 + (n + k) % 8,
                                "bbox": [10.0 + 40 * k, 20.0, 100.0, 80.5], "area": 8050.0, "iscrowd": 0})
    data = {"info": {"description": "bench"}, "licenses": [{"id": 1, "name": "x", "url": ""}],
            "categories": [{"id": c + 1, "name": f"class{c}", "supercategory": "object"} for c in range(8)],
            "images": records, "annotations": annotations}
    path = folder / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def run_one(size: int, folder: Path) -> dict[str, float]:
    from acp.export.split import Fractions, split_coco
    from acp.export.yolo import export_yolo

    annotations = make_dataset(folder, size)
    os.sync()  # the export syncs once before its rename: not the dataset's own writes
    start = time.perf_counter()
    summary = export_yolo(annotations, folder / "yolo", fractions=Fractions(0.1))
    yolo = time.perf_counter() - start
    assert summary.copied == 0, "hard links refused: the figure would be of copies"
    start = time.perf_counter()
    split_coco(annotations, folder, fractions=Fractions(0.1))
    split = time.perf_counter() - start
    start = time.perf_counter()
    export_yolo(annotations, folder / "yolo", fractions=Fractions(0.2))  # over the earlier export
    again = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": size, "yolo_s": yolo, "rerun_s": again, "coco_split_s": split, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-export-"))
        try:
            print(json.dumps(run_one(args.one, folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    print(f"{'images':>8} {'yolo s':>8} {'images/s':>9} {'rerun s':>8} {'coco-split s':>12} "
          f"{'peak RSS MB':>11}")
    where = ["--dir", str(args.dir)] if args.dir else []
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), *where]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{row['images']:>8} {row['yolo_s']:>8.2f} {row['images'] / row['yolo_s']:>9.0f} "
              f"{row['rerun_s']:>8.2f} {row['coco_split_s']:>12.2f} {row['peak_rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
