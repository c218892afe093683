"""CocoWriter checkpoints: their cost does not grow with the dataset, their content is exactly
what the log says (after a kill, a torn write, a failed write), and they come by time too."""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import acp.export.coco as coco
from acp.export import CategorySet, CocoWriter, ImageProvenance, Instance
from acp.export.coco import LICENSE, InstanceProvenance

REPO = Path(__file__).resolve().parent.parent
CONCEPTS = ["dog", "cat", "frisbee"]
CATEGORIES = CategorySet.from_concepts(CONCEPTS)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _reference(out: Path) -> bytes:
    """annotations.json as the first writer built it: every log line parsed and serialised again."""
    lines = [json.loads(line) for line in (out / "coco_records.jsonl").read_text().splitlines()]
    header, records = lines[0], [r for r in lines if r["kind"] == "image"]
    text = (
        '{"info":' + _dump(header["info"]) + ',"licenses":' + _dump([LICENSE])
        + ',"categories":' + _dump(header["categories"]) + ',\n"images":['
        + ",".join("\n" + _dump(r["image"]) for r in records)
        + '\n],\n"annotations":['
        + ",".join("\n" + _dump(a) for r in records for a in r["annotations"])
        + "\n]}\n"
    )
    return text.encode()


def _keys(path: Path) -> list[str]:
    return [i["file_name"] for i in json.loads(path.read_text())["images"]]


SPACED_CHECKPOINT_S = coco.SPACED_CHECKPOINT_S


@pytest.fixture(autouse=True)
def checkpoints_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints due by count are written at once: on a busy disk one can take longer than
    SPACED_CHECKPOINT_S, and the writer would then space the next ones (tested on a fake clock
    in test_slow_checkpoints_are_spaced_to_a_share_of_the_writers_time)."""
    monkeypatch.setattr(coco, "SPACED_CHECKPOINT_S", float("inf"))


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "tiny.jpg"
    Image.new("RGB", (16, 12), (200, 100, 50)).save(path)
    return path


def _instances(seed: int) -> list[Instance]:
    rng = np.random.default_rng(seed)
    return [
        Instance(
            category_id=int(rng.integers(1, 4)),
            bbox=(float(rng.uniform(0, 8)), float(rng.uniform(0, 6)), 4.0, 3.5),
            provenance=InstanceProvenance(object_id=k, description=f"thing «{k}»", clis_i=50.0 + k),
        )
        for k in range(int(rng.integers(0, 4)))
    ]


def _provenance(seed: int) -> ImageProvenance:
    return ImageProvenance(
        plan_id=f"p{seed}", candidate=0, caption="un chien attrape un frisbee — 犬", seed=seed,
        planner="heuristic", render_model="tiny/gligen", steps=2, guidance=7.5, beta=0.3, prompt="p",
        clis=70.0 + seed / 3,
    )


def _add(writer: CocoWriter, source: Path, start: int, count: int) -> None:
    for seed in range(start, start + count):
        writer.add_image(f"scene/{seed:05d}", source, _instances(seed), _provenance(seed))


# --------------------------------------------------------------------------- cost


class _Counter:
    """Counts JSON parsing and serialising and records the files opened while it is active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.loads = self.dumps = 0
        self.opened: list[str] = []
        loads, dumps, open_, os_open = json.loads, json.dumps, builtins.open, os.open

        def counted_loads(*args: Any, **kwargs: Any) -> Any:
            self.loads += 1
            return loads(*args, **kwargs)

        def counted_dumps(*args: Any, **kwargs: Any) -> Any:
            self.dumps += 1
            return dumps(*args, **kwargs)

        def recorded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            self.opened.append(os.fspath(file) if not isinstance(file, int) else str(file))
            return open_(file, *args, **kwargs)

        def recorded_os_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            self.opened.append(os.fspath(path))
            return os_open(path, *args, **kwargs)

        monkeypatch.setattr(json, "loads", counted_loads)
        monkeypatch.setattr(json, "dumps", counted_dumps)
        monkeypatch.setattr(builtins, "open", recorded_open)
        monkeypatch.setattr(os, "open", recorded_os_open)


