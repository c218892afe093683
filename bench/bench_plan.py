"""Figures for planning: `acp --help` wall time and heuristic planner throughput.

    python bench/bench_plan.py [--scenes 10000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acp.concepts import sample_scenes
from acp.plan.heuristic import HeuristicPlanner
from acp.plan.priors import PRIORS
from acp.plan.run import make_requests, run_planner


def help_time(repeats: int = 5) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "acp", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def heuristic_rate(scenes: int) -> tuple[float, int]:
    vocabulary = list(PRIORS)
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "plans.jsonl"
        requests = make_requests(sample_scenes(vocabulary, scenes, (1, 4), seed=0), 0, 512, 512)
        start = time.perf_counter()
        summary = run_planner(HeuristicPlanner(), requests, output, total=scenes, progress=False)
        elapsed = time.perf_counter() - start
    return summary.planned / elapsed, summary.failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=10_000)
    args = parser.parse_args()
    times = help_time()
    print(f"acp --help wall time: median {statistics.median(times) * 1000:.0f} ms "
          f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms)")
    rate, failed = heuristic_rate(args.scenes)
    print(f"heuristic planner: {args.scenes} scenes of 1-4 objects (80 COCO categories), "
          f"written to plans.jsonl: {rate:,.0f} plans/s, {failed} failed")


if __name__ == "__main__":
    main()
