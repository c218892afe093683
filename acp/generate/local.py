"""The in-process engine: the device thread (the caller) lays out and renders; a finishing
thread, one batch behind, scores, chooses, segments, encodes and hands each plan to the writer
in order, through a bounded queue, so CLIP-I, masks, JPEG encoding and disk writes overlap the
next batch's rendering and memory stays flat.

On the CPU the finishing thread would compete with rendering for the same cores (measured: a
tiny-model run 2.5 times slower), so there each batch is finished in line."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from acp import defaults
from acp.generate import stages
from acp.generate.components import Components, StageSpec
from acp.generate.engine import RunState
from acp.generate.records import Finished, InvalidPlan, Laid, Rendered, StageTimes
from acp.render.base import Renderer

if TYPE_CHECKING:
    from acp.score.judge import JudgeReport

# Rendered batches waiting for the finishing thread: two keep the device busy while one is
# finished; each holds its K candidate images per plan.
FINISH_QUEUE = 2


class LocalEngine:
    """Runs the stages in this process on ``device`` (``auto``: the best there is),
    ``batch_plans`` plans per denoising loop. ``finish_queue`` is how many rendered batches may
    wait for the finishing thread (0: finish in line; default ``FINISH_QUEUE``, and 0 on the CPU
    unless ``make_renderer`` gives a stand-in). ``make_renderer`` replaces GLIGEN (benchmarks and
    tests); ``compile`` compiles the UNet (CUDA only); ``dtype`` is every model's precision
    (``acp.device.resolve_dtype``); ``progress`` prints a status line per model loaded."""

    def __init__(self, device: str = "auto", *, batch_plans: int = defaults.BATCH_PLANS,
                 finish_queue: int | None = None, make_renderer: Callable[[], Renderer] | None = None,
                 compile: bool = False, dtype: str = "auto", progress: bool = False):
        from acp.device import check_dtype
        from acp.render.folder import check_batch_plans

        check_batch_plans(batch_plans)
        check_dtype(dtype)
        self.dtype, self.progress = dtype, progress
        # Resolved (torch imported) when the run loads its models: a run with nothing left to
        # do, or refused for its settings, is decided before that.
        self.device = device
        self.batch_plans, self.make_renderer, self.compile = batch_plans, make_renderer, compile
        self.finish_queue = finish_queue
        self.times = StageTimes()
        self.components: Components | None = None
        self.spec: StageSpec | None = None

    @property
    def report(self) -> dict[str, Any] | None:
        import torch

        return {"name": "local", "device": self.device, "dtype": self.dtype,
                "torch_threads": torch.get_num_threads()}

    @property
    def judge(self) -> JudgeReport | None:
        judge = self.components.scorer.judge if self.components is not None else None
        return judge.report() if judge is not None else None

    def load(self, spec: StageSpec) -> None:
        from acp.device import resolve_device

        self.device = resolve_device(self.device)  # a typo fails before any model loads
        if self.finish_queue is None:
            self.finish_queue = 0 if self.device == "cpu" and self.make_renderer is None else FINISH_QUEUE
        self.spec = spec
        self.components = Components.load(spec, self.device, compile=self.compile, dtype=self.dtype,
                                          make_renderer=self.make_renderer, progress=self.progress)

    def run(self, state: RunState) -> None:
        components, spec, times = self.components, self.spec, self.times
        assert components is not None and spec is not None, "load() first"

        def finish(batch: list[Rendered | Finished]) -> None:
            done = iter(stages.finish([r for r in batch if isinstance(r, Rendered)], components, spec, times))
            for item in batch:
                state.sink.write(next(done) if isinstance(item, Rendered) else item)

        finisher = _Finisher(finish, times, self.finish_queue or 0)
        pending: list[Laid | Finished] = []  # in plan order; the laid ones wait to be rendered

        def flush() -> None:
            laid = [p for p in pending if isinstance(p, Laid)]
            rendered = iter(stages.render(laid, components, spec, times) if laid else [])
            finisher.put([next(rendered) if isinstance(p, Laid) else p for p in pending])
            state.progress(len(pending))
            pending.clear()

        try:
            mark = time.perf_counter()
            for plan in state.feed:
                times.plan_wait += time.perf_counter() - mark
                if plan.id not in state.done:
                    pending.append(plan.finished() if isinstance(plan, InvalidPlan)
                                   else stages.lay(plan, components, times))
                    state.done.add(plan.id)
                    # B plans to render, or fewer when the planner has nothing more ready: the
                    # device never waits for a batch to fill.
                    laid = sum(isinstance(p, Laid) for p in pending)
                    if laid >= self.batch_plans or not state.feed.ready():
                        flush()
                mark = time.perf_counter()
            flush()
        finally:
            finisher.close()  # what was queued is finished, so a rendered plan is never lost

    def close(self) -> None:
        pass


class _Finisher:
    """Runs ``finish`` on each batch on one background thread, in the order put, through a
    queue of ``depth`` batches; ``depth`` 0 runs in line. An error that stops the run is raised
    by the next ``put`` or by ``close``."""

    def __init__(self, finish: Callable[[list[Rendered | Finished]], None], times: StageTimes, depth: int):
        self._finish, self.times = finish, times
        self._queue: queue.Queue[list[Rendered | Finished] | None] = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="acp-finish", daemon=True)
            self._thread.start()

    def put(self, batch: Sequence[Rendered | Finished]) -> None:
        if self._thread is None:
            self._finish(list(batch))
            return
        start = time.perf_counter()
        while True:
            self._raise()
            try:
                self._queue.put(list(batch), timeout=0.1)
                break
            except queue.Full:
                continue
        self.times.finish_wait += time.perf_counter() - start

    def close(self) -> None:
        """Finish what is queued, stop the thread, raise its error if it had one."""
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            self._thread = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                self._finish(batch)
            except BaseException as error:  # handed to the device thread, which stops the run
                self._error = error
                return