@pytest.mark.parametrize("images", [30, 300])
def test_a_checkpoint_neither_reads_the_log_nor_handles_json_of_earlier_images(
    tmp_path: Path, jpeg: Path, images: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=10**9) as writer:
        _add(writer, jpeg, 0, images)
        with monkeypatch.context() as patch:
            counter = _Counter(patch)
            writer.checkpoint()
        assert len(_keys(tmp_path / "annotations.json")) == images
        # The header (info, licenses, categories) is all that is serialised, whatever the size.
        assert (counter.loads, counter.dumps) == (0, 3)
        assert not [p for p in counter.opened if p.endswith("coco_records.jsonl")]


def _log_of(out: Path, images: int) -> None:
    """A log of ``images`` records, written directly (a writer makes the header)."""
    CocoWriter(out, CATEGORIES).open().close()
    lines = []
    for number in range(images):
        annotations = [
            {"id": 2 * number + k + 1, "image_id": number + 1, "category_id": 1 + k,
             "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0,
             "acp": {"object_id": k, "description": "a brown dog", "clis_i": 61.5, "mask_score": None}}
            for k in range(2)
        ]
        image = {"id": number + 1, "file_name": f"{number:06d}.jpg", "width": 512, "height": 512,
                 "license": 1, "acp": _provenance(number).model_dump(mode="json")}
        record = {"kind": "image", "key": f"{number:06d}", "image": image, "annotations": annotations}
        lines.append(_dump(record))
    with open(out / "coco_records.jsonl", "a") as log:
        log.write("\n".join(lines) + "\n")


