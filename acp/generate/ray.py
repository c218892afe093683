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
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.errors import AcpError, InputError, MissingDependencyError, first_line
from acp.generate import stages
from acp.generate.components import Components, StageSpec
from acp.generate.engine import RunState, step
from acp.generate.feed import End
from acp.generate.records import Finished, InvalidPlan, Laid, Rendered, StageTimes, Unfinished
from acp.render.base import Renderer
from acp.schema import ScenePlan

if TYPE_CHECKING:
    from acp.score.judge import JudgeReport

MAX_ATTEMPTS = 3  # worker deaths a plan may cause before it is left for the next run
DEPTH = 2  # batches queued per worker: one running, one waiting, so it never idles
RESTART_TIMEOUT = 600.0  # seconds a dead worker may take to restart and reload its models
PROBE_INTERVAL = 0.5  # seconds between ready() calls to a restarting worker
PROBE_TIMEOUT = 5.0  # seconds to wait for a TCP answer at --ray-address
SETTLE_TIMEOUT = 30.0  # seconds for the calls a dead worker held to come back failed
CONNECT_TIMEOUT = 120.0  # seconds ray.init may take (starting a local Ray takes ~10 s)
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
        if self.address not in ("auto", "local") and _host_port(self.address) is None:
            raise InputError(f"--ray-address: expected auto, local, HOST:PORT or ray://HOST:PORT, "
                             f"got {self.address!r}")
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
                 compile: bool, dtype: str, name: str, threads: int):
        self.name, self.spec = name, spec
        # A load error is kept and raised by ``ready``: raised here, Ray would report a dead
        # actor with the traceback as text, and the driver could not print the worker's line.
        self.error: Exception | None = None
        try:
            from acp.device import resolve_device

            device = resolve_device(device)
            if device == "cpu":
                # Ray gives an actor one thread per CPU it holds; CPU kernels round differently
                # with the thread count, so a worker computes with the driver's count, as the
                # local engine would: the same command makes the same files on either engine.
                import torch

                torch.set_num_threads(threads)
            self.components = Components.load(spec, device, compile=compile, dtype=dtype,
                                              make_renderer=make_renderer)
        except Exception as error:
            self.error = error

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return self.name

    def process(self, plans: list[ScenePlan]) -> tuple[list[Finished], dict[str, float], JudgeReport | None]:
        """Each plan finished as the local engine finishes it, this call's seconds per stage,
        and what this worker's judge did so far (``None`` without one)."""
        if self.error is not None:
            raise self.error
        times = StageTimes()
        finished = run_stages(plans, self.components, self.spec, times)
        judge = self.components.scorer.judge
        return finished, times.seconds(), judge.report() if judge is not None else None


@dataclass
class _Unit:
    """A batch of plans, in plan order, and what has come back of it."""

    plans: list[ScenePlan | InvalidPlan]
    finished: list[Finished | Unfinished | None]
    attempts: list[int]
    last_error: list[str | None] = field(default_factory=list)

    def complete(self) -> bool:
        return all(f is not None for f in self.finished)


