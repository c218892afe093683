"""The Ray engine (``acp generate --executor ray``): the stages in Ray workers, one writer.

Each worker is a long-lived Ray actor (``_Worker``) that loads the stages' models once (the
local engine's ``Components``) and turns a batch of plans into ``Finished`` plans with the same
stage functions: CLIS-L, the candidates, CLIS-I, the best image with its instances, that image
already encoded as the writer saves it. The driver (``RayEngine``) stays the only process that
writes ``OUT/``: it takes plans from the planner as they are made, keeps every worker two
batches deep, and hands the results to the run's writer in plan order. So ``OUT/`` means the
same whichever engine made it, and either can finish a run the other began.

Why plain actors and not Ray Data: plans arrive one by one from an LLM while the run goes,
results must reach disk in order as they finish, and a plan that kills its worker has to be
counted and, past a bound, recorded as failed. A driver loop over ``ray.wait`` does each of
these in a few lines; ``map_batches`` over a dataset built from a generator hides the order,
the per-plan retry count and the moment a result is ready behind its own scheduler.

Faults: a worker that dies (killed, node lost, out of memory) is restarted by Ray (its models
reload); the plans it held go to another worker. A batch of several plans is retried one plan
at a time, so a plan that kills workers is singled out; after ``MAX_ATTEMPTS`` deaths it is
recorded as failed with the reason, and the run goes on. An error that stops a local run
(disk, device memory) stops this one too, with the same line. A SIGKILL of the driver is the
local engine's case: rerun the command.

Ray is optional (``pip install "acp[ray]"``) and imported only here, inside functions.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from acp import defaults
from acp.errors import AcpError, InputError, MissingDependencyError, first_line
from acp.generate import stages
from acp.generate.components import Components, StageSpec
from acp.generate.engine import RunState
from acp.generate.feed import End
from acp.generate.records import Finished, InvalidPlan, Laid, Rendered, StageTimes
from acp.render.base import Renderer
from acp.schema import PlanResult, ScenePlan

MAX_ATTEMPTS = 3  # worker deaths a plan may cause before it is recorded as failed
DEPTH = 2  # batches queued per worker: one running, one waiting, so it never idles
INSTALL_HINT = 'the ray executor needs Ray: pip install "acp[ray]"'


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``auto`` (a running cluster if one is reachable, else a Ray started here),
    ``local`` (always a Ray started here) or a cluster address. ``workers`` and
    ``gpus_per_worker`` default to one worker per GPU Ray sees (one CPU worker without GPUs)."""

    address: str = "auto"
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker:g}")


def run_stages(plans: list[ScenePlan], components: Components, spec: StageSpec, times: StageTimes
               ) -> list[Finished]:
    """Every stage of ``plans``, in order, in one process (what a worker does with a batch)."""
    laid = [stages.lay(plan, components, times) for plan in plans]
    rendered_laid = iter(stages.render([x for x in laid if isinstance(x, Laid)], components, spec, times)
                         if any(isinstance(x, Laid) for x in laid) else [])
    rendered = [next(rendered_laid) if isinstance(x, Laid) else x for x in laid]
    finished = iter(stages.finish([x for x in rendered if isinstance(x, Rendered)], components, spec, times))
    return [next(finished) if isinstance(x, Rendered) else x for x in rendered]


class _Worker:
    """The body of a Ray actor: the loaded stages, and a batch of plans in, finished plans out."""

    def __init__(self, spec: StageSpec, device: str, make_renderer: Callable[[], Renderer] | None,
                 compile: bool, name: str):
        self.name, self.spec = name, spec
        # A load error is kept and raised by ``ready``: raised here, Ray would report a dead
        # actor with the traceback as text, and the driver could not print the worker's line.
        self.error: Exception | None = None
        try:
            self.components = Components.load(spec, device, compile=compile, make_renderer=make_renderer)
        except Exception as error:
            self.error = error

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return self.name

    def process(self, plans: list[ScenePlan]) -> tuple[list[Finished], dict[str, float]]:
        """Each plan finished as the local engine finishes it, and this call's seconds per stage."""
        if self.error is not None:
            raise self.error
        times = StageTimes()
        return run_stages(plans, self.components, self.spec, times), times.seconds()