def _checkpoint_work(out: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """Per checkpoint, each after one new image on the folder ``out``: the JSON values parsed
    and serialised, and whether the log was opened."""
    work = []
    with CocoWriter(out, CATEGORIES, checkpoint_every=10**9) as writer:
        for seed in range(3):
            writer.add_image(f"extra-{seed}", jpeg, _instances(seed))
            with monkeypatch.context() as patch:
                counter = _Counter(patch)
                writer.checkpoint()
            work.append((counter.loads, counter.dumps,
                         any(p.endswith("coco_records.jsonl") for p in counter.opened)))
    return work


def test_a_checkpoint_costs_the_same_at_2k_and_20k_images(tmp_path: Path, jpeg: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism behind a checkpoint's cost, on logs written as a long run leaves them: the
    first writer parsed and serialised every record at each checkpoint; this one handles the
    header only and never reads the log, so ten times the images is the same work (a wall-clock
    comparison would fail on a busy machine)."""
    small, large = tmp_path / "small", tmp_path / "large"
    _log_of(small, 2_000)
    _log_of(large, 20_000)
    small_work = _checkpoint_work(small, jpeg, monkeypatch)
    large_work = _checkpoint_work(large, jpeg, monkeypatch)
    assert small_work == large_work == [(0, 3, False)] * 3
    assert len(_keys(large / "annotations.json")) == 20_003


# --------------------------------------------------------------------------- content


def test_every_checkpoint_is_what_the_log_says_across_resumes(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "annotations.json"
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=7) as writer:
        assert path.read_bytes() == _reference(tmp_path)  # the empty file made at open()
        for seed in range(30):
            _add(writer, jpeg, seed, 1)
            if (seed + 1) % 7 == 0:
                assert path.read_bytes() == _reference(tmp_path)
        writer.add_image("plain", Image.new("RGB", (20, 10)), [])  # an image without annotations
    assert path.read_bytes() == _reference(tmp_path)
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=5) as writer:  # resumed: rebuilt from the log
        assert path.read_bytes() == _reference(tmp_path)
        _add(writer, jpeg, 0, 30)  # already there: nothing new
        assert writer.image_count == 31
        _add(writer, jpeg, 30, 12)
    assert path.read_bytes() == _reference(tmp_path)
    monkeypatch.delattr(os, "copy_file_range")  # the copy through a buffer, as off Linux
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=3) as writer:
        _add(writer, jpeg, 42, 7)
    assert path.read_bytes() == _reference(tmp_path)
    coco_file = COCO(str(path))
    assert len(coco_file.getImgIds()) == 31 + 12 + 7
    assert sorted(a["id"] for a in coco_file.loadAnns(coco_file.getAnnIds())) == list(
        range(1, writer.annotation_count + 1)
    )


def test_a_folder_with_no_images_yet(tmp_path: Path) -> None:
    CocoWriter(tmp_path, CATEGORIES).open().close()
    CocoWriter(tmp_path, CATEGORIES).open().close()
    data = json.loads((tmp_path / "annotations.json").read_text())
    assert data["images"] == [] and data["annotations"] == []
    assert (tmp_path / "annotations.json").read_bytes() == _reference(tmp_path)


# --------------------------------------------------------------------------- kills and damage


def test_resume_repairs_what_a_kill_or_another_program_left(tmp_path: Path, jpeg: Path) -> None:
    path = tmp_path / "annotations.json"
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=4) as writer:
        _add(writer, jpeg, 0, 10)
    log = tmp_path / "coco_records.jsonl"
    # Killed after two images reached the log but before their checkpoint ...
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=4) as writer:
        _add(writer, jpeg, 10, 2)
        stale = path.read_bytes()
    assert len(_keys(path)) == 12 and stale != path.read_bytes()
    path.write_bytes(stale)
    # ... in the middle of a checkpoint (its temporary file), and in the middle of a log line.
    (tmp_path / ".annotations.json.x1y2.tmp").write_bytes(stale[: len(stale) // 2])
    with open(log, "ab") as handle:
        handle.write(b'{"kind":"image","key":"torn","image":{"id":99,')
    with CocoWriter(tmp_path, CATEGORIES) as writer:
        assert writer.image_count == 12 and "torn" not in writer
        assert path.read_bytes() == _reference(tmp_path)
        assert not list(tmp_path.glob(".annotations.json.*.tmp"))
    assert b"torn" not in log.read_bytes()
    # A checkpoint cut short by a full disk or a power cut: a torn annotations.json.
    path.write_bytes(stale[:100])
    CocoWriter(tmp_path, CATEGORIES).open().close()
    assert path.read_bytes() == _reference(tmp_path)


def test_a_file_removed_or_cut_during_a_run_is_written_again(tmp_path: Path, jpeg: Path) -> None:
    path = tmp_path / "annotations.json"
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=3) as writer:
        _add(writer, jpeg, 0, 6)
        path.unlink()
        writer.checkpoint()  # nothing new, but the file is gone
        assert path.read_bytes() == _reference(tmp_path)
        path.unlink()
    assert path.read_bytes() == _reference(tmp_path)  # close() wrote it again
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=3) as writer:
        os.truncate(path, 50)  # cut in place: the very file the writer copies from
        _add(writer, jpeg, 6, 3)
        assert path.read_bytes() == _reference(tmp_path)
        assert writer.image_count == 9


def test_a_failed_checkpoint_keeps_the_last_file_and_the_next_one_catches_up(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "annotations.json"
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=3) as writer:
        _add(writer, jpeg, 0, 3)
        before = path.read_bytes()
        fsync = os.fsync

        def full_disk(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
        _add(writer, jpeg, 3, 2)
        with pytest.raises(OSError, match="No space"):
            _add(writer, jpeg, 5, 1)  # the image is recorded; its checkpoint failed
        assert writer.image_count == 6 and path.read_bytes() == before
        assert not list(tmp_path.glob(".annotations.json.*.tmp"))
        monkeypatch.setattr(os, "fsync", fsync)
        _add(writer, jpeg, 6, 1)
    assert path.read_bytes() == _reference(tmp_path)
    assert len(_keys(path)) == 7


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from PIL import Image
    from acp.export import CategorySet, CocoWriter, Instance

    out, count = Path(sys.argv[1]), int(sys.argv[2])
    with CocoWriter(out, CategorySet.from_concepts(["dog", "cat", "frisbee"]), checkpoint_every=3,
                    checkpoint_seconds=0.01) as writer:
        for seed in range(count):
            key = f"scene-{seed:05d}"
            if key not in writer:
                boxes = [Instance(1 + k % 3, (k, k, 3.0, 2.0)) for k in range(seed % 4)]
                writer.add_image(key, Image.new("RGB", (8, 8), (seed % 256, 0, 0)), boxes)
    """
)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_at_any_point_leaves_a_prefix_of_the_log_and_resumes_exactly(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    out, count = tmp_path / "out", 2000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = np.random.default_rng(0)
    log = out / "coco_records.jsonl"
    for _ in range(4):
        process = subprocess.Popen([sys.executable, str(script), str(out), str(count)], env=env)
        target = _lines(log) + 20
        deadline = time.monotonic() + 240  # a backstop: the loop ends at the target
        while time.monotonic() < deadline and _lines(log) < target:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.05)))
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        logged = [json.loads(line)["image"]["file_name"] for line in log.read_text().splitlines()
                  if line.endswith("}") and '"kind":"image"' in line]
        shown = _keys(out / "annotations.json")  # a whole COCO file, never ahead of the log
        assert shown == logged[: len(shown)]
    resumed = subprocess.run([sys.executable, str(script), str(out), str(count)], env=env, timeout=300)
    assert resumed.returncode == 0
    assert (out / "annotations.json").read_bytes() == _reference(out)
    names = _keys(out / "annotations.json")
    assert names == [f"scene-{i:05d}.jpg" for i in range(count)]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert len(COCO(str(out / "annotations.json")).getImgIds()) == count