class RayEngine:
    """The engine of ``acp generate --executor ray`` (see the module docstring). ``device`` is
    resolved by each worker: the driver may be a node without the GPUs."""

    def __init__(self, options: RayOptions | None = None, device: str = "auto", *,
                 batch_plans: int = defaults.BATCH_PLANS,
                 make_renderer: Callable[[], Renderer] | None = None, compile: bool = False,
                 dtype: str = "auto", progress: bool = False):
        from acp.device import check_dtype
        from acp.render.folder import check_batch_plans

        self.ray = import_ray()  # before anything is loaded or written: the install hint first
        check_batch_plans(batch_plans)
        check_dtype(dtype)
        self.dtype, self.progress = dtype, progress
        self.options, self.device = options or RayOptions(), device
        self.batch_plans, self.make_renderer, self.compile = batch_plans, make_renderer, compile
        self.times = StageTimes()
        self.workers: list[Any] = []
        self.names: list[str] = []
        self.started_ray = False
        self.per_worker: Counter[str] = Counter()
        self.restarts = 0
        self.retried = 0
        self.left = 0  # plans given up on for this run
        self.threads = 0
        self.judges: dict[tuple[int, int], JudgeReport] = {}  # (worker, incarnation) -> its judge so far

    @property
    def report(self) -> dict[str, Any]:
        return {"name": "ray", "workers": len(self.names),
                "plans_per_worker": dict(sorted(self.per_worker.items())),
                "worker_restarts": self.restarts, "retried_plans": self.retried,
                "unfinished_plans": self.left, "dtype": self.dtype, "torch_threads_on_cpu": self.threads}

    @property
    def judge(self) -> JudgeReport | None:
        from acp.score.judge import JudgeReport

        return JudgeReport.merge(self.judges.values())

    # -- start and stop -----------------------------------------------------------------------

    def _connect(self) -> None:
        """Join or start Ray, within ``CONNECT_TIMEOUT`` seconds: an address where nothing
        answers is one line, not a wait without end (Ray itself retries a dead address for
        minutes)."""
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.options.address
        if address == "auto" and _host_port(os.environ.get("RAY_ADDRESS", "")):
            address = os.environ["RAY_ADDRESS"]  # named: checked as if given on the command line
        if address == "auto":
            try:
                _init(ray, "auto", "--ray-address auto (RAY_ADDRESS or the cluster started here)")
                return
            except ConnectionError:
                address = "local"
        if address == "local":
            _init(ray, None, "--ray-address local")
            self.started_ray = True
            return
        host, port = _host_port(address) or ("", 0)
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
        except OSError as error:
            raise InputError(f"--ray-address {address}: no Ray cluster there "
                             f"({error.strerror or type(error).__name__})") from None
        try:
            _init(ray, address, f"--ray-address {address}")
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise InputError(f"--ray-address {address}: {first_line(error)}") from None

    def load(self, spec: StageSpec) -> None:
        """Connect, start the workers and wait until each has loaded its models: a bad model
        path fails here, with the worker's one-line error, before ``OUT/`` is touched."""
        import torch

        ray = self.ray
        self.threads = torch.get_num_threads()  # what a local run here would compute with
        with step(f"joining or starting Ray (--ray-address {self.options.address})", self.progress):
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
            .remote(spec, self.device, self.make_renderer, self.compile, self.dtype, name, self.threads)
            for name in self.names]
        try:
            with step(f"starting {count} Ray workers (each loads its models)", self.progress):
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
        tasks: dict[Any, _Task] = {}
        pool = _Pool(ray, self.workers)
        next_unit, next_write, exhausted = 0, 0, False

        def submit(seq: int, slots: list[int], avoid: int | None = None) -> None:
            k = pool.choose(avoid)
            if k is None:  # every worker is restarting: wait for one
                pool.waiting.append((seq, slots, avoid))
                return
            ref = self.workers[k].process.remote([units[seq].plans[i] for i in slots])
            tasks[ref] = _Task(seq, slots, k, pool.incarnation[k])
            pool.sent(k, ref)

        while True:
            # Take plans while a worker has room and the write-back buffer is bounded.
            while (not exhausted and pool.has_room() and len(units) < 2 * DEPTH * len(self.workers)):
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
            pool.probe()
            if not tasks and not pool.restarting:
                if pool.probe_at:
                    time.sleep(PROBE_INTERVAL / 5)
                continue
            ready, _ = ray.wait([*tasks, *pool.restarting], num_returns=1, timeout=PROBE_INTERVAL)
            for ref in ready:
                if ref in pool.restarting:
                    for retry in pool.restarted(ref):
                        submit(*retry)
                    continue
                task = tasks.pop(ref)
                unit = units[task.unit]
                try:
                    finished, times, judge = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    self._died(unit, task, ref, pool, error, submit)
                    pool.done(task.worker, ref)
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise _unwrap(ray, error) from None
                pool.done(task.worker, ref)
                for slot, done in zip(task.slots, finished, strict=True):
                    unit.finished[slot] = done
                self.per_worker[self.names[task.worker]] += len(finished)
                self.times.add(times)
                if judge is not None:  # a restarted worker's judge starts again: kept apart
                    self.judges[task.worker, task.incarnation] = judge

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

    def _died(self, unit: _Unit, task: _Task, ref: Any, pool: _Pool, error: Exception,
              submit: Callable[..., None]) -> None:
        """A worker died holding ``task``. Its death is counted once, however many of its tasks
        fail with it, and only the task it was running (the oldest it held: an actor runs its
        calls in order) is charged to its plans; every plan is resubmitted alone, to another
        worker, once that one is up. A plan charged ``MAX_ATTEMPTS`` times is left unfinished
        (``Unfinished``), for the next run to retry."""
        if pool.died(task.worker, task.incarnation):
            self.restarts += 1
        charged = pool.was_running(task.worker, task.incarnation, ref)
        reason = f"{type(error).__name__}: {first_line(error, limit=300)}"
        for slot in task.slots:
            unit.attempts[slot] += charged
            unit.last_error[slot] = reason
            if unit.attempts[slot] >= MAX_ATTEMPTS:
                unit.finished[slot] = Unfinished(
                    unit.plans[slot].id, f"its worker died {MAX_ATTEMPTS} times (last: {reason})")
                self.left += 1
            else:
                self.retried += 1
                submit(task.unit, [slot], avoid=task.worker)


@dataclass(frozen=True)
class _Task:
    """A ``process`` call in flight: which slots of which unit, on which worker incarnation."""

    unit: int
    slots: list[int]
    worker: int
    incarnation: int


