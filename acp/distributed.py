"""``acp generate --executor ray``: the generate engine's stages in Ray workers, one writer.

Each worker is a long-lived Ray actor (``_Worker``) that loads the stages once (GLIGEN, CLIP,
SAM: ``acp.pipeline._Stages``, the local engine's very runners) and turns a batch of plans into
finished ``_Work``: CLIS-L, the candidates, CLIS-I, the best image with its instances, that
image already encoded as the writer saves it. The driver (``RayEngine``) stays the only
process that writes ``OUT/``: it takes plans from the planner as they are made, keeps every
worker two batches deep, and writes the results in plan order through the same recorder as
the local engine, the ledger line of each plan last. So ``OUT/`` means the same whichever
executor made it, and either can finish a run the other began.

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
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import AcpError, InputError, MissingDependencyError, first_line

if TYPE_CHECKING:
    from acp.pipeline import GenerateConfig, RunState, StageTimes, _Work
    from acp.schema import ScenePlan

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


class _Worker:
    """The body of a Ray actor: the loaded stages, and a batch of plans in, finished work out."""

    def __init__(self, config: GenerateConfig, device: str, categories: Any, renderer_factory: Any,
                 judge: Any, name: str):
        from acp.pipeline import _Stages

        self.name = name
        # A load error is kept and raised by ``ready``: raised here, Ray would report a dead
        # actor with the traceback as text, and the driver could not print the worker's line.
        self.error: Exception | None = None
        try:
            renderer = renderer_factory() if renderer_factory is not None else None
            self.stages = _Stages(config, device, renderer, judge, categories)
        except Exception as error:
            self.error = error

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return self.name

    def process(self, plans: list[ScenePlan]) -> tuple[list[_Work], dict[str, float]]:
        """Each plan finished as the local engine finishes it, its image encoded, its
        candidates as PNG bytes (with ``--keep-candidates``; otherwise dropped here, so that only
        what the driver writes travels back); and this call's seconds per stage."""
        from dataclasses import asdict

        from acp.export import encode_image
        from acp.pipeline import StageTimes, png_bytes

        if self.error is not None:
            raise self.error
        stages = self.stages
        stages.times = StageTimes()
        works = [stages.layout(plan) for plan in plans]
        going = [w for w in works if w.plan is not None]
        if going:
            stages.render(going)
            stages.finish([w for w in going if w.plan is not None])
        start = time.perf_counter()
        for work in works:
            if work.image is not None:
                work.image = encode_image(work.image, stages.config.image_format)
            work.rendered = ([type(r)(r.candidate, png_bytes(r.image)) for r in work.rendered]
                             if stages.config.keep_candidates else [])
            work.layout = None
        stages.times.export += time.perf_counter() - start
        return works, asdict(stages.times)


@dataclass
class _Unit:
    """A batch of plans, in plan order, and what has come back of it."""

    plans: list[ScenePlan]
    works: list[_Work | None]
    attempts: list[int]
    last_error: list[str | None] = field(default_factory=list)

    def complete(self) -> bool:
        return all(w is not None for w in self.works)


class RayEngine:
    """The engine ``generate`` runs with ``executor="ray"`` (see the module docstring)."""

    def __init__(self, config: GenerateConfig, device: str, options: RayOptions, *,
                 renderer_factory: Any = None, judge: Any = None, categories: Any = None,
                 batch_plans: int = defaults.BATCH_PLANS):
        from acp.pipeline import StageTimes

        self.ray = import_ray()  # before anything is loaded or written: the install hint first
        self.config, self.device, self.options = config, device, options
        self.renderer_factory, self.judge, self.categories = renderer_factory, judge, categories
        self.batch_plans = batch_plans
        self.times: StageTimes = StageTimes()
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

    def load(self) -> None:
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
            .remote(self.config, self.device, self.categories, self.renderer_factory, self.judge, name)
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
        from acp.pipeline import InvalidPlan

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
                        units[seq].works[i] = state.invalid(plan)
                if plans:
                    submit(seq, plans)
            # Write every unit that is complete, in order.
            while next_write in units and units[next_write].complete():
                unit = units.pop(next_write)
                for work in unit.works:
                    assert work is not None
                    state.recorder.write(work)
                state.written(len(unit.works))
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
                    works, times = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    self._died(unit, seq, slots, k, error, submit)
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise _unwrap(ray, error) from None
                for slot, work in zip(slots, works, strict=True):
                    unit.works[slot] = work
                self.per_worker[self.names[k]] += len(works)
                for key, value in times.items():
                    if key != "load":
                        setattr(self.times, key, getattr(self.times, key) + value)

    def _take(self, state: RunState, block: bool) -> tuple[list[Any], bool]:
        """Up to ``batch_plans`` new plans (fewer when the planner has nothing more ready),
        and whether the planner is done."""
        batch: list[Any] = []
        while len(batch) < self.batch_plans:
            item: Any = state.feed.take(timeout=0.5 if block and not batch else 0.0)
            if item is None:  # nothing ready
                if block and not batch:
                    continue
                return batch, False
            if item is state.feed.END:
                return batch, True
            if item.id not in state.done:
                state.done.add(item.id)
                batch.append(item)
        return batch, False

    def _died(self, unit: _Unit, seq: int, slots: list[int], worker: int, error: Exception,
              submit: Any) -> None:
        """A worker died holding ``slots`` of ``unit``: retry them elsewhere, one by one, or
        record a plan that has now killed ``MAX_ATTEMPTS`` workers as failed."""
        from acp.pipeline import _fail

        self.restarts += 1
        reason = f"{type(error).__name__}: {first_line(error, limit=300)}"
        for slot in slots:
            unit.attempts[slot] += 1
            unit.last_error[slot] = reason
            if unit.attempts[slot] >= MAX_ATTEMPTS:
                work = _plan_failed(unit.plans[slot])
                _fail(work.result, _WorkerDied(f"its worker died {MAX_ATTEMPTS} times (last: {reason})"))
                unit.works[slot] = work
            else:
                self.retried += 1
                submit(seq, [slot], avoid=worker)


class _WorkerDied(AcpError):
    pass


def _plan_failed(plan: ScenePlan) -> _Work:
    from acp.pipeline import _Work
    from acp.schema import PlanResult

    return _Work(None, PlanResult(plan_id=plan.id, status="dropped"))


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