# --------------------------------------------------------------------------- when


def test_checkpoints_come_by_time_and_close_rewrites_nothing_new(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(coco, "monotonic", lambda: now[0])
    path = tmp_path / "annotations.json"
    with CocoWriter(tmp_path, CATEGORIES, checkpoint_every=100, checkpoint_seconds=60) as writer:
        _add(writer, jpeg, 0, 1)
        now[0] += 59
        _add(writer, jpeg, 1, 1)
        assert _keys(path) == []
        now[0] += 2
        _add(writer, jpeg, 2, 1)  # 61 s after the last checkpoint
        assert len(_keys(path)) == 3
        now[0] += 30
        _add(writer, jpeg, 3, 1)
        assert len(_keys(path)) == 3
        now[0] += 31
        _add(writer, jpeg, 4, 1)
        assert len(_keys(path)) == 5
        written = os.stat(path)
    after = os.stat(path)  # nothing was added since: close() left the file alone
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert path.read_bytes() == _reference(tmp_path)


@pytest.mark.parametrize(("option", "value"), [("checkpoint_seconds", 0), ("checkpoint_seconds", -1.0),
                                               ("checkpoint_every", 0)])
def test_checkpoint_settings_are_checked(tmp_path: Path, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{option} must be"):
        CocoWriter(tmp_path, CATEGORIES, **{option: value})  # type: ignore[arg-type]


def test_slow_checkpoints_are_spaced_to_a_share_of_the_writers_time(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a checkpoint is slow (past ~80k images; here each one takes 5 s of a fake clock,
    each image 1 s), one due by count waits until 9 times its cost has passed: checkpoints take
    a tenth of the writer's time, and close() still writes everything."""
    now, cost = [0.0], 5.0
    starts: list[float] = []
    monkeypatch.setattr(coco, "SPACED_CHECKPOINT_S", SPACED_CHECKPOINT_S)
    monkeypatch.setattr(coco, "monotonic", lambda: now[0])
    atomic_path = coco.atomic_path

    @contextlib.contextmanager
    def slow_checkpoints(target: Path) -> Iterator[Path]:
        with atomic_path(target) as tmp:
            if target.name == "annotations.json":
                starts.append(now[0])
                now[0] += cost
            yield tmp

    monkeypatch.setattr(coco, "atomic_path", slow_checkpoints)
    with CocoWriter(tmp_path / "out", CATEGORIES, checkpoint_every=1) as writer:
        for seed in range(300):
            now[0] += 1.0
            _add(writer, jpeg, seed, 1)
        spent = now[0]
    assert 3 < len(starts) < 300  # not one per image, as checkpoint_every=1 alone would make it
    # The first is open()'s, the last close()'s; between them, from the end of one checkpoint to
    # the start of the next, 9 times its cost at least.
    assert all(later - earlier >= 10 * cost for earlier, later in itertools.pairwise(starts[:-1]))
    assert cost * len(starts[1:-1]) <= coco.CHECKPOINT_SHARE * spent
    assert len(_keys(tmp_path / "out" / "annotations.json")) == 300
    assert (tmp_path / "out" / "annotations.json").read_bytes() == _reference(tmp_path / "out")
