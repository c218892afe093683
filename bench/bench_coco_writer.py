"""Figures for the COCO writer alone: total time, checkpoint times, peak memory, file size.

    python bench/bench_coco_writer.py [--sizes 10000 100000 1000000] [--checkpoint-every 1000]

Each size runs in its own process (so peak RSS is that size's), writing into a fresh folder
under the system temp directory (``--dir`` to choose), removed afterwards. Images are one
pre-encoded 8x8 JPEG passed as a path, so no image is encoded: what is measured is the writer
(file copy, records, log, checkpoints), then the reopening of the finished folder (what a
resumed run pays once). Each image has 1-4 boxes and acp's usual provenance, about 1 KB of
JSON per image as in a real run. To measure another version of the writer, put its tree first
on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(size: int, checkpoint_every: int, folder: Path) -> dict[str, float]:
    from PIL import Image

    from acp.export import CategorySet, CocoWriter, ImageProvenance, Instance
    from acp.export.coco import InstanceProvenance

    concepts = ["dog", "cat", "frisbee", "bicycle", "fire hydrant", "umbrella", "kite", "bench"]
    categories = CategorySet.from_concepts(concepts)
    source = folder / "source.jpg"
    Image.new("RGB", (8, 8), (120, 60, 30)).save(source, quality=90)
    # A pool of records made in advance: building pydantic models is the caller's cost.
    pool = []
    for variant in range(64):
        instances = [
            Instance(
                category_id=1 + (variant + k) % len(concepts),
                bbox=(0.5 + k, 0.25 * k, 3.0 + variant % 4, 2.5),
                provenance=InstanceProvenance(
                    object_id=k, description=f"a {concepts[(variant + k) % len(concepts)]} in the park",
                    clis_i=61.5 + k,
                ),
            )
            for k in range(1 + variant % 4)
        ]
        provenance = ImageProvenance(
            plan_id=f"{variant:06d}", candidate=variant % 4, caption="a dog catching a frisbee in a park",
            seed=1000 + variant, plan_seed=variant, planner="llm", planner_model="gpt-4o-mini",
            render_model="masterful/gligen-1-4-generation-text-box", steps=50, guidance=7.5, beta=0.3,
            prompt="a dog catching a frisbee in a park, photo, high quality",
            negative_prompt="blurry, low quality", clis=72.25, clis_l=65.5, clis_i=79.0,
        )
        pool.append((instances, provenance))

    out = folder / "out"
    writer = CocoWriter(out, categories, checkpoint_every=checkpoint_every)
    durations: list[float] = []
    checkpoint = writer.checkpoint

    def timed_checkpoint() -> None:
        start = time.perf_counter()
        checkpoint()
        durations.append(time.perf_counter() - start)

    writer.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    cpu, wall = time.process_time(), time.perf_counter()
    writer.open()
    open_seconds = time.perf_counter() - wall
    durations.clear()
    for number in range(size):
        instances, provenance = pool[number % len(pool)]
        writer.add_image(f"{number:07d}", source, instances, provenance)
    in_run = list(durations)
    mark = time.perf_counter()
    writer.close()
    close_seconds = time.perf_counter() - mark
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with open(out / "annotations.json", "rb") as handle:  # a cheap check that it is whole
        handle.seek(-4, 2)
        assert handle.read() == b"\n]}\n"
    mark = time.perf_counter()
    CocoWriter(out, categories, checkpoint_every=checkpoint_every).open().close()  # a resumed run
    reopen_seconds = time.perf_counter() - mark
    return {
        "size": size,
        "wall_s": wall,
        "cpu_s": cpu,
        "open_s": open_seconds,
        "checkpoints": len(in_run),
        "checkpoint_median_s": statistics.median(in_run) if in_run else 0.0,
        "checkpoint_last_s": in_run[-1] if in_run else 0.0,
        "checkpoint_total_s": sum(in_run),
        "close_s": close_seconds,
        "reopen_s": reopen_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "annotations_mb": (out / "annotations.json").stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary folders go")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        folder = Path(tempfile.mkdtemp(prefix="bench-coco-", dir=args.dir))
        try:
            print(json.dumps(run_one(args.child, args.checkpoint_every, folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    print(f"{'images':>9} {'total s':>8} {'cpu s':>8} {'open s':>7} {'ckpts':>6} {'ckpt med s':>10} "
          f"{'ckpt last s':>11} {'ckpt sum s':>10} {'close s':>7} {'reopen s':>8} {'peak RSS MB':>11} "
          f"{'json MB':>8}",
          flush=True)
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--checkpoint-every",
                   str(args.checkpoint_every)]
        if args.dir is not None:
            command += ["--dir", str(args.dir)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{size:>9} {result['wall_s']:>8.1f} {result['cpu_s']:>8.1f} {result['open_s']:>7.3f} "
              f"{result['checkpoints']:>6} {result['checkpoint_median_s']:>10.4f} "
              f"{result['checkpoint_last_s']:>11.4f} {result['checkpoint_total_s']:>10.1f} "
              f"{result['close_s']:>7.3f} {result['reopen_s']:>8.2f} {result['peak_rss_mb']:>11.0f} "
              f"{result['annotations_mb']:>8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
