"""`acp score dataset` on synthetic COCO sets of N tiny images: seconds and peak RSS per N.

    python bench/bench_score_dataset.py [--images 5000] [--images 50000 ...] [--keep DIR]

For each ``--images`` N it writes N 32x32 PNGs of noise with 1 to 6 boxes each (4 categories)
and their COCO file, saves the tiny CLIP of ``acp.testing`` once, and runs
``acp score dataset COCO --images DIR -o REPORT --keep-above 50 --batch-size 64`` in a fresh
process under ``/usr/bin/time -v``, so the peak RSS is the command's own (the tiny CLIP keeps the
model's share small: what grows with N is the run's own bookkeeping). Prints N, boxes, seconds
and peak RSS in MB. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIDE = 32
NAMES = ("cat", "dog", "bicycle", "fire hydrant")


def write_dataset(folder: Path, n: int, seed: int = 0) -> tuple[Path, int]:
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records, annotations = [], []
    for i in range(n):
        name = f"{i:07d}.png"
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(images / name)
        records.append({"id": i + 1, "file_name": name, "width": SIDE, "height": SIDE})
        for _ in range(int(rng.integers(1, 7))):
            w, h = rng.uniform(4, 24, 2)
            x, y = rng.uniform(0, SIDE - w), rng.uniform(0, SIDE - h)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 5)),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2),
                "iscrowd": 0,
            })
    coco = {"images": records, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(NAMES)]}
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path, len(annotations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, action="append", help="images in the set (repeatable)")
    parser.add_argument("--keep", type=Path, help="folder for the sets (kept, and reused when there)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-score-dataset-"))
    root.mkdir(parents=True, exist_ok=True)
    clip = root / "clip"
    if not clip.is_dir():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from acp.testing import tiny_clip

        model, processor = tiny_clip()
        model.save_pretrained(clip)
        processor.save_pretrained(clip)
    print("images    boxes  seconds  peak_RSS_MB")
    for n in args.images or [5000]:
        folder = root / f"set-{n}"
        coco = folder / "annotations.json"
        if coco.is_file():
            boxes = len(json.loads(coco.read_text())["annotations"])
        else:
            coco, boxes = write_dataset(folder, n)
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "acp", "score", "dataset", str(coco),
                   "--images", str(folder / "images"), "-o", str(folder / "report"), "--keep-above", "50",
                   "--clip-model", str(clip), "--device", "cpu", "--batch-size", "64", "--no-progress"]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
        if result.returncode not in (0, 1) or rss is None:
            raise SystemExit(result.stderr[-2000:])
        print(f"{n:6d} {boxes:8d} {seconds:8.1f} {int(rss[1]) / 1024:12.0f}", flush=True)


if __name__ == "__main__":
    main()
