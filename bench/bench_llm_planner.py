"""LLM planner figures against the local chat-completions test server (prints, asserts nothing).

1. Throughput: 200 scenes through ``LLMPlanner.plan_many`` with the server answering after
   200 ms, at concurrency 1 and 16; the speed-up should be at least 12x.
2. Malformed-reply corpus: every reply kind of ``tests.chat_server.MALFORMED`` (answered validly
   on a re-ask), plus replies that stay bad, counted as parsed as they were, repaired, re-asked
   successfully, recorded as failures, and crashes (exceptions out of ``plan_many``; must be 0).

Run: ``.venv/bin/python bench/bench_llm_planner.py``
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.chat_server

from acp.llm import ChatSettings
from acp.plan.base import PlanSettings, SceneRequest
from acp.plan.llm import LLMPlanner
from tests.chat_server import (
    MALFORMED,
    ChatServer,
    always,
    empty_text,
    first_bad_then_valid,
    schema_violation_text,
)

VOCABULARY = ["dog", "frisbee", "person", "bicycle", "car", "cat", "chair", "cup", "kite", "bench"]


def requests(n: int, width: int = 512, height: int = 512) -> list[SceneRequest]:
    out = []
    for k in range(n):
        size = 1 + k % 3
        concepts = tuple(VOCABULARY[(k + j) % len(VOCABULARY)] for j in range(size))
        out.append(SceneRequest(f"{k:06d}", concepts, seed=k, width=width, height=height))
    return out


def planner(url: str, concurrency: int) -> LLMPlanner:
    settings = ChatSettings(model="bench-model", base_url=url, api_key="sk-bench", timeout=30,
                            concurrency=concurrency, retry_backoff=0.01)
    return LLMPlanner(settings, PlanSettings(), max_reasks=2)


def throughput(scenes: int = 200, delay: float = 0.2) -> None:
    # The server runs in its own process, as a real one would: in this process its request
    # handling would compete with the client for the GIL and blur the figure.
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "tests.chat_server", "--delay", str(delay)],
                              cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        walls = _throughput(url, scenes, delay)
    finally:
        server.terminate()
        server.wait()
    rounds = -(-scenes // 16)  # the last round is partial: 200 scenes take 13 rounds of 16
    print(f"speed-up 16 vs 1: {walls[1] / walls[16]:.1f}x (at best {scenes / rounds:.1f}x: "
          f"{rounds} rounds of 16 against {scenes} one at a time)")


def _throughput(url: str, scenes: int, delay: float) -> dict[int, float]:
    walls = {}
    for concurrency in (1, 16):
        started = time.perf_counter()
        outcomes = list(planner(url, concurrency).plan_many(requests(scenes)))
        walls[concurrency] = time.perf_counter() - started
        planned = sum(o.ok for o in outcomes)
        print(f"concurrency {concurrency:2d}: {scenes} scenes ({planned} planned) in "
              f"{walls[concurrency]:6.2f} s = {scenes / walls[concurrency]:6.1f} scenes/s "
              f"(server delay {delay * 1000:.0f} ms)")
    return walls


def corpus(server: ChatServer, scenes_per_kind: int = 12) -> None:
    kinds = {name: (first_bad_then_valid(maker, 640, 480), expected)
             for name, (maker, expected) in MALFORMED.items()}
    kinds["always_schema_violation"] = (always(schema_violation_text), "fail")
    kinds["always_empty"] = (always(empty_text), "fail")
    totals: collections.Counter[str] = collections.Counter()
    print(f"\n{'reply kind':26s} {'expected':9s} parsed repaired re-asked failed crashes")
    for name, (responder, expected) in kinds.items():
        server.responder = responder
        counts: collections.Counter[str] = collections.Counter()
        try:
            for outcome in planner(server.url, 8).plan_many(requests(scenes_per_kind, 640, 480)):
                if outcome.plan is None:
                    counts["failed"] += 1
                elif outcome.attempts > 1:
                    counts["re-asked"] += 1
                elif outcome.plan.repairs:
                    counts["repaired"] += 1
                else:
                    counts["parsed"] += 1
        except Exception as error:  # a crash is what this corpus is here to catch
            counts["crashes"] += 1
            print(f"  crash in {name}: {error!r}")
        totals.update(counts)
        print(f"{name:26s} {expected:9s} {counts['parsed']:6d} {counts['repaired']:8d} "
              f"{counts['re-asked']:8d} {counts['failed']:6d} {counts['crashes']:7d}")
    print(f"{'total':26s} {'':9s} {totals['parsed']:6d} {totals['repaired']:8d} "
          f"{totals['re-asked']:8d} {totals['failed']:6d} {totals['crashes']:7d}")
    print(f"({len(kinds)} kinds x {scenes_per_kind} scenes = {len(kinds) * scenes_per_kind} scenes; "
          f"failures are recorded as outcomes with the raw reply, never raised)")


def main() -> None:
    throughput()
    server = ChatServer().start()
    try:
        corpus(server)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
