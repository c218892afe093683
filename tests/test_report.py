"""`acp report`: the page of a generate output and of a score report, opened in a real browser."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from acp import defaults
from acp.cli import app
from acp.report import write_report

runner = CliRunner()
SECTIONS = ["run", "counts", "scores", "contact-sheet", "extremes", "categories"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    """What a page holds: section ids, image sources, scripts, links out, SVG charts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.scripts = self.svgs = 0
        self.fetched: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(str(values.get("id")))
        elif tag == "img":
            self.images.append(str(values.get("src")))
        elif tag == "script":
            self.scripts += 1
        elif tag == "svg":
            self.svgs += 1
        for key in ("src", "href"):
            value = values.get(key) or ""
            if key in values and not value.startswith(("data:image/jpeg;base64,", "#")):
                self.fetched.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_generate_writes_a_self_contained_report(tiny_dataset: Path) -> None:
    """The page `acp generate` wrote: every section, thumbnails that decode, nothing fetched, no
    script; the counts of the run's summary; the dropped candidates beside the weakest kept."""
    path = tiny_dataset / "report.html"
    assert path.is_file()  # written by generate itself
    page = _parse(path)
    assert page.sections == SECTIONS
    assert page.scripts == 0 and page.fetched == [] and page.svgs >= 3
    data = json.loads((tiny_dataset / "annotations.json").read_text())
    summary = json.loads((tiny_dataset / "summary.json").read_text())
    assert summary["scenes_dropped"] > 0 and data["images"]
    for src in page.images:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    text = " ".join(page.text)
    assert f"Contact sheet: {len(data['images'])} of {len(data['images'])} kept images" in text
    assert "Best dropped candidates" in text and "no candidate passes the CLIS-I threshold" in text
    # The contact sheet (every image of so small a set), the weakest kept, the best dropped
    # candidates, and the category strips: more than the images, fewer than the caps allow.
    kept = len(data["images"])
    assert len(page.images) > 2 * kept
    assert len(page.images) <= kept + min(kept, defaults.REPORT_EXTREMES) + defaults.REPORT_EXTREMES + \
        defaults.REPORT_STRIP * len(data["categories"])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium (Debian) to render "
                    "the report in a headless browser")
