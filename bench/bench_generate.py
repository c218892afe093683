"""Figures for `acp generate` with the heuristic planner and the tiny models on CPU.

    python bench/bench_generate.py                   # throughput, stage shares, kill/resume
    python bench/bench_generate.py --memory 1000 10000   # peak memory at growing N

Each run is a separate `python -m acp generate` process so that its peak resident memory
(ru_maxrss of the child) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acp.testing import save_tiny_models


def run_args(models: dict[str, Path], out: Path, scenes: int, candidates: int, size: int,
             steps: int) -> list[str]:
    return [
        sys.executable, "-m", "acp", "generate", "--concepts", "dog,frisbee,cat,bus,person,cup",
        "--scenes", str(scenes), "--objects-per-scene", "1-3", "-o", str(out),
        "--model", str(models["gligen"]), "--clip-model", str(models["clip"]),
        "--size", str(size), "--steps", str(steps), "-k", str(candidates),
        "--min-clis-i", "0", "--planner", "heuristic", "--no-progress", "--device", "cpu",
    ]


def child_run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    env = {**os.environ, "OPENAI_API_KEY": "", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    pid = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(pid.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"generate failed: {pid.stderr.read().decode() if pid.stderr else ''}")
    return seconds, usage.ru_maxrss


def throughput(models: dict[str, Path], work: Path, scenes: int) -> None:
    out = work / "throughput"
    seconds, rss = child_run(run_args(models, out, scenes, candidates=4, size=64, steps=2))
    summary = json.loads((out / "summary.json").read_text())
    last = summary["last_run"]
    steady = last["seconds"] - last["stage_seconds"]["load"]
    print(f"end to end: {scenes} scenes, K=4, 64x64, 2 steps: {seconds:.1f} s wall "
          f"(process start and model load included), {scenes / steady:.2f} scenes/s after loading")
    shares = ", ".join(f"{k} {v * 100:.1f}%" for k, v in last["stage_shares"].items())
    print(f"  share of run time per stage: {shares}")
    print(f"  peak RSS {rss / 1024:.0f} MiB; images kept {summary['images_kept']}")


def memory(models: dict[str, Path], work: Path, counts: list[int]) -> None:
    for n in counts:
        out = work / f"memory-{n}"
        seconds, rss = child_run(run_args(models, out, n, candidates=1, size=64, steps=1))
        print(f"N={n:>6}: peak RSS {rss / 1024:.0f} MiB, {seconds:.0f} s, "
              f"{n / seconds:.1f} scenes/s (1 candidate, 64x64, 1 step)")


def kill_resume(models: dict[str, Path], work: Path, scenes: int) -> None:
    env = {**os.environ, "OPENAI_API_KEY": "", "OMP_NUM_THREADS": "1"}
    clean = work / "clean"
    uninterrupted, _ = child_run(run_args(models, clean, scenes, 2, 64, 2))
    out = work / "killed"
    args = run_args(models, out, scenes, 2, 64, 2)
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "progress.jsonl"
    while process.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= scenes // 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(progress.read_text().splitlines())
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = time.perf_counter() - start
    same = (json.loads((out / "annotations.json").read_text())["annotations"]
            == json.loads((clean / "annotations.json").read_text())["annotations"])
    print(f"kill/resume: uninterrupted {uninterrupted:.1f} s for {scenes} scenes; SIGKILL after "
          f"{done} finished scenes, then the rerun took {after:.1f} s to a finished dataset; "
          f"annotations identical to the uninterrupted run: {same}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--memory", type=int, nargs="*", default=[])
    args = parser.parse_args()
    print(f"peak RSS of this process before any run: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = save_tiny_models(work / "models")
        if args.memory:
            memory(models, work, args.memory)
            return
        throughput(models, work, args.scenes)
        kill_resume(models, work, 20)


if __name__ == "__main__":
    main()
