"""Every file acp reads is a regular file, read within a bound: a FIFO, a device or a socket
named where a file is expected is one line at once (or an item listed as bad), never a command
that blocks forever or reads ``/dev/zero`` until memory runs out; a file read whole has a cap
and a JSON Lines line too.

A FIFO test cannot hang the suite: ``Fifos`` opens each FIFO for writing (and closes it at
once) when a reader has waited on it for ``BLOCKED_AFTER`` seconds, which ends that reader's
wait, and the test then fails on ``blocked``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.test_clis_image import tiny_clip_dir_fixture  # noqa: F401  (provides tiny_clip_dir)
from tests.test_hostile_input import assert_one_line_error, invoke

BLOCKED_AFTER = 20.0
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


class Fifos:
    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.blocked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def make(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.paths.append(path)
        return path

    def _watch(self) -> None:
        if self._stop.wait(BLOCKED_AFTER):
            return
        self.blocked.set()
        while not self._stop.is_set():
            for path in self.paths:
                with contextlib.suppress(OSError):  # fails unless a reader has the FIFO open
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # it then reads the end
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fifos() -> Iterator[Fifos]:
    watch = Fifos()
    yield watch
    watch.close()
    assert not watch.blocked.is_set(), "acp blocked on a FIFO"


def coco(images: list[str], categories: tuple[str, ...] = ("dog",)) -> dict:
    return {
        "images": [{"id": k + 1, "file_name": name, "width": 64, "height": 48}
                   for k, name in enumerate(images)],
        "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [1, 1, 20, 20],
                         "area": 400, "iscrowd": 0} for k in range(len(images))],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(categories)],
    }


def test_open_regular_refuses_what_is_no_regular_file_at_once(tmp_path: Path, fifos: Fifos) -> None:
    from acp.paths import NotRegularFileError, file_problem, open_regular

    fifo = fifos.make(tmp_path / "x.json")
    with pytest.raises(NotRegularFileError, match="named pipe"):
        open_regular(fifo)
    with pytest.raises(IsADirectoryError, match="folder"):
        open_regular(tmp_path)
    assert file_problem(fifo) == "is a named pipe (FIFO), not a regular file"
    assert file_problem(tmp_path / "missing") == "no such file"
    (tmp_path / "a.txt").write_text("abc")
    assert file_problem(tmp_path / "a.txt") is None
    with open_regular(tmp_path / "a.txt") as handle:
        assert handle.read() == b"abc"


@needs_dev_zero
def test_read_regular_refuses_a_device_and_caps_a_file(tmp_path: Path) -> None:
    from acp.paths import FileTooLargeError, NotRegularFileError, read_regular

    with pytest.raises(NotRegularFileError, match="character device"):
        read_regular("/dev/zero", 1 << 20)
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:  # sparse: a terabyte that takes no disk
        handle.truncate(1 << 40)
    with pytest.raises(FileTooLargeError, match="1 TiB is over the 64 MiB cap"):
        read_regular(path, 64 << 20)
    path.write_bytes(b"x" * 10)
    assert read_regular(path, 10) == b"x" * 10


# Each command with the file it reads named as a FIFO: (arguments, the FIFO's name).
FIFO_COMMANDS = [
    (["plan", "{fifo}", "-o", "{tmp}/p.jsonl", "--planner", "heuristic"], "concepts.txt"),
    (["validate", "{fifo}"], "plans.jsonl"),
    (["preview", "{fifo}", "-o", "{tmp}/preview"], "plans.jsonl"),
    (["bank", "build", "{fifo}", "-o", "{tmp}/bank"], "real.json"),
    (["export", "merge", "{fifo}", "{tmp}/real.json", "-o", "{tmp}/merged.json"], "synthetic.json"),
    (["export", "merge", "{tmp}/real.json", "{fifo}", "-o", "{tmp}/merged.json"], "other.json"),
    (["export", "yolo", "{fifo}", "-o", "{tmp}/yolo"], "instances.json"),
    (["export", "coco-split", "{fifo}", "-o", "{tmp}/split"], "instances.json"),
    (["balance", "report", "{fifo}"], "real_fifo.json"),
    (["balance", "report", "{tmp}/real.json", "{fifo}"], "synthetic.json"),
    (["balance", "report", "{tmp}/real.json", "{fifo}"], "plans.jsonl"),
    (["plan", "--balance", "{fifo}", "--target", "5", "-o", "{tmp}/p.jsonl"], "real_fifo.json"),
    (["plan", "--concepts", "dog", "-o", "{fifo}", "--planner", "heuristic"], "plans_out.jsonl"),
    (["plan", "--balance", "{tmp}/real.json", "--target", "5", "--pass-rate-from", "{fifo}",
      "-o", "{tmp}/p.jsonl"], "summary.json"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "name"), FIFO_COMMANDS,
                         ids=[" ".join(a[:2]) + f" {n}" for a, n in FIFO_COMMANDS])
def test_a_fifo_for_an_input_file_is_one_line(tmp_path: Path, fifos: Fifos, args: list[str],
                                              name: str) -> None:
    (tmp_path / "real.json").write_text(json.dumps(coco(["a.png"])))
    fifo = fifos.make(tmp_path / "in" / name)
    result = invoke(*(a.format(fifo=fifo, tmp=tmp_path) for a in args))
    assert_one_line_error(result, str(fifo), "named pipe (FIFO), not a regular file")


@needs_dev_zero
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [
    ["plan", "/dev/zero", "-o", "{tmp}/p.jsonl", "--planner", "heuristic"],
    ["validate", "/dev/zero"],
    ["bank", "build", "/dev/zero", "-o", "{tmp}/bank"],
    ["export", "merge", "/dev/zero", "{tmp}/real.json", "-o", "{tmp}/merged.json"],
    ["balance", "report", "/dev/zero"],
    ["plan", "--balance", "{tmp}/real.json", "--target", "5", "--pass-rate-from", "/dev/zero",
     "-o", "{tmp}/p.jsonl"],
], ids=lambda args: " ".join(args[:2]))
def test_dev_zero_for_an_input_file_is_one_line(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "real.json").write_text(json.dumps(coco(["a.png"])))
    result = invoke(*(a.format(tmp=tmp_path) for a in args))
    assert_one_line_error(result, "/dev/zero", "character device, not a regular file")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "expected"), [
    (["plan", "{big}", "-o", "{tmp}/p.jsonl", "--planner", "heuristic"], "cap of such a file"),
    (["balance", "report", "{tmp}/real.json", "{big}"], "more than is read at once"),  # streamed
    (["plan", "--balance", "{tmp}/real.json", "--target", "5", "--pass-rate-from", "{big}",
      "-o", "{tmp}/p.jsonl"], "cap of such a file"),
    (["bank", "build", "{big}", "-o", "{tmp}/bank"], "cap of a COCO file read whole"),
    (["export", "merge", "{big}", "{tmp}/real.json", "-o", "{tmp}/merged.json"], "cap of such a file"),
], ids=lambda args: " ".join(args[:2]) if isinstance(args, list) else "")
def test_a_sparse_terabyte_file_is_refused_before_it_is_read(tmp_path: Path, args: list[str],
                                                           expected: str) -> None:
    """A regular file that is too large to read whole: refused on its size, in no time and
    no memory (the file is sparse, so this takes no disk either)."""
    (tmp_path / "real.json").write_text(json.dumps(coco(["a.png"])))
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.write(b"{")
        handle.truncate(1 << 40)
    result = invoke(*(a.format(big=big, tmp=tmp_path) for a in args))
    assert_one_line_error(result, str(big), expected)


def test_a_line_without_end_costs_one_bounded_line(tmp_path: Path, monkeypatch) -> None:
    """A JSON Lines file is streamed line by line; a line of 64 MiB of NULs (a file with no
    newline) was held whole. It is read past in blocks, never held (``MAX_LINE_BYTES``, made
    1 MiB here), and given as a bad line."""
    import tracemalloc

    from acp import jsonl

    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 1 << 20, raising=False)
    path = tmp_path / "plans.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"id": 1}\n')
        handle.truncate(10 + (64 << 20))  # sparse: no disk
        handle.seek(0, os.SEEK_END)
        handle.write(b'\n{"id": 2}\n')
    tracemalloc.start()
    try:
        records = [(n, r) for n, r, _ in jsonl.read_records(path)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == [(1, {"id": 1}), (2, None), (3, {"id": 2})]
    assert peak < 8 << 20, peak


@pytest.mark.timeout(120)
def test_a_fifo_named_like_an_image_is_a_listed_item_in_score_dataset_and_report(
        tmp_path: Path, fifos: Fifos, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(images / "good.png")
    fifos.make(images / "fifo.png")
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco(["good.png", "fifo.png"])))
    out = tmp_path / "scored"
    result = invoke("score", "dataset", annotations, "--images", images, "-o", out,
                    "--clip-model", tiny_clip_dir, "--no-progress")
    assert result.exit_code == 1, result.output  # a failed item: exit 1, after the report
    failures = {f["item"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == {"image 2"} and "named pipe (FIFO)" in failures["image 2"]
    assert [i["id"] for i in json.loads((out / "images.json").read_text())] == [1]
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
