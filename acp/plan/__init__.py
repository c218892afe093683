"""Scene planners: concepts in, validated ``ScenePlan`` records out.

Both planners expose ``plan_many(requests) -> Iterator[PlanOutcome]``; the LLM planner yields
outcomes in completion order, the heuristic one in request order.
"""

from acp.plan.base import PlanOutcome, SceneRequest

__all__ = ["PlanOutcome", "SceneRequest"]
