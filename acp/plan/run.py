"""Running a planner over many scenes: resumable output, failure log, summary.

``plans.jsonl`` gets one line per planned scene, appended whole as each plan arrives (see
``acp.jsonl``). A rerun with the same output reads the ids already there and skips them; a
scene id that is already planned from *other* concepts means the output belongs to another
input, and the run is refused rather than mixing the two. Scenes that fail are logged to
``<output>.failures.jsonl`` with the reason and the raw LLM reply, at most ``MAX_RAW_KEPT`` and
``MAX_REASON_KEPT`` characters of each (a record stays under about 6 kB, so the log grows at
most by that per failed scene whatever the replies hold); that log describes the latest run
only, since a rerun plans every failed scene again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from acp.errors import AcpError, InputError, OutputMismatchError, first_line
from acp.jsonl import JsonlWriter, iter_lines, read_records
from acp.lock import OutputLock
from acp.paths import file_problem
from acp.plan.base import PlanOutcome, SceneRequest, derive_seed
from acp.schema import ScenePlan

GIVE_UP_AFTER = 10
# Characters of a failed scene's last reply and reason kept in the failures file: a whole plan
# reply is 1-5 kB, and what follows a runaway reply's start tells nothing more.
MAX_RAW_KEPT = 4_000
MAX_REASON_KEPT = 1_000


class PlannerGaveUp(AcpError):
    """The first scenes of a run all failed: a configuration problem, not bad luck."""


class Planner(Protocol):
    def plan_many(self, requests: Iterable[SceneRequest]) -> Iterator[PlanOutcome]: ...


class NothingPlanned(AcpError):
    """Every scene this run tried failed: nothing was made, so the run must not look fine."""


@dataclass
class PlanSummary:
    planned: int = 0
    repaired: int = 0
    retried: int = 0  # scenes that needed a re-ask or a transport retry
    failed: int = 0
    skipped: int = 0  # already in the output from an earlier run
    last_error: str | None = None  # the reason of the last failed scene

    def line(self) -> str:
        return (f"planned {self.planned}, repaired {self.repaired}, retried {self.retried}, "
                f"failed {self.failed}, already done {self.skipped}")


def kept(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]} … [{len(text) - limit:,} more characters not kept]"


def failures_path(output: Path) -> Path:
    return output.with_name(output.name + ".failures.jsonl")


def scene_id(index: int) -> str:
    return f"{index:06d}"


def make_requests(
    concept_sets: Iterable[tuple[str, ...]], seed: int, width: int, height: int,
    companions: Sequence[tuple[str, ...]] = (),
) -> Iterator[SceneRequest]:
    """One request per concept set; ``companions`` (``ConceptInput.companions``), when given,
    holds each set's companions."""
    for index, concepts in enumerate(concept_sets):
        sid = scene_id(index)
        yield SceneRequest(sid, tuple(concepts), derive_seed(seed, sid), width, height,
                           tuple(companions[index]) if companions else None)


def _identity(concepts: object, seed: object, width: object, height: object) -> str:
    """What a scene was planned from, in words: compared to refuse mixing two runs."""
    return f"concepts {list(concepts) if isinstance(concepts, list | tuple) else concepts}, " \
           f"seed {seed}, size {width}x{height}"


def check_plans_file(output: Path) -> None:
    """Refuse to append to a file that is not a plans file (a typo in ``-o`` must not grow a
    dataset's annotations, say): its first complete line must be a plan record."""
    if not output.exists():
        return
    if problem := file_problem(output):
        raise InputError(f"{output}: {problem}; expected a plans file")
    for number, text in iter_lines(output):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str) and "objects" in record):
            raise InputError(f"{output}: exists and is not a plans file (line {number} is not a "
                             "plan record); choose another output file")
        return