class _Pool:
    """Which workers can take work. A worker whose call failed with its death is restarting
    (Ray restarts it and reloads its models) until a ``ready`` call on it returns: nothing is
    sent to it meanwhile, so no retry lands on a process that is not there. A ``ready`` call
    that fails (sent before Ray knew the process was gone) is sent again a moment later; a
    worker not back within ``RESTART_TIMEOUT`` seconds stops the run."""

    def __init__(self, ray: Any, workers: list[Any]):
        self.ray, self.workers = ray, workers
        self.load = [0] * len(workers)  # calls queued per worker
        self.incarnation = [0] * len(workers)
        self.queued: list[list[tuple[Any, int]]] = [[] for _ in workers]  # (ref, incarnation), in order
        self.first_of: dict[tuple[int, int], Any] = {}  # (worker, incarnation) -> the call it ran
        self.restarting: dict[Any, int] = {}  # ready() ref -> worker
        self.down_since: dict[int, float] = {}  # worker -> when its death was seen
        self.probe_at: dict[int, float] = {}  # worker -> when to send the next ready()
        self.waiting: list[tuple[int, list[int], int | None]] = []  # retries with no worker up

    def up(self) -> list[int]:
        return [k for k in range(len(self.workers)) if k not in self.down_since]

    def has_room(self) -> bool:
        up = self.up()
        return bool(up) and sum(self.load[k] for k in up) < DEPTH * len(up)

    def choose(self, avoid: int | None) -> int | None:
        up = self.up()
        choices = [k for k in up if k != avoid] or up
        return min(choices, key=lambda k: self.load[k]) if choices else None

    def sent(self, worker: int, ref: Any) -> None:
        self.load[worker] += 1
        self.queued[worker].append((ref, self.incarnation[worker]))

    def done(self, worker: int, ref: Any) -> None:
        self.load[worker] -= 1
        self.queued[worker] = [(r, i) for r, i in self.queued[worker] if r != ref]

    def died(self, worker: int, incarnation: int) -> bool:
        """Whether this failure is the first news of that incarnation's death (then the worker
        is restarting until it answers). The call it was running is the first it held that did
        not succeed: every call it held is settled first (a result that came back just before
        the death may not have reached the driver yet)."""
        if incarnation != self.incarnation[worker]:
            return False
        held = [r for r, i in self.queued[worker] if i == incarnation]
        self.ray.wait(held, num_returns=len(held), timeout=SETTLE_TIMEOUT)
        self.first_of[(worker, incarnation)] = next((r for r in held if not self._succeeded(r)), None)
        self.incarnation[worker] += 1
        self.down_since[worker] = time.monotonic()
        self.probe_at[worker] = 0.0
        return True

    def _succeeded(self, ref: Any) -> bool:
        ray = self.ray
        if not ray.wait([ref], timeout=0)[0]:
            return False
        try:
            ray.get(ref)
        except Exception:
            return False
        return True

    def was_running(self, worker: int, incarnation: int, ref: Any) -> bool:
        first = self.first_of.get((worker, incarnation))
        return first is None or first == ref

    def probe(self) -> None:
        """Send the ``ready`` calls that are due."""
        now = time.monotonic()
        for worker, due in list(self.probe_at.items()):
            if due <= now:
                del self.probe_at[worker]
                self.restarting[self.workers[worker].ready.remote()] = worker

    def restarted(self, probe: Any) -> list[tuple[int, list[int], int | None]]:
        """A ``ready`` call returned: the worker is back (the retries waiting go out), or not
        yet (asked again shortly). A worker that cannot load its models stops the run with its
        own error."""
        ray = self.ray
        worker = self.restarting.pop(probe)
        try:
            ray.get(probe)
        except ray.exceptions.RayActorError:
            if time.monotonic() - self.down_since[worker] > RESTART_TIMEOUT:
                raise AcpError(f"a Ray worker did not come back within {RESTART_TIMEOUT:.0f} s of "
                               "its death; see the Ray logs, then rerun") from None
            self.probe_at[worker] = time.monotonic() + PROBE_INTERVAL
            return []
        except ray.exceptions.RayTaskError as error:
            raise _unwrap(ray, error) from None
        del self.down_since[worker]
        waiting, self.waiting = self.waiting, []
        return waiting


class _WorkerDied(AcpError):
    pass


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; ``None`` for anything else."""
    match = re.fullmatch(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", address)
    if match is None or not 0 < int(match[2]) < 65536:
        return None
    return match[1].strip("[]"), int(match[2])


def _init(ray: Any, address: str | None, what: str) -> None:
    """``ray.init`` quietly, on another thread so that a Ray that never answers is given up
    after ``CONNECT_TIMEOUT`` seconds (the thread is left behind, the process ends)."""
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                             "configure_logging": True, "log_to_driver": False}
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(address=address, **quiet)
            outcome.append(None)
        except BaseException as error:  # handed to the caller
            outcome.append(error)

    thread = threading.Thread(target=connect, name="acp-ray-init", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT)
    if not outcome:
        raise InputError(f"{what}: no answer from Ray within {CONNECT_TIMEOUT:.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


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
