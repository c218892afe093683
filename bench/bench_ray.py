"""How ``acp generate --executor ray`` scales with workers, on this machine.

    python bench/bench_ray.py                      # 1, 2, 4 workers, 48 scenes, 1.0 s per batch
    python bench/bench_ray.py --workers 1 2 4 8 --scenes 96

Each worker's renderer is a stand-in that holds its "device" for a fixed time per batch while
releasing the GIL (``time.sleep``, as a GPU kernel does) and returns real 512 px images;
everything else is real: the heuristic planner, CLIS-L, CLIP-I with the tiny CLIP in each
worker, JPEG encoding in the workers, and the driver writing images, COCO and the ledger. A
machine with 2 cores shows with this double the scaling that real rendering would show with
one GPU per worker; real CPU work could not scale past the cores.

Prints scenes/s per worker count, the speed-up over one worker, and the driver's own CPU
seconds per image (``time.process_time`` of the driver process, which writes everything).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from acp.concepts import ConceptInput
from acp.generate import GenerateConfig, generate
from acp.generate.ray import RayEngine, RayOptions
from acp.render.gligen import RenderSettings
from acp.score.candidates import ScoreSettings
from acp.testing import save_tiny_models

BENCH = str(Path(__file__).resolve().parent)


def make_renderer(seconds: float, size: int) -> object:
    """Runs in each worker (pickled by value from this script): bench_engine's stand-in."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    from bench_engine import SleepingRenderer

    return SleepingRenderer(seconds, size)


def run(models: dict[str, Path], out: Path, workers: int, scenes: int, seconds: float, size: int,
        candidates: int) -> dict[str, float]:
    import functools

    config = GenerateConfig(
        concepts=ConceptInput(vocabulary=("dog", "frisbee", "cat", "bus", "person", "cup")),
        scenes=scenes, size=(size, size), render=RenderSettings(model="stand-in"),
        score=ScoreSettings(clip_model=str(models["clip"]), min_clis_i=0.0), candidates=candidates,
    )
    cpu = time.process_time()
    engine = RayEngine(RayOptions(workers=workers, cpus_per_worker=0.5), "cpu",
                       make_renderer=functools.partial(make_renderer, seconds, size))
    summary = generate(config, out, engine, progress=False)
    driver_cpu = time.process_time() - cpu
    loop = summary.seconds - summary.times.load
    return {"workers": workers, "scenes": summary.this_run, "seconds": loop,
            "scenes/s": summary.this_run / loop,
            "driver CPU ms/image": 1e3 * driver_cpu / max(summary.kept, 1),
            "load s": summary.times.load}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--render-seconds", type=float, default=1.0, help="stand-in device time per batch")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("-k", "--candidates", type=int, default=4)
    args = parser.parse_args()
    # Logical CPUs for the actors (they mostly sleep); the machine's cores are what they are.
    ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = save_tiny_models(Path(tmp) / "models")
        for workers in args.workers:
            rows.append(run(models, Path(tmp) / f"w{workers}", workers, args.scenes, args.render_seconds,
                            args.size, args.candidates))
    ray.shutdown()
    base = rows[0]["scenes/s"]
    print(f"{args.scenes} scenes, K={args.candidates}, {args.size} px, stand-in device "
          f"{args.render_seconds:.2f} s per batch (B=1); CLIP-I with the tiny CLIP in each worker\n")
    print("| workers | scenes/s | speed-up | wall s | driver CPU ms/image | worker start s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['scenes/s']:.2f} | {row['scenes/s'] / base:.2f}x | "
              f"{row['seconds']:.1f} | {row['driver CPU ms/image']:.1f} | {row['load s']:.1f} |")


if __name__ == "__main__":
    main()
