"""``acp score layouts``' work: plan lines validated, scored and written back, in batches, on
several processes when there is more than one batch.

Each batch of ``BATCH`` lines is parsed and validated (``acp.schema.parse_plan_line``), scored
in one pass (``LayoutScorer.score_many``) and encoded (``scored_line``) by one worker; the
parent reads lines and writes the workers' text in input order, with at most two batches per
worker in flight, so memory stays flat however long the file. Workers are forked from the
parent (Linux), which hands them its scorer, bank included, without a copy or a reload; elsewhere,
or for one batch, the parent does the work itself. The output is the same either way.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from acp.jsonl import iter_lines
from acp.schema import ScenePlan, parse_plan_line
from acp.score.layout import LayoutScore, LayoutScorer, number_text

BATCH = 1024  # plans scored in one vectorised pass
MAX_WORKERS = 8
Chunk = list[tuple[int, str]]
Scored = tuple[str, list[tuple[int, str]], int]  # output text, (line, reason) of bad lines, plans scored


def scored_line(plan: ScenePlan, result: LayoutScore) -> str:
    """A plan's record with its ``clis_l``, ``clis_l_sanity``, ``clis_l_method`` and
    ``clis_l_detail`` after its own keys, as one JSON line: the plan serialised by pydantic's
    compiled encoder, the scores by ``LayoutScore.to_json``; the same record, value for value,
    as the dict of both dumped whole (``acp.score.candidates.layout_fields``)."""
    score = number_text(result.score, 3)
    value, sanity = ("null", score) if result.reference_free else (score, "null")
    return (f'{plan.model_dump_json()[:-1]},"clis_l":{value},"clis_l_sanity":{sanity},'
            f'"clis_l_method":"{result.method}","clis_l_detail":{result.to_json()}}}\n')


def score_chunk(scorer: LayoutScorer, chunk: Chunk) -> Scored:
    plans: list[ScenePlan] = []
    bad: list[tuple[int, str]] = []
    for number, text in chunk:
        plan, reason = parse_plan_line(text)
        if plan is None:
            bad.append((number, reason or "invalid"))
        else:
            plans.append(plan)
    text = "".join(scored_line(p, r) for p, r in zip(plans, scorer.score_many(plans), strict=True))
    return text, bad, len(plans)


_SCORER: LayoutScorer | None = None  # the forked workers' (set in the parent before the fork)


def _score_in_worker(chunk: Chunk) -> Scored:
    assert _SCORER is not None
    return score_chunk(_SCORER, chunk)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunks(lines: Iterable[tuple[int, str]]) -> Iterator[Chunk]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, BATCH)):
        yield chunk


def score_plan_file(scorer: LayoutScorer, path: Path, workers: int | None = None) -> Iterator[Scored]:
    """Every batch of ``path`` scored, in input order; ``workers`` processes (default: the
    usable CPUs, at most ``MAX_WORKERS``)."""
    global _SCORER
    chunks = _chunks(iter_lines(path))
    workers = min(usable_cpus(), MAX_WORKERS) if workers is None else workers
    first = list(itertools.islice(chunks, 2))
    if workers <= 1 or len(first) < 2 or not sys.platform.startswith("linux"):
        for chunk in itertools.chain(first, chunks):
            yield score_chunk(scorer, chunk)
        return
    import multiprocessing

    _SCORER = scorer
    pool: Any = multiprocessing.get_context("fork").Pool(workers)
    try:
        pending: deque[Any] = deque()
        for chunk in itertools.chain(first, chunks):
            pending.append(pool.apply_async(_score_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        _SCORER = None
