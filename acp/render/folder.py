"""A render folder: ``<plan_id>/<index>.png`` images, ``manifest.jsonl`` and ``render.json``.

Crash safety and resume:
- each image is written to a temporary file and renamed (``write_atomic``), and only then is
  its manifest line appended, whole, by ``JsonlWriter``; a kill leaves at worst an image
  without its line, or a torn last line, never a line without its image. Both happen on one
  background thread, in order: PNG encoding (20-90 ms for 512 px) releases the GIL, so the
  GPU renders the next plan meanwhile instead of waiting for the disk;
- on opening, the manifest is read back, and lines that are torn, invalid, duplicated or whose
  image is gone are dropped (the manifest is rewritten atomically when there are any); the
  candidates still listed are the finished ones, which a rerun skips;
- ``render.json`` holds the settings that decide the pixels (model, steps, guidance, beta,
  size, negative prompt, seed) and which candidates exist (safety checker). A folder with
  finished candidates refuses other settings, so one manifest never mixes two
  configurations; ``force`` discards its renders instead.
  ``--candidates`` is not a setting: a rerun with more adds the missing indices.
- a folder is a render folder when its ``render.json`` records render settings; any other
  non-empty folder is refused, ``force`` or not, before anything in it is read or locked
  (its ``manifest.jsonl`` would be rewritten, its files overwritten);
- a candidate flagged by the safety checker (on only when asked for) is counted and dropped:
  no image, no manifest line. A rerun therefore renders it again, with the same seed and the
  same outcome.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from acp import defaults
from acp.atomic import is_temporary
from acp.errors import InputError, OutputMismatchError
from acp.jsonl import JsonlWriter, dumps, loads, read_records, write_atomic
from acp.lock import OutputLock
from acp.paths import SMALL_FILE_BYTES, UnsafePathError, file_problem, inside, open_regular, read_regular_text
from acp.schema import Candidate, ScenePlan, read_plans

if TYPE_CHECKING:
    from PIL import Image

    from acp.render.gligen import GligenRenderer, RenderSettings

MANIFEST = "manifest.jsonl"
SETTINGS = "render.json"
MAX_QUEUED = 16  # images waiting for the writer thread (about 12 MiB at 512 px)


def check_batch_plans(batch_plans: int) -> None:
    if not 1 <= batch_plans <= defaults.MAX_BATCH_PLANS:
        raise InputError(f"batch_plans must be 1..{defaults.MAX_BATCH_PLANS}, got {batch_plans}")


def read_plan_file(path: Path, limit: int | None = None) -> tuple[list[ScenePlan], list[tuple[int, str]]]:
    """The valid plans of a JSON Lines file (the first ``limit``) and ``(line, reason)`` for
    each line skipped: unreadable, invalid, or repeating an earlier plan's id."""
    path = Path(path)
    if problem := file_problem(path):
        raise InputError(f"plans file not found: {path}" if problem == "no such file"
                         else f"plans file {path}: {problem}")
    plans: list[ScenePlan] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for number, plan, reason in read_plans(path):
        if plan is None:
            problems.append((number, reason or "invalid plan"))
        elif plan.id in first_line:
            problems.append((number, f"plan id {plan.id!r} already used on line {first_line[plan.id]}"))
        else:
            first_line[plan.id] = number
            plans.append(plan)
            if limit is not None and len(plans) >= limit:
                break
    return plans, problems


def _recorded(root: Path) -> dict[str, object] | None:
    """The settings ``root/render.json`` records: what proves ``root`` a render folder."""
    try:
        recorded = loads(read_regular_text(root / SETTINGS, SMALL_FILE_BYTES))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and {"model", "steps", "seed"} <= recorded.keys() else None


def _empty(root: Path) -> bool:
    """Nothing in ``root`` but temporaries of acp writes (a run killed before its first file)."""
    return all(is_temporary(entry.name) for entry in root.iterdir())


