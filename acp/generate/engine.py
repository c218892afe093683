"""What an engine is: it loads the stages' models (``load``), then turns the plans of a run into
finished plans and hands each to the run's one writer, in plan order (``run``). The local
engine (``acp.generate.local``) runs the stages in this process; the Ray engine
(``acp.generate.ray``) in Ray workers. ``acp.generate.run`` drives whichever it is given."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from acp.generate.components import StageSpec
from acp.generate.feed import PlanFeed
from acp.generate.records import Finished, StageTimes, Unfinished

if TYPE_CHECKING:
    from acp.score.judge import JudgeReport


class FinishedSink(Protocol):
    """Where an engine hands each plan it is done with, in plan order: the run's writer."""

    def write(self, finished: Finished | Unfinished) -> None: ...


@dataclass
class RunState:
    """What an engine works with: the plans to make (``feed``), the ids already finished
    (``done``, which it extends), the writer of the output (``sink``), and ``progress``, told
    how many plans were handed over."""

    feed: PlanFeed
    done: set[str]
    sink: FinishedSink
    progress: Callable[[int], None]


@contextmanager
def step(what: str, progress: bool) -> Iterator[None]:
    """A status line on stderr around a long step of an engine (``acp: starting Ray ... 11.2
    s``, ``failed`` when it raises), like a model's load line; nothing without ``progress``."""
    if progress:
        print(f"acp: {what} ...", end=" ", file=sys.stderr, flush=True)
    started, outcome = time.perf_counter(), "failed"
    try:
        yield
        outcome = f"{time.perf_counter() - started:.1f} s"
    finally:
        if progress:
            print(outcome, file=sys.stderr, flush=True)


class Engine(Protocol):
    """``load`` before anything is written (a bad model path must leave the output as it was),
    ``run`` once, ``close`` always. ``times`` adds up the seconds of each stage; ``report`` is
    what the engine adds to the summary (``None``: nothing); ``judge`` what the judge did
    (every worker's judge together; ``None`` without one)."""

    times: StageTimes

    def load(self, spec: StageSpec) -> None: ...

    def run(self, state: RunState) -> None: ...

    def close(self) -> None: ...

    @property
    def report(self) -> dict[str, Any] | None: ...

    @property
    def judge(self) -> JudgeReport | None: ...