@dataclass
class _Unit:
    """A batch of plans, in plan order, and what has come back of it."""

    plans: list[ScenePlan | InvalidPlan]
    finished: list[Finished | None]
    attempts: list[int]
    last_error: list[str | None] = field(default_factory=list)

    def complete(self) -> bool:
        return all(f is not None for f in self.finished)


class RayEngine:
    """The engine of ``acp generate --executor ray`` (see the module docstring). ``device`` is
    resolved by each worker: the driver may be a node without the GPUs."""

    def __init__(self, options: RayOptions | None = None, device: str = "auto", *,
                 batch_plans: int = defaults.BATCH_PLANS,
                 make_renderer: Callable[[], Renderer] | None = None, compile: bool = False):
        from acp.render.folder import check_batch_plans

        self.ray = import_ray()  # before anything is loaded or written: the install hint first
        check_batch_plans(batch_plans)
        self.options, self.device = options or RayOptions(), device
        self.batch_plans, self.make_renderer, self.compile = batch_plans, make_renderer, compile
        self.times = StageTimes()
        self.workers: list[Any] = []
        self.names: list[str] = []
        self.started_ray = False
        self.per_worker: Counter[str] = Counter()
        self.restarts = 0
        self.retried = 0

    @property
    def report(self) -> dict[str, Any]:
        return {"name": "ray", "workers": len(self.names),
                "plans_per_worker": dict(sorted(self.per_worker.items())),
                "worker_restarts": self.restarts, "retried_plans": self.retried}

    # -- start and stop -----------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                                 "configure_logging": True, "log_to_driver": False}
        address = self.options.address
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
                return
            except ConnectionError:
                address = "local"
        if address == "local":
            ray.init(**quiet)
            self.started_ray = True
        else:
            try:
                ray.init(address=address, **quiet)
            except ConnectionError as error:
                raise InputError(
                    f"--ray-address {address}: no Ray cluster there ({first_line(error)})") from None

    def load(self, spec: StageSpec) -> None:
        """Connect, start the workers and wait until each has loaded its models: a bad model
        path fails here, with the worker's one-line error, before ``OUT/`` is touched."""
        ray = self.ray
        self._connect()
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_worker = self.options.gpus_per_worker
        if per_worker is None:
            per_worker = 1.0 if gpus else 0.0
        count = self.options.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
        actor = ray.remote(_Worker)
        self.names = [f"worker-{n}" for n in range(count)]
        # Named "acp-<driver pid>-worker-<n>" so that an operator (or a test) can find them.
        self.workers = [
            actor.options(name=f"acp-{os.getpid()}-{name}", num_gpus=per_worker,
                          num_cpus=self.options.cpus_per_worker, max_restarts=-1, max_task_retries=0)
            .remote(spec, self.device, self.make_renderer, self.compile, name)
            for name in self.names]
        try:
            ray.get([w.ready.remote() for w in self.workers])
        except Exception as error:
            raise _unwrap(ray, error) from None

    def close(self) -> None:
        ray = self.ray
        for worker in self.workers:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(worker)
        self.workers = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    # -- the run ------------------------------------------------------------------------------

    def run(self, state: RunState) -> None:
        ray = self.ray
        units: dict[int, _Unit] = {}  # sequence number -> unit, until written
        tasks: dict[Any, tuple[int, list[int], int]] = {}  # ref -> (unit, slots, worker)
        load = [0] * len(self.workers)  # tasks queued per worker
        next_unit, next_write, exhausted = 0, 0, False

        def submit(seq: int, slots: list[int], avoid: int | None = None) -> None:
            choices = [k for k in range(len(self.workers)) if k != avoid] or [avoid or 0]
            k = min(choices, key=lambda n: load[n])
            unit = units[seq]
            ref = self.workers[k].process.remote([unit.plans[i] for i in slots])
            tasks[ref] = (seq, slots, k)
            load[k] += 1

        while True:
            # Take plans while a worker has room and the write-back buffer is bounded.
            while (not exhausted and sum(load) < DEPTH * len(self.workers)
                   and len(units) < 2 * DEPTH * len(self.workers)):
                batch, exhausted = self._take(state, block=not tasks and not units)
                if not batch:
                    break
                seq, next_unit = next_unit, next_unit + 1
                units[seq] = _Unit(batch, [None] * len(batch), [0] * len(batch), [None] * len(batch))
                plans = [i for i, p in enumerate(batch) if not isinstance(p, InvalidPlan)]
                for i, plan in enumerate(batch):
                    if isinstance(plan, InvalidPlan):
                        units[seq].finished[i] = plan.finished()
                if plans:
                    submit(seq, plans)
            # Write every unit that is complete, in order.
            while next_write in units and units[next_write].complete():
                unit = units.pop(next_write)
                for finished in unit.finished:
                    assert finished is not None
                    state.sink.write(finished)
                state.progress(len(unit.finished))
                next_write += 1
            if exhausted and not tasks and not units:
                return
            if not tasks:
                continue
            ready, _ = ray.wait(list(tasks), num_returns=1, timeout=0.5)
            for ref in ready:
                seq, slots, k = tasks.pop(ref)
                load[k] -= 1
                unit = units[seq]
                try:
                    finished, times = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    self._died(unit, seq, slots, k, error, submit)
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise _unwrap(ray, error) from None
                for slot, done in zip(slots, finished, strict=True):
                    unit.finished[slot] = done
                self.per_worker[self.names[k]] += len(finished)
                self.times.add(times)

    def _take(self, state: RunState, block: bool) -> tuple[list[ScenePlan | InvalidPlan], bool]:
        """Up to ``batch_plans`` new plans (fewer when the planner has nothing more ready),
        and whether the planner is done."""
        batch: list[ScenePlan | InvalidPlan] = []
        while len(batch) < self.batch_plans:
            item = state.feed.take(timeout=0.5 if block and not batch else 0.0)
            if item is None:  # nothing ready
                if block and not batch:
                    continue
                return batch, False
            if isinstance(item, End):
                return batch, True
            if item.id not in state.done:
                state.done.add(item.id)
                batch.append(item)
        return batch, False

    def _died(self, unit: _Unit, seq: int, slots: list[int], worker: int, error: Exception,
              submit: Callable[..., None]) -> None:
        """A worker died holding ``slots`` of ``unit``: retry them elsewhere, one by one, or
        record a plan that has now killed ``MAX_ATTEMPTS`` workers as failed."""
        self.restarts += 1
        reason = f"{type(error).__name__}: {first_line(error, limit=300)}"
        for slot in slots:
            unit.attempts[slot] += 1
            unit.last_error[slot] = reason
            if unit.attempts[slot] >= MAX_ATTEMPTS:
                dropped = PlanResult(plan_id=unit.plans[slot].id, status="dropped")
                unit.finished[slot] = Finished(stages.failed(
                    dropped, _WorkerDied(f"its worker died {MAX_ATTEMPTS} times (last: {reason})")))
            else:
                self.retried += 1
                submit(seq, [slot], avoid=worker)


class _WorkerDied(AcpError):
    pass


def _unwrap(ray: Any, error: Exception) -> Exception:
    """The worker's own exception (an ``InputError`` for a bad model path, an ``OSError`` for a
    full disk), so that the run ends with the line a local run would print."""
    found: Any = error
    for _ in range(5):  # ActorDiedError -> RayTaskError -> the worker's exception
        if not isinstance(found, ray.exceptions.RayError):
            return found if isinstance(found, Exception) else error
        found = getattr(found, "cause", None)
        if found is None:
            break
    if isinstance(error, ray.exceptions.RayActorError):
        return AcpError(f"a Ray worker died: {first_line(error, limit=300)}")
    return error