def _torn(path: Path) -> bool:
    """Whether the file's last line lacks its newline (a write cut short)."""
    with open_regular(path) as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return False
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class RenderFolder:
    """The finished candidates of a render folder, and the one way to add to it.

    Opening it writes nothing: an existing folder is locked (``OutputLock``), read back and
    checked against ``settings``; the folder is created, ``--force``'s discarding done and
    ``render.json`` written only by ``start()``, which ``render_to_folder`` calls once the model
    has loaded, so a typo in ``--model`` leaves no debris and discards nothing.
    """

    def __init__(self, root: Path, settings: RenderSettings, *, force: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"output {self.root} exists and is not a folder")
        if self.root.is_dir() and _recorded(self.root) is None and not _empty(self.root):
            # Before anything is read or locked: a manifest.jsonl of the user's would be rewritten.
            raise InputError(f"output {self.root} is not empty and is not a render folder (no {SETTINGS} "
                             "of acp render); give a new or empty folder")
        self.manifest = self.root / MANIFEST
        self._wanted = settings.record()
        self._force = force
        self._lock = OutputLock(self.root)
        self._previous: dict[tuple[str, int], Candidate] = {}  # what ``force`` discards
        self.done: dict[tuple[str, int], Candidate] = {}
        self._writer: JsonlWriter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._queued: deque[Future[None]] = deque()
        if self.root.is_dir():
            self._open()

    def _open(self) -> None:
        """Lock the folder, then read it: nothing is read or removed before the lock is held."""
        self._lock.acquire()
        try:
            self._previous = self._finished()
            if self._previous and not self._force:
                self._check(self._wanted)
        except BaseException:
            self._lock.release()
            raise
        self.done = {} if self._force else dict(self._previous)

    def start(self) -> None:
        """Make the folder ready for writing (idempotent): create and lock it, discard the old
        renders under ``force``, record the settings."""
        if self._writer is not None:
            return
        if not self._lock.held:
            self.root.mkdir(parents=True, exist_ok=True)
            self._open()  # another run may have created it since __init__
        if self._force:
            self._discard()
        write_atomic(self.root / SETTINGS, json.dumps(self._wanted, indent=2) + "\n")
        self._writer = JsonlWriter(self.manifest)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acp-render-writer")

    def _finished(self) -> dict[tuple[str, int], Candidate]:
        if not self.manifest.exists():
            return {}
        kept: dict[tuple[str, int], Candidate] = {}
        dropped = 0
        for _number, record, _text in read_records(self.manifest):
            try:
                candidate = Candidate.model_validate(record)
                image = inside(self.root, candidate.path, what=f"{self.manifest}: path")
            except (ValidationError, UnsafePathError):  # a hostile or broken line is not ours
                dropped += 1
                continue
            key = (candidate.plan_id, candidate.index)
            if key in kept or not image.is_file():
                dropped += 1
                continue
            kept[key] = candidate
        if dropped or _torn(self.manifest):
            write_atomic(self.manifest, "".join(dumps(c) + "\n" for c in kept.values()))
        return kept

    def _check(self, wanted: dict[str, object]) -> None:
        recorded = _recorded(self.root)
        if recorded is None:  # it was there when the folder was opened
            raise OutputMismatchError(f"{self.root}: its {SETTINGS} went away; rerun")
        changes = [
            f"{key} {recorded.get(key)!r} -> {value!r}"
            for key, value in wanted.items()
            if recorded.get(key) != value
        ]
        if changes:
            raise OutputMismatchError(
                f"{self.root} holds renders made with other settings ({'; '.join(changes)}); "
                "use another folder, or --force to discard them and start over"
            )

    def _discard(self) -> None:
        for candidate in self._previous.values():
            with contextlib.suppress(UnsafePathError):  # checked on reading; a link may be new
                inside(self.root, candidate.path, what="path").unlink(missing_ok=True)
        self._previous = {}
        self._force = False
        write_atomic(self.manifest, "")

    def pending(self, plan: ScenePlan, candidates: int) -> list[int]:
        """Indices below ``candidates`` that ``plan`` does not have yet."""
        return [i for i in range(candidates) if (plan.id, i) not in self.done]

    def add(self, candidate: Candidate, image: Image.Image) -> None:
        """Queue the image, then its manifest line, for the writer thread. A write that failed
        earlier raises here (or in ``flush``)."""
        self.start()
        assert self._pool is not None
        self._wait(MAX_QUEUED - 1)
        self._queued.append(self._pool.submit(self._write, candidate, image))
        self.done[(candidate.plan_id, candidate.index)] = candidate

    def _write(self, candidate: Candidate, image: Image.Image) -> None:
        try:
            write_atomic(self.root / candidate.path, _png(image))
            assert self._writer is not None
            self._writer.write(candidate)
        except OSError as error:  # a full disk or a read-only folder: the user's to fix
            raise InputError(f"cannot write to {self.root}: {error.strerror or error}") from None

    def _wait(self, queued: int) -> None:
        """Block until at most ``queued`` writes are pending; re-raise the first failure."""
        while self._queued and (len(self._queued) > queued or self._queued[0].done()):
            self._queued.popleft().result()

    def flush(self) -> None:
        """Wait for every queued image and line to be written."""
        self._wait(0)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()
            self._lock.release()

    def __enter__(self) -> RenderFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RenderSummary:
    plans: int = 0
    rendered: int = 0
    skipped: int = 0  # already finished by an earlier run
    flagged: int = 0  # rendered, flagged by the safety checker, not written
    seconds: float = 0.0  # rendering and writing, model load excluded
    load_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"rendered {self.rendered} candidates of {self.plans} plans in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s, model load {self.load_seconds:.1f} s)"
        )
        if self.flagged:
            text += f"; {self.flagged} flagged by the safety checker, not written"
        if self.skipped:
            text += f"; {self.skipped} already done"
        return text


