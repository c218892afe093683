"""Plans for the engines, made ahead in a background thread so an LLM's latency overlaps
rendering: first the plans already in ``plans.jsonl`` but not finished, then new ones as the
planner makes them (``acp.plan.run.run_planner``, which appends each to ``plans.jsonl``)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from acp.generate.records import InvalidPlan
from acp.plan.base import SceneRequest
from acp.plan.run import Planner, PlanSummary, run_planner
from acp.schema import ScenePlan, read_plan_lines

QUEUE_SIZE = 16


class _Stopped(Exception):
    pass


class End:
    """What the feed gives after the last plan."""


END = End()


class PlanFeed:
    """The plans of a run, in scene order, through a bounded queue (see the module docstring).
    A line of ``plans.jsonl`` that no longer validates comes as an ``InvalidPlan``."""

    def __init__(self, planner: Planner, requests: Iterator[SceneRequest], plans_path: Path,
                 done: set[str], total: int | None):
        self.queue: queue.Queue[ScenePlan | InvalidPlan | End] = queue.Queue(maxsize=QUEUE_SIZE)
        self.summary = PlanSummary()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(planner, requests, plans_path, done, total), daemon=True
        )
        self._thread.start()

    def _put(self, item: ScenePlan | InvalidPlan | End) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _run(self, planner: Planner, requests: Iterator[SceneRequest], plans_path: Path,
             done: set[str], total: int | None) -> None:
        try:
            if plans_path.exists():
                for number, plan_id, plan, reason in read_plan_lines(plans_path, skip=done):
                    if plan is not None:
                        self._put(plan)
                    elif plan_id is not None:  # without an id the planner plans that scene again
                        self._put(InvalidPlan(plan_id, f"{plans_path}:{number}: {reason}"))
            self.summary = run_planner(planner, requests, plans_path, total=total, progress=False,
                                       on_plan=self._put)
        except _Stopped:
            return
        except BaseException as error:  # handed to the consumer, which re-raises it
            self.error = error
        try:
            self._put(END)
        except _Stopped:
            return

    def __iter__(self) -> Iterator[ScenePlan | InvalidPlan]:
        while True:
            item = self.queue.get()
            if isinstance(item, End):
                if self.error is not None:
                    raise self.error
                return
            yield item

    def take(self, timeout: float) -> ScenePlan | InvalidPlan | End | None:
        """The next plan, ``END`` once the planner is done (raising its error if it failed), or
        ``None`` when nothing came within ``timeout`` seconds (0: only what is ready)."""
        try:
            item = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, End) and self.error is not None:
            raise self.error
        return item

    def ready(self) -> bool:
        """Whether a plan (or the end) is waiting, so that iterating will not block."""
        return not self.queue.empty()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

