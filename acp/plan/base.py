"""Types shared by the planners and the code that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from acp.schema import LayoutRules, ScenePlan


@dataclass(frozen=True)
class SceneRequest:
    """One scene to plan: its id, the concepts it must contain (repeated for counts) and size.

    ``companions`` is set on a scene of a long-tail top-up (``acp.balance``): the concepts that
    accompany its subject (the first concept) because they share images with it in the real
    data. Such a scene holds exactly its concepts: a planner adds no other object."""

    id: str
    concepts: tuple[str, ...]
    seed: int
    width: int = 512
    height: int = 512
    companions: tuple[str, ...] | None = None


@dataclass
class PlanOutcome:
    """What a planner made of one request: a plan, or the reason it gave up and the raw reply."""

    request: SceneRequest
    plan: ScenePlan | None = None
    error: str | None = None
    raw: str | None = None
    attempts: int = 1  # requests whose reply was parsed (re-asks included)
    transport_retries: int = 0  # retried 429 / 5xx / timeouts / refused connections
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.plan is not None


@dataclass(frozen=True)
class PlanSettings:
    width: int = 512
    height: int = 512
    rules: LayoutRules = field(default_factory=LayoutRules)
    # Category names an object may have (every concept of the run); None allows any. Objects
    # of other categories would have no COCO category to be exported under.
    categories: tuple[str, ...] | None = None


