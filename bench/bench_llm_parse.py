"""How the lenient LLM reply parser's time grows with the reply, on adversarial shapes.

    python bench/bench_llm_parse.py [--sizes 0.1,0.4,1.6,6.4] [--repeats 3]

Each shape is a reply an LLM server (broken or hostile) could send, of about SIZE MB; the time
is `parse_draft` on it, the best of --repeats. A linear parser takes about 4x the time for 4x
the size: the "x4" columns show the ratio to the previous size. Replies are cut at 1 MiB
before they reach the parser (`acp.llm.MAX_REPLY_BYTES`); the larger sizes show the growth.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from acp.errors import PlanValidationError
from acp.plan.parse import parse_draft


def repeat(unit: str, size: int, prefix: str = "") -> str:
    return prefix + unit * max(1, (size - len(prefix)) // len(unit))


SHAPES: dict[str, Callable[[int], str]] = {
    # one "{" per character: every start opens and never closes
    "brace soup": lambda n: "{" * n,
    # a quote after every brace: half the braces sit inside strings
    "quote soup": lambda n: repeat('{"', n),
    "escaped quote soup": lambda n: repeat('\\"{', n, '{"{'),
    # a valid object nested deeper than any decoder goes
    "deep nesting": lambda n: repeat("[", n, '{"a": '),
    # many fenced blocks, each with an unclosed object to scan
    "many fences": lambda n: repeat('```json\n{"objects": [1, 2, x\n```\n', n),
    # braces in prose, each closing at once
    "prose braces": lambda n: repeat("{as requested} ", n),
    # 40 nested starts, then short junk tokens to the end: every start's scan runs to the end
    "nested starts, junk": lambda n: repeat("x,", n, "{x," * 40),
    # 40 nested starts, each a strict JSON prefix that only fails at the very end
    "nested starts, long prefix": lambda n: repeat("1,", n, '{"a":[' * 40),
    # a plan cut short inside a never-ending list of objects
    "truncated object list": lambda n: repeat('{"bbox":[0,0,0,0]},', n, '{"objects":['),
    # one object with many distinct unknown keys: one validation problem each
    "many keys": lambda n: "{" + ",".join(f'"k{i}":1' for i in range(n // 9)) + "}",
    # one valid object whose caption is the whole reply
    "huge string": lambda n: json.dumps({"caption": "a" * n, "objects": []}),
}


def parse_time(text: str, repeats: int) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            parse_draft(text, 512, 512)
            outcome = "parsed"
        except PlanValidationError as error:
            outcome = f"{len(error.problems)} problem(s): {error.problems[0][1][:40]}"
        best = min(best, time.perf_counter() - start)
    return best, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1,0.4,1.6,6.4", help="reply sizes in MB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    header = f"{'shape':28}" + "".join(f"{f'{s:g} MB':>10}" + ("     x4" if k else "")
                                       for k, s in enumerate(sizes))
    print(header + "   outcome at the largest size")
    for name, make in SHAPES.items():
        row, previous, outcome = f"{name:28}", None, ""
        for size in sizes:
            seconds, outcome = parse_time(make(int(size * 1_000_000)), args.repeats)
            row += f"{seconds:9.3f}s"
            if previous is not None:
                row += f"{seconds / max(previous, 1e-6):7.1f}"
            previous = seconds
        print(row + "   " + outcome, flush=True)


if __name__ == "__main__":
    main()