def render_to_folder(
    plans: Sequence[ScenePlan],
    output: Path,
    settings: RenderSettings,
    *,
    candidates: int,
    force: bool = False,
    progress: bool = False,
    renderer: GligenRenderer | None = None,
    load_renderer: Callable[[], GligenRenderer] | None = None,
    batch_plans: int = 1,
) -> RenderSummary:
    """Render ``candidates`` per plan into ``output``, skipping finished ones, ``batch_plans``
    plans per denoising loop, with ``renderer`` or the one ``load_renderer`` loads. The folder
    is checked before the model is loaded, and the model is not loaded when nothing is left;
    ``progress`` shows a bar."""
    from tqdm.auto import tqdm

    if not 1 <= candidates <= defaults.MAX_CANDIDATES:
        raise InputError(f"candidates must be 1..{defaults.MAX_CANDIDATES}, got {candidates}")
    check_batch_plans(batch_plans)
    if renderer is not None and renderer.settings != settings:
        raise ValueError("renderer.settings differ from settings")
    summary = RenderSummary(plans=len(plans))
    with RenderFolder(output, settings, force=force) as folder:
        work = [(plan, folder.pending(plan, candidates)) for plan in plans]
        total = sum(len(indices) for _plan, indices in work)
        summary.skipped = len(plans) * candidates - total
        if total == 0:
            return summary
        if renderer is None:
            if load_renderer is None:
                raise ValueError("render_to_folder needs a renderer or load_renderer")
            started = time.perf_counter()
            renderer = load_renderer()
            summary.load_seconds = time.perf_counter() - started
        folder.start()
        started = time.perf_counter()
        with tqdm(total=total, unit="img", desc="render", disable=not progress, dynamic_ncols=True) as bar:
            pending = [(plan, {i: renderer.seed_for(plan.id, i) for i in indices})
                       for plan, indices in work if indices]
            for start in range(0, len(pending), batch_plans):
                batch = pending[start : start + batch_plans]
                for rendered_plan in renderer.render_seeds(batch):
                    for rendered in rendered_plan:
                        summary.rendered += 1
                        if rendered.flagged:
                            summary.flagged += 1
                        else:
                            folder.add(rendered.candidate, rendered.image)
                bar.update(sum(len(seeds) for _plan, seeds in batch))
            folder.flush()
        summary.seconds = time.perf_counter() - started
    return summary

