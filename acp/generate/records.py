r"""The records a plan passes through in ``acp generate``, one per stage, each frozen:

```
ScenePlan --lay--> Laid --render--> Rendered --verify--> Rendered --finish--> Finished --RunWriter--> OUT/
              \--------------\---------------------------------------------/   (a plan that ends early)
```

A plan can end at any stage (a layout under the CLIS-L threshold, a renderer error of its
own, every candidate flagged): it is then ``Finished`` there, with its result saying why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from acp.render.base import RenderedCandidate
from acp.runfolder import KeptCandidate, KeptImage
from acp.schema import CandidateScore, PlanResult, ScenePlan

if TYPE_CHECKING:
    from acp.score.layout import LayoutScore
    from acp.score.verify import CandidateCheck


@dataclass(frozen=True)
class Laid:
    """A plan whose layout passed CLIS-L (``layout``: its score, ``None`` without a layout
    scorer), with the result it has so far."""

    plan: ScenePlan
    layout: LayoutScore | None
    result: PlanResult


@dataclass(frozen=True)
class Rendered:
    """A laid plan and its candidates, the safety checker's flagged ones already taken out;
    ``checks``, once verified (``stages.verify``), the detector's verdict on each candidate."""

    laid: Laid
    candidates: tuple[RenderedCandidate, ...]
    flagged: int = 0
    checks: tuple[CandidateCheck, ...] | None = None


@dataclass(frozen=True)
class Finished:
    """What a plan leaves in the run folder: its ledger line, the scores of its candidates,
    its kept image (if any) and, with ``--keep-candidates``, every candidate."""

    result: PlanResult
    scores: tuple[CandidateScore, ...] = ()
    image: KeptImage | None = None
    candidates: tuple[KeptCandidate, ...] = ()


@dataclass(frozen=True)
class Unfinished:
    """A plan an engine gave up on for this run (its worker kept dying): nothing of it is
    written, so the next run makes it again."""

    plan_id: str
    reason: str


@dataclass(frozen=True)
class InvalidPlan:
    """A line of ``plans.jsonl`` that no longer validates (edited by hand, or rules that changed
    between versions): its scene is recorded as failed, with the reason, instead of vanishing."""

    id: str
    reason: str

    def finished(self) -> Finished:
        return Finished(PlanResult(plan_id=self.id, status="failed", reason_kind="invalid plan",
                                   reason=f"invalid plan: {self.reason}"[:500]))


@dataclass
class StageTimes:
    """Seconds per stage. Locally ``plan_wait``, ``layout``, ``render`` and ``finish_wait`` are
    spent on the device thread; ``score``, ``verify``, ``segment`` and ``export`` on the finishing thread,
    alongside it, so the shares of a run can add up to more than 1."""

    load: float = 0.0  # start-up until the first plan: imports, inputs, loading the models
    plan_wait: float = 0.0  # the renderer waiting for the planner
    layout: float = 0.0
    render: float = 0.0
    score: float = 0.0
    verify: float = 0.0  # the detector and its checks, on the finishing thread
    segment: float = 0.0
    export: float = 0.0  # encoding and writing
    finish_wait: float = 0.0  # the device thread waiting for room in the finishing queue

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - start)

    def add(self, other: dict[str, float]) -> None:
        """Add another engine's times (a Ray worker's), start-up excepted."""
        for key, value in other.items():
            if key != "load" and hasattr(self, key):
                setattr(self, key, getattr(self, key) + value)

    def seconds(self) -> dict[str, float]:
        return asdict(self)

    def shares(self, total: float) -> dict[str, float]:
        return {k: round(v / total, 4) if total > 0 else 0.0 for k, v in self.seconds().items()}