def finished_scenes(output: Path) -> dict[str, str]:
    """Ids already planned in ``output`` and what each was planned from (unreadable lines are
    ignored: they are planned again)."""
    done: dict[str, str] = {}
    if output.exists():
        for _number, record, _text in read_records(output):
            if record and isinstance(record.get("id"), str):
                done[record["id"]] = _identity(record.get("concepts") or [], record.get("seed"),
                                               record.get("width"), record.get("height"))
    return done


def run_planner(
    planner: Planner,
    requests: Iterable[SceneRequest],
    output: Path,
    *,
    total: int | None = None,
    progress: bool = True,
    on_plan: Callable[[ScenePlan], None] | None = None,
) -> PlanSummary:
    """Plan every request not yet in ``output``; ``on_plan`` sees each new plan once written.

    ``output`` is locked for the whole run (a second run into it is refused) and must be a
    plans file if it exists. Raises ``NothingPlanned`` when every scene tried failed.
    """
    output = Path(output)
    check_plans_file(output)
    existed = output.exists()
    with OutputLock(output):
        summary = _run(planner, requests, output, total=total, progress=progress, on_plan=on_plan)
        if not existed and summary.planned == 0:
            output.unlink(missing_ok=True)  # the lock's own empty file: leave nothing behind
    if summary.planned == 0 and summary.failed:
        raise NothingPlanned(
            f"no scene could be planned: {summary.failed} failed, see {failures_path(output)} "
            f"(last reason: {first_line(summary.last_error, default='unknown')})"
        )
    return summary


def _run(
    planner: Planner,
    requests: Iterable[SceneRequest],
    output: Path,
    *,
    total: int | None,
    progress: bool,
    on_plan: Callable[[ScenePlan], None] | None,
) -> PlanSummary:
    from tqdm import tqdm

    done = finished_scenes(output)
    summary = PlanSummary()

    def pending() -> Iterator[SceneRequest]:
        for request in requests:
            previous = done.get(request.id)
            wanted = _identity(request.concepts, request.seed, request.width, request.height)
            if previous is None:
                yield request
            elif previous != wanted:
                raise OutputMismatchError(
                    f"{output}: scene {request.id} was planned from {previous}, not {wanted}; "
                    "write to a new output file (or delete this one)"
                )
            else:
                summary.skipped += 1
                bar.update(1)

    failures = failures_path(output)
    failures.unlink(missing_ok=True)
    bar = tqdm(total=total, desc="planning", unit="scene", disable=not progress, dynamic_ncols=True)
    with JsonlWriter(output) as plans, bar:
        failure_log: JsonlWriter | None = None
        try:
            for outcome in planner.plan_many(pending()):
                if outcome.attempts > 1 or outcome.transport_retries:
                    summary.retried += 1
                if outcome.plan is not None:
                    plans.write(outcome.plan)
                    summary.planned += 1
                    if on_plan is not None:
                        on_plan(outcome.plan)
                    summary.repaired += bool(outcome.plan.repairs)
                else:
                    failure_log = failure_log or JsonlWriter(failures)
                    failure_log.write({
                        "id": outcome.request.id, "concepts": list(outcome.request.concepts),
                        "reason": kept(outcome.error, MAX_REASON_KEPT),
                        "raw": kept(outcome.raw, MAX_RAW_KEPT),
                        "attempts": outcome.attempts,
                    })
                    summary.failed += 1
                    summary.last_error = outcome.error
                    if summary.planned == 0 and summary.failed >= GIVE_UP_AFTER:
                        # Nothing has worked yet: an unreachable endpoint or a planner that
                        # cannot satisfy the rules. Say so now rather than after every scene.
                        raise PlannerGaveUp(
                            f"the first {GIVE_UP_AFTER} scenes all failed; stopping "
                            f"(last reason: {first_line(outcome.error, default='unknown')})"
                        )
                bar.update(1)
                bar.set_postfix(failed=summary.failed, refresh=False)
        finally:
            if failure_log is not None:
                failure_log.close()
    return summary