def test_report_renders_in_headless_chromium(tiny_dataset: Path, tmp_path: Path) -> None:
    """Chromium loads the page from disk, every image decodes (naturalWidth > 0), the sections
    and the image count are there; a screenshot is not blank."""
    folder = tmp_path / "page"
    folder.mkdir()
    shutil.copy(tiny_dataset / "report.html", folder / "report.html")
    # A probe page next to it reads the report's DOM once it has loaded (file pages of one
    # folder may read each other with --allow-file-access-from-files); the report has no script.
    (folder / "probe.html").write_text("""<!DOCTYPE html><html><body>
<iframe id="f" src="report.html" width="1300" height="900"></iframe><pre id="result">pending</pre>
<script>
document.getElementById("f").addEventListener("load", () => {
  const d = document.getElementById("f").contentDocument;
  const images = [...d.images];
  document.getElementById("result").textContent = JSON.stringify({
    images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    sections: [...d.querySelectorAll("section")].map(s => s.id), charts: d.querySelectorAll("svg").length,
    sheet: Number(d.querySelector("#contact-sheet .grid").dataset.count)});
});
</script></body></html>""")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=10000"]
    result = subprocess.run([*flags, "--dump-dom", (folder / "probe.html").as_uri()], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    found = json.loads(dom.split('<pre id="result">', 1)[1].split("</pre>", 1)[0])
    expected = _parse(folder / "report.html")
    assert found["sections"] == SECTIONS
    assert found["images"] == len(expected.images) > 0 and found["broken"] == 0
    assert found["charts"] == expected.svgs and found["sheet"] == len(
        json.loads((tiny_dataset / "annotations.json").read_text())["images"])
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1300,1800", f"--screenshot={shot}",
                    (folder / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1800, 1300) and pixels.std() > 20  # text, tables and images, not a blank page


def _score_folder(tmp_path: Path, n: int = 300) -> Path:
    """An `acp score dataset` report over ``n`` images (one file) with a filtered copy."""
    from acp.score.dataset import score_dataset
    from tests.test_score_dataset import FixedScorer

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{k}.png")
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i % 4}.png", "width": 64, "height": 48} for i in range(n)],
        "annotations": [{"id": 2 * i + j + 1, "image_id": i + 1, "category_id": 1 + (i + j) % 3,
                         "bbox": [4 + 20 * j, 6, 18, 20], "area": 360, "iscrowd": 0}
                        for i in range(n) for j in range(2)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "<b>cow</b>"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    score_dataset(tmp_path / "instances.json", images, tmp_path / "report",
                  image_scorer=FixedScorer(lambda o: 80.0 if o.category == "cat" else 40.0 + o.id),
                  keep_above=50)
    return tmp_path / "report"


def test_report_of_a_score_folder_is_bounded_and_shows_the_filter(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.report

    folder = _score_folder(tmp_path)
    opened: list[Any] = []
    real = acp.report.read_rgb

    def counting(path: Path, *args: Any) -> Any:
        opened.append(path)
        return real(path, *args)

    monkeypatch.setattr(acp.report, "read_rgb", counting)
    summary = write_report(folder)
    page = _parse(folder / "report.html")
    assert page.sections == SECTIONS and page.scripts == 0 and page.fetched == []
    cap = defaults.REPORT_CONTACT_SHEET + 2 * defaults.REPORT_EXTREMES + 3 * defaults.REPORT_STRIP
    assert summary.thumbnails == len(page.images) <= cap
    assert len(opened) <= 4  # four distinct files behind 300 records, each opened once
    text = " ".join(page.text)
    assert f"Contact sheet: {defaults.REPORT_CONTACT_SHEET} of 300 scored images" in text
    assert "<b>cow</b>" in text  # a category name is text, never markup
    scored = json.loads((folder / "summary.json").read_text())
    assert f"kept images {scored['kept_images']}".replace(" ", "") in text.replace(" ", "")


def test_report_cli_on_a_folder_that_is_neither_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "neither an `acp generate` output" in result.output
    assert len(result.output.splitlines()) == 1


def test_a_hostile_file_name_is_not_opened(tiny_dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, folder, ignore=shutil.ignore_patterns("candidates"))
    data = json.loads((folder / "annotations.json").read_text())
    data["images"][0]["file_name"] = "../../../etc/passwd"
    (folder / "annotations.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["report", str(folder), "-o", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    text = " ".join(_parse(tmp_path / "page.html").text)
    assert "climbs out of its folder" in text and "Candidates were not kept" in text


def _run_rows(page: str) -> list[tuple[str, str]]:
    import html
    import re

    run = page.split('<section id="run">', 1)[1].split("</section>", 1)[0]
    return [(html.unescape(k), html.unescape(v))
            for k, v in re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td></tr>", run)]


def test_the_run_table_names_its_concepts_and_each_row_once(tiny_dataset: Path, tmp_path: Path) -> None:
    write_report(tiny_dataset, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    rows = _run_rows(page)
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), keys  # one "planner" row, the last run's apart
    values = dict(rows)
    assert values["concepts"].startswith("4: ") and all(c in values["concepts"]
                                                       for c in ("dog", "frisbee", "cat", "bus"))
    digest = json.loads((tiny_dataset / "settings.json").read_text())["concepts"]
    assert digest not in page  # a fingerprint is not what a reader wants to see
    assert values["clis_l_method"] == f"{defaults.CLIS_L_METHOD} (the default)"  # as --clis-l-method names it
    assert values["last run: planner"].startswith("planned 12, ")
    assert "How CLIS-L was reached, per plan" in page and "reference-free sanity check" in page


def test_the_category_table_is_sorted_by_count_and_folds_the_empty_ones(tiny_dataset: Path,
                                                                        tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, folder, ignore=shutil.ignore_patterns("candidates"))
    data = json.loads((folder / "annotations.json").read_text())
    data["categories"] += [{"id": 100 + k, "name": f"thing{k:03d}"} for k in range(196)]
    (folder / "annotations.json").write_text(json.dumps(data))
    summary = json.loads((folder / "summary.json").read_text())
    write_report(folder, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    table = page.split("<h3>Instances per category</h3>", 1)[1].split("<h3>", 1)[0]
    names = [n for n in (r.split("<td>", 1)[1].split("</td>", 1)[0] for r in table.split("<tr>")[2:])]
    total = {name: summary["instances_kept_by_category"].get(name, 0)
             + summary["instances_dropped_by_category"].get(name, 0)
             for name in {*summary["instances_kept_by_category"], *summary["instances_dropped_by_category"]}}
    assert names == sorted(total, key=lambda n: (-total[n], n))
    assert "196 categories without any instance: thing000, thing001," in table
    assert "thing195" not in table  # the folded line lists the first NAMES_SHOWN only


def test_masks_are_drawn_over_their_objects() -> None:
    from pycocotools import mask as mask_utils

    from acp.report import MaskBudget, ThumbnailBox, thumbnail

    image = Image.new("RGB", (64, 48), (128, 128, 128))
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[8:40, 4:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    segmentation = {"size": [48, 64], "counts": rle["counts"].decode()}

    def drawn(masks: Any) -> np.ndarray:
        uri = thumbnail(image, [ThumbnailBox((4, 8, 26, 32), "", "#3cb44b", segmentation)], 64, masks)
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"),
                          dtype=float)

    with_masks, without = drawn(MaskBudget()), drawn(None)
    inside, outside = (slice(14, 34), slice(10, 24)), (slice(10, 40), slice(40, 60))
    assert with_masks[inside][..., 1].mean() > without[inside][..., 1].mean() + 20  # tinted green
    assert abs(with_masks[outside] - without[outside]).mean() < 2


def test_a_dataset_with_masks_shows_them(tiny_dataset: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.report

    decoded: list[Any] = []
    real = acp.report.decode_rle

    def counting(*args: Any) -> Any:
        decoded.append(real(*args))
        return decoded[-1]

    monkeypatch.setattr(acp.report, "decode_rle", counting)
    write_report(tiny_dataset, tmp_path / "page.html")
    assert decoded and all(mask is not None for mask in decoded)  # every acp-written RLE decodes


def test_the_report_says_what_it_is_doing(tiny_dataset: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    write_report(tiny_dataset, tmp_path / "page.html", status=lines.append)
    assert lines[0].startswith(f"reading {tiny_dataset / 'annotations.json'} (") and lines[0].endswith(" MB)")
    assert any(line.startswith("drawing up to ") for line in lines)


def test_the_report_command_says_its_steps_on_a_terminal_only(tiny_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import acp.cli._common

    monkeypatch.setattr(acp.cli._common, "_terminal", lambda: True)
    watched = runner.invoke(app, ["report", str(tiny_dataset), "-o", str(tmp_path / "a.html")])
    assert watched.exit_code == 0, watched.output
    assert "acp: reading " in watched.stderr and "acp: drawing up to " in watched.stderr
    monkeypatch.setattr(acp.cli._common, "_terminal", lambda: False)
    logged = runner.invoke(app, ["report", str(tiny_dataset), "-o", str(tmp_path / "b.html")])
    assert logged.exit_code == 0 and logged.stderr == ""
