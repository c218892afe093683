"""``acp report FOLDER``: one static HTML page showing what a run made and what its filter did.

``FOLDER`` is an ``acp generate`` output (``settings.json``, ``annotations.json``,
``summary.json``, ``progress.jsonl``, ``scores.jsonl``, ``images/``, ``candidates/`` with
``--keep-candidates``) or an ``acp score dataset`` report (``summary.json``, ``images.json``,
``boxes.json``, ``categories.json``, ``failures.json``). The page (``FOLDER/report.html`` by
default) has, each as a ``<section>`` with an id:

- ``run``: the settings and provenance of the run;
- ``counts``: images and boxes kept and dropped, per category and per drop reason;
- ``scores``: histograms of CLIS, CLIS-L and CLIS-I (inline SVG), all candidates or images
  against the kept ones, with the thresholds;
- ``contact-sheet``: a sample of kept images with their boxes and labels drawn;
- ``extremes``: the lowest-scoring kept images beside the best dropped candidates (generate,
  where candidates were kept) or the best removed images (score dataset, with ``--keep-above``);
- ``categories``: a strip of example boxes per category.

Self-contained: thumbnails are embedded as JPEG data URIs, styles inline, no script, nothing
fetched. Bounded whatever the dataset's size: the page holds at most
``REPORT_CONTACT_SHEET + 2 REPORT_EXTREMES + REPORT_STRIP x REPORT_STRIP_CATEGORIES``
thumbnails (``acp.defaults``), chosen in one streaming pass each over the records (a sample
by a hash of the image id, so the same dataset gives the same page), and only those images are
opened. The records themselves are read once, line by line where they are JSON Lines; the
COCO file is parsed whole, as every reader of it does.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import acp
from acp import defaults
from acp.atomic import write_atomic
from acp.errors import InputError
from acp.images import read_rgb
from acp.jsonl import iter_lines, loads, read_records
from acp.paths import SMALL_FILE_BYTES, UnsafePathError, inside, read_regular_text

if TYPE_CHECKING:
    from PIL.Image import Image

REPORT_NAME = "report.html"
BINS = 50  # histogram bins over 0-100
_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#008080", "#9a6324", "#800000", "#808000", "#000075", "#ffe119")
_KEPT, _DROPPED, _ALL = "#2b7bb9", "#d62728", "#b0b0b0"


@dataclass
class ReportSummary:
    path: Path
    kind: str  # "generate" or "score"
    images: int  # images of the dataset
    thumbnails: int  # images embedded in the page
    bytes: int


def write_report(folder: Path, output: Path | None = None) -> ReportSummary:
    """Build the page for ``folder`` (see the module docstring) and write it atomically."""
    folder = Path(folder)
    output = Path(output) if output is not None else folder / REPORT_NAME
    if (folder / "settings.json").is_file() and (folder / "annotations.json").is_file():
        page = _generate_page(folder)
    elif _score_summary(folder) is not None:
        page = _score_page(folder)
    else:
        raise InputError(
            f"{folder}: neither an `acp generate` output (settings.json and annotations.json) nor an "
            "`acp score dataset` report (summary.json); expected one of them"
        )
    text = page.render()
    write_atomic(output, text)
    return ReportSummary(output, page.kind, page.images, page.thumbnails, len(text.encode("utf-8")))


# --- the page ------------------------------------------------------------------------------


@dataclass
class _Page:
    kind: str
    title: str
    images: int = 0
    thumbnails: int = 0
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # id, heading, html

    def add(self, section_id: str, heading: str, body: str) -> None:
        self.sections.append((section_id, heading, body))

    def render(self) -> str:
        built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = " · ".join(f'<a href="#{i}">{_e(h)}</a>' for i, h, _ in self.sections)
        body = "\n".join(f'<section id="{i}"><h2>{_e(h)}</h2>\n{b}\n</section>' for i, h, b in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(self.title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{_e(self.title)}</h1><p class=\"meta\">acp {_e(acp.__version__)} · built {built} · "
            f"{self.images} images, {self.thumbnails} shown</p><nav>{nav}</nav>\n{body}\n</body></html>\n"
        )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.meta{color:#666;margin:0 0 8px}nav a{color:#2b7bb9}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}
figure{margin:0;background:#fafafa;border:1px solid #e4e4e4;padding:4px}figure img{width:100%;display:block}
figcaption{font-size:12px;color:#444;overflow-wrap:anywhere}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}.strip{display:flex;gap:6px;flex-wrap:wrap;
margin:4px 0 12px}.strip figure{width:120px}.charts{display:flex;flex-wrap:wrap;gap:16px}
.bar{display:inline-block;height:10px;background:#2b7bb9}.bar.d{background:#d62728}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
.note{color:#666;font-style:italic}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return _e(value)


def _table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{_number(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{v}</td>" if isinstance(v, _Html) else f"<td>{_e(v)}</td>"
            for v in row
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


class _Html(str):
    """Markup that a table cell takes as it is (already escaped)."""


def _bar(value: float, most: float, dropped: bool = False) -> _Html:
    width = 0 if most <= 0 else round(160 * value / most)
    return _Html(f'<span class="bar{" d" if dropped else ""}" style="width:{width}px"></span>')


class _Histogram:
    """Counts of 0-100 scores in ``BINS`` bins, kept for a few named series."""

    def __init__(self, *series: str) -> None:
        self.counts = {name: np.zeros(BINS, dtype=np.int64) for name in series}

    def add(self, series: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            self.counts[series][min(max(int(value * BINS / 100), 0), BINS - 1)] += 1

    def total(self) -> int:
        return int(sum(c.sum() for c in self.counts.values()))

    def svg(self, title: str, colours: dict[str, str], threshold: float | None = None) -> str:
        width, height, left, bottom = 360, 170, 34, 22
        plot_w, plot_h = width - left - 16, height - bottom - 20
        most = max((int(c.max()) for c in self.counts.values()), default=0) or 1
        step = plot_w / BINS
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                 f'role="img" aria-label="{_e(title)}">',
                 f'<text x="{left}" y="13" font-size="13">{_e(title)}</text>']
        for name, counts in self.counts.items():
            for k, n in enumerate(counts.tolist()):
                if n:
                    h = plot_h * n / most
                    parts.append(
                        f'<rect x="{left + k * step:.1f}" y="{20 + plot_h - h:.1f}" width="{step - 0.5:.1f}" '
                        f'height="{h:.1f}" fill="{colours[name]}" fill-opacity="0.75"><title>{_e(name)} '
                        f'{k * 100 // BINS}-{(k + 1) * 100 // BINS}: {n}</title></rect>'
                    )
        base = 20 + plot_h
        parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#333"/>')
        for tick in (0, 25, 50, 75, 100):
            x = left + plot_w * tick / 100
            parts.append(
                f'<text x="{x:.1f}" y="{base + 14}" font-size="10" text-anchor="middle">{tick}</text>'
            )
        parts.append(f'<text x="{left - 4}" y="26" font-size="10" text-anchor="end">{most}</text>'
                     f'<text x="{left - 4}" y="{base}" font-size="10" text-anchor="end">0</text>')
        if threshold is not None:
            x = left + plot_w * threshold / 100
            parts.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{base}" stroke="#000" '
                         f'stroke-dasharray="4 3"><title>threshold {threshold:g}</title></line>')
        parts.append("</svg>")
        return "".join(parts)


def _charts(charts: list[tuple[_Histogram, str, float | None]], colours: dict[str, str]) -> str:
    legend = "".join(f'<span style="background:{c}"></span>{_e(n)}' for n, c in colours.items())
    shown = [h.svg(title, colours, threshold) for h, title, threshold in charts if h.total()]
    missing = [title for h, title, _ in charts if not h.total()]
    note = f'<p class="note">No scores for: {_e(", ".join(missing))}.</p>' if missing else ""
    return (f'<p class="legend">{legend} · dashed line: threshold</p>'
            f'<div class="charts">{"".join(shown)}</div>{note}')


# --- thumbnails ----------------------------------------------------------------------------


@dataclass
class _Box:
    bbox: tuple[float, float, float, float]  # pixel x, y, w, h
    label: str
    colour: str


def _thumbnail(image: Image, boxes: list[_Box], size: int) -> str:
    """``image`` scaled to fit ``size`` with its boxes drawn, as a JPEG data URI."""
    from PIL import ImageDraw, ImageFont

    scale = min(size / image.width, size / image.height)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(shown)
    font = ImageFont.load_default()
    for box in boxes:
        x, y, w, h = (v * scale for v in box.bbox)
        draw.rectangle([x, y, x + w, y + h], outline=box.colour, width=2)
        if box.label:
            left, top, right, bottom = draw.textbbox((x + 2, y + 1), box.label, font=font)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=box.colour)
            draw.text((x + 2, y + 1), box.label, fill="white", font=font)
    return _jpeg(shown)


def _crop(image: Image, bbox: tuple[float, float, float, float], colour: str, size: int) -> str:
    """The box with a margin of a quarter of its size around it, scaled to fit ``size``."""
    x, y, w, h = bbox
    margin = 0.25 * max(w, h)
    left, top = max(0, int(x - margin)), max(0, int(y - margin))
    right = min(image.width, math.ceil(x + w + margin))
    bottom = min(image.height, math.ceil(y + h + margin))
    if right <= left or bottom <= top:
        left, top, right, bottom = 0, 0, image.width, image.height
    part = image.crop((left, top, right, bottom))
    return _thumbnail(part, [_Box((x - left, y - top, w, h), "", colour)], size)


def _jpeg(image: Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=78)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Images:
    """Opens the few images the page shows, each once, inside its folder."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._cache: dict[str, Image | None] = {}
        self.problems: list[str] = []

    def get(self, name: Any, root: Path | None = None) -> Image | None:
        root = root or self.root
        if root is None:
            return None
        key = f"{root}\0{name}"
        if key not in self._cache:
            try:
                image, reason = read_rgb(inside(root, name, what="file_name"))
            except UnsafePathError as error:
                image, reason = None, str(error)
            if image is None and len(self.problems) < 20:
                self.problems.append(str(reason))
            self._cache[key] = image
            if len(self._cache) > 64:  # only a handful is drawn at a time
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


def _figure(uri: str, caption: str, title: str = "") -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return (f'<figure><img src="{uri}" alt="{_e(caption)}"{tip}>'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _hash_key(value: Any) -> int:
    return int.from_bytes(hashlib.sha256(str(value).encode("utf-8")).digest()[:8], "big")


def _sample(items: Iterable[Any], count: int, key: Any = lambda item: item) -> list[Any]:
    """The ``count`` items of smallest hash: a uniform sample, the same on every run."""
    return heapq.nsmallest(count, items, key=lambda item: _hash_key(key(item)))


def _colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _score(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def _read_json(path: Path) -> Any:
    from acp.export.categories import load_json_file

    return load_json_file(path)


def _json_array(path: Path) -> Iterator[Any]:
    """The elements of a JSON array written one element a line (``acp score dataset``'s
    files), without parsing the whole file; any other layout is parsed whole."""
    first = True
    for _number, line in iter_lines(path):
        if first and line not in ("[", "[]"):
            yield from loads(read_regular_text(path, SMALL_FILE_BYTES))
            return
        first = False
        line = line.rstrip(",")
        if line not in ("[", "]", "[]"):
            yield loads(line)


# --- an `acp generate` output --------------------------------------------------------------


def _generate_page(folder: Path) -> _Page:
    from acp.score.bank import read_coco_file

    settings = _read_json(folder / "settings.json")
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
    data = read_coco_file(folder / "annotations.json", polygons=False)  # no mask is drawn
    images, annotations = data["images"], data["annotations"]
    names = {c["id"]: str(c.get("name")) for c in data["categories"] if isinstance(c, dict) and "id" in c}
    colour_of = {cid: _colour(k) for k, cid in enumerate(sorted(names, key=str))}
    colour_of_name = {names[cid]: colour for cid, colour in colour_of.items()}
    page = _Page("generate", f"acp dataset: {folder.resolve().name}", images=len(images))

    # Run settings and provenance.
    rows = [[key, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value]
            for key, value in settings.items()] if isinstance(settings, dict) else []
    last = summary.get("last_run") or {}
    if last:
        rows.append(["last run", f"{last.get('scenes')} scenes in {last.get('seconds')} s"])
        rows.append(["planner", json.dumps(last.get("planner"), ensure_ascii=False)])
    page.add("run", "Run settings and provenance",
             f"<p>Folder <code>{_e(folder.resolve())}</code>.</p>" + _table(["setting", "value"], rows))

    # Counts per category and per reason.
    kept_by = summary.get("instances_kept_by_category") or {}
    dropped_by = summary.get("instances_dropped_by_category") or {}
    most = max([*kept_by.values(), *dropped_by.values(), 1])
    category_rows = [[name, kept_by.get(name, 0), _bar(kept_by.get(name, 0), most), dropped_by.get(name, 0),
                      _bar(dropped_by.get(name, 0), most, dropped=True)]
                     for name in dict.fromkeys([*names.values(), *kept_by, *dropped_by])]
    reasons = summary.get("drop_reasons") or {}
    counts = _table(["", "count"], [["scenes finished", summary.get("scenes", "–")],
                                    ["images kept", summary.get("images_kept", len(images))],
                                    ["scenes dropped", summary.get("scenes_dropped", "–")],
                                    ["scenes failed", summary.get("scenes_failed", "–")],
                                    ["boxes (annotations)", len(annotations)]])
    page.add("counts", "Kept and dropped", counts
             + "<h3>Instances per category</h3>"
             + _table(["category", "kept", "", "dropped", ""], category_rows)
             + "<h3>Scenes dropped, per reason</h3>"
             + (_table(["reason", "scenes"], sorted(([r, n] for r, n in reasons.items()),
                                                     key=lambda x: -x[1]))
                if reasons else '<p class="note">No scene was dropped.</p>'))

    # Scores of every candidate against the kept ones; the best dropped candidates on the way.
    status: dict[str, str] = {}
    if (folder / "progress.jsonl").is_file():
        for _, record, _ in read_records(folder / "progress.jsonl"):
            if record is not None and record.get("status") != "kept":
                status[str(record.get("plan_id"))] = str(record.get("status"))
    histograms = {key: _Histogram("all candidates", "kept") for key in ("clis", "clis_l", "clis_i")}
    instance = _Histogram("all candidates", "kept")
    dropped: list[_Ranked] = []  # the best candidates of dropped plans
    candidates = folder / "candidates"
    if (folder / "scores.jsonl").is_file():
        for n, (_, record, _) in enumerate(read_records(folder / "scores.jsonl")):
            if record is None:
                continue
            kept = (bool(record.get("best")) and bool(record.get("kept"))
                    and str(record.get("plan_id")) not in status)
            for key, histogram in histograms.items():
                histogram.add("all candidates", record.get(key))
                if kept:
                    histogram.add("kept", record.get(key))
            for obj in record.get("objects") or []:
                if isinstance(obj, dict):
                    instance.add("all candidates", obj.get("clis_i"))
                    if kept and obj.get("kept"):
                        instance.add("kept", obj.get("clis_i"))
            clis = record.get("clis")
            if status.get(str(record.get("plan_id"))) == "dropped" and isinstance(clis, int | float):
                keys = ("plan_id", "index", "path", "clis", "clis_l", "clis_i", "reason")
                fields = {k: record.get(k) for k in keys}
                _keep_top(dropped, (float(clis), -n, fields), defaults.REPORT_EXTREMES)
    min_l = settings.get("min_clis_l") if settings.get("bank") else None
    page.add("scores", "Scores", _charts([
        (histograms["clis"], "CLIS of each candidate", None),
        (histograms["clis_l"], "CLIS-L (layout)", min_l),
        (histograms["clis_i"], "CLIS-I of each candidate", None),
        (instance, "CLIS-I of each instance", settings.get("min_clis_i")),
    ], {"all candidates": _ALL, "kept": _KEPT}) + ("" if settings.get("bank") else
        '<p class="note">No --bank: CLIS-L is not computed (a reference-free sanity score only).</p>'))

    # Thumbnails: a sample, the extremes, the category strips; only these images are opened.
    loader = _Images(folder / "images")
    sample = _sample(images, defaults.REPORT_CONTACT_SHEET, key=lambda i: i.get("id"))
    lowest = heapq.nsmallest(defaults.REPORT_EXTREMES, images, key=lambda i: _clis_of(i))
    wanted = {i.get("id") for i in (*sample, *lowest)}
    boxes_of: dict[Any, list[_Box]] = {}
    strips: dict[Any, list[_Ranked]] = {}
    strip_categories = sorted(names)[: defaults.REPORT_STRIP_CATEGORIES]
    shown_categories = set(strip_categories)
    for n, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            continue
        cid = annotation.get("category_id")
        if annotation.get("image_id") in wanted and _usable_box(annotation.get("bbox")):
            boxes_of.setdefault(annotation["image_id"], []).append(
                _Box(tuple(annotation["bbox"]), names.get(cid, str(cid)), colour_of.get(cid, _PALETTE[0])))
        if cid in shown_categories and _usable_box(annotation.get("bbox")):
            _keep_top(strips.setdefault(cid, []), (-_hash_key(annotation.get("id")), n, annotation),
                      defaults.REPORT_STRIP)
    by_id = {i.get("id"): i for i in (*sample, *lowest)}

    def thumb(image: dict[str, Any], size: int = 200) -> str | None:
        opened = loader.get(image.get("file_name"))
        if opened is None:
            return None
        page.thumbnails += 1
        uri = _thumbnail(opened, boxes_of.get(image.get("id"), []), size)
        acp_: dict[str, Any] = image["acp"] if isinstance(image.get("acp"), dict) else {}
        caption = f"{image.get('file_name')} · CLIS {_score(acp_.get('clis'))}"
        return _figure(uri, caption, str(acp_.get("caption") or ""))

    sheet = [f for f in (thumb(i) for i in sorted(sample, key=lambda i: str(i.get("id")))) if f]
    page.add("contact-sheet", f"Contact sheet: {len(sheet)} of {len(images)} kept images",
             f'<div class="grid" data-count="{len(sheet)}">{"".join(sheet)}</div>' + _problems(loader))

    low = [f for f in (thumb(by_id[i.get("id")], 256) for i in lowest) if f]
    best_dropped = []
    if candidates.is_dir() and dropped:
        plans = _plans_of(folder / "plans.jsonl", {d["plan_id"] for _, _, d in dropped})
        for _, _, record in _ranked(dropped):
            opened = loader.get(record.get("path"), root=candidates)
            if opened is None:
                continue
            plan = plans.get(record["plan_id"]) or {}
            boxes = [_Box((o["bbox"][0] * opened.width, o["bbox"][1] * opened.height,
                           o["bbox"][2] * opened.width, o["bbox"][3] * opened.height),
                          str(o.get("category")), colour_of_name.get(str(o.get("category")), _PALETTE[0]))
                     for o in plan.get("objects") or [] if _usable_box(o.get("bbox"))]
            page.thumbnails += 1
            best_dropped.append(_figure(_thumbnail(opened, boxes, 256),
                                        f"plan {record['plan_id']} #{record.get('index')} · CLIS "
                                        f"{_score(record.get('clis'))}", str(record.get("reason") or "")))
    if not candidates.is_dir():
        right = '<p class="note">Candidates were not kept (run with --keep-candidates to see them).</p>'
    elif not best_dropped:
        right = '<p class="note">No rendered candidate was dropped.</p>'
    else:
        right = f'<div class="grid">{"".join(best_dropped)}</div>'
    page.add("extremes", "Lowest-scoring kept images and best dropped candidates",
             f'<div class="pair"><div><h3>Lowest CLIS kept</h3><div class="grid">{"".join(low)}</div></div>'
             f'<div><h3>Best dropped candidates</h3>{right}</div></div>')

    page.add("categories", "Examples per category", _strips(
        strip_categories, names, strips, colour_of, loader, page, lambda a: a.get("image_id"),
        {i.get("id"): i.get("file_name") for i in images if isinstance(i, dict)},
        lambda a: "CLIS-I " + _score(a["acp"].get("clis_i") if isinstance(a.get("acp"), dict) else None)))
    return page


def _clis_of(image: Any) -> float:
    acp_ = image.get("acp") if isinstance(image, dict) else None
    value = acp_.get("clis") if isinstance(acp_, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.inf


def _usable_box(bbox: Any) -> bool:
    return (isinstance(bbox, list | tuple) and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            and bbox[2] > 0 and bbox[3] > 0)


def _plans_of(path: Path, ids: set[Any]) -> dict[Any, dict[str, Any]]:
    found: dict[Any, dict[str, Any]] = {}
    if path.is_file():
        for _, record, _ in read_records(path):
            if record is not None and record.get("id") in ids:
                found[record["id"]] = record
    return found


def _problems(loader: _Images) -> str:
    if not loader.problems:
        return ""
    items = "".join(f"<li>{_e(p)}</li>" for p in loader.problems)
    return f'<p class="note">Images that could not be shown:</p><ul>{items}</ul>'


_Ranked = tuple[float, int, dict[str, Any]]  # (rank, position, record) in a bounded heap


def _strips(categories: list[Any], names: dict[Any, str], strips: dict[Any, list[_Ranked]],
            colour_of: dict[Any, str], loader: _Images, page: _Page, image_of: Any,
            file_names: dict[Any, Any], score_of: Any) -> str:
    rows = []
    for cid in categories:
        figures = []
        for _, _, annotation in _ranked(strips.get(cid, [])):
            opened = loader.get(file_names.get(image_of(annotation)))
            if opened is None:
                continue
            page.thumbnails += 1
            crop = _crop(opened, tuple(annotation["bbox"]), colour_of.get(cid, _PALETTE[0]), 112)
            source = str(file_names.get(image_of(annotation)))
            figures.append(_figure(crop, f"{score_of(annotation)}", source))
        body = "".join(figures) or '<p class="note">no box</p>'
        rows.append(f"<h3>{_e(names.get(cid, cid))}</h3><div class=\"strip\">{body}</div>")
    note = (f'<p class="note">Strips for the first {len(categories)} of {len(names)} categories.</p>'
            if len(names) > len(categories) else "")
    return note + "".join(rows)


# --- an `acp score dataset` report ---------------------------------------------------------


def _score_summary(folder: Path) -> dict[str, Any] | None:
    try:
        summary = loads(read_regular_text(folder / "summary.json", SMALL_FILE_BYTES))
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and {"scored_images", "clip_model"} <= summary.keys():
        return summary
    return None


def _score_page(folder: Path) -> _Page:
    summary = _score_summary(folder) or {}
    filtered = summary.get("keep_above") is not None
    page = _Page("score", f"acp score dataset: {summary.get('annotations')}",
                 images=int(summary.get("images", 0)))
    run_keys = ("annotations", "images_dir", "clip_model", "bank", "keep_above", "removed_boxes")
    settings = [[k, json.dumps(summary.get(k), ensure_ascii=False)] for k in run_keys if k in summary]
    page.add("run", "Run settings and provenance",
             f"<p>Report folder <code>{_e(folder.resolve())}</code>.</p>"
             + _table(["setting", "value"], settings))

    series = ("all", "kept") if filtered else ("all",)
    histograms = {key: _Histogram(*series) for key in ("clis", "clis_l", "clis_i")}
    box_histogram = _Histogram(*series)
    kept_boxes: dict[str, int] = {}
    removed_boxes: dict[str, int] = {}
    sample: list[_Ranked] = []  # (-hash, position, image row): the smallest hashes
    lowest_kept: list[_Ranked] = []  # by -score
    best_removed: list[_Ranked] = []
    images_path, boxes_path = folder / "images.json", folder / "boxes.json"
    for n, row in enumerate(_json_array(images_path) if images_path.is_file() else ()):
        if not isinstance(row, dict):
            continue
        kept = bool(row.get("kept"))
        for key, histogram in histograms.items():
            histogram.add("all", row.get(key))
            if kept:
                histogram.add("kept", row.get(key))
        _keep_top(sample, (-_hash_key(row.get("id")), n, row), defaults.REPORT_CONTACT_SHEET)
        clis = row.get("clis")
        if isinstance(clis, int | float):
            if kept or not filtered:
                _keep_top(lowest_kept, (-float(clis), n, row), defaults.REPORT_EXTREMES)
            else:
                _keep_top(best_removed, (float(clis), n, row), defaults.REPORT_EXTREMES)
    categories = _read_json(folder / "categories.json") if (folder / "categories.json").is_file() else []
    strip_names = [str(c.get("category")) for c in categories if isinstance(c, dict)]
    strip_names = strip_names[: defaults.REPORT_STRIP_CATEGORIES]
    wanted = {row.get("id") for _, _, row in (*sample, *lowest_kept, *best_removed)}
    boxes_of: dict[Any, list[dict[str, Any]]] = {}
    strips: dict[Any, list[_Ranked]] = {}
    for n, row in enumerate(_json_array(boxes_path) if boxes_path.is_file() else ()):
        if not isinstance(row, dict):
            continue
        name = str(row.get("category"))
        box_histogram.add("all", row.get("clis_i"))
        if row.get("kept"):
            box_histogram.add("kept", row.get("clis_i"))
            kept_boxes[name] = kept_boxes.get(name, 0) + 1
        elif filtered:
            removed_boxes[name] = removed_boxes.get(name, 0) + 1
        if row.get("image_id") in wanted:
            boxes_of.setdefault(row.get("image_id"), []).append(row)
        if name in strip_names and _usable_box(row.get("bbox")):
            _keep_top(strips.setdefault(name, []), (-_hash_key(row.get("id")), n, row), defaults.REPORT_STRIP)

    counts = [["images", summary.get("images")], ["scored images", summary.get("scored_images")],
              ["failed images", summary.get("failed_images")], ["boxes", summary.get("boxes")],
              ["scored boxes", summary.get("scored_boxes")], ["failed boxes", summary.get("failed_boxes")]]
    for key in ("crowd_boxes", "kept_images", "kept_boxes", "ignored_boxes", "renumbered_annotations"):
        if summary.get(key) is not None:
            counts.append([key.replace("_", " "), summary[key]])
    threshold = f"below_{60:g}"
    headers = ["category", "boxes", "mean CLIS-I", "median", "10th pct", "share < 60"]
    if filtered:
        headers += ["kept", "removed"]
    rows = []
    for c in categories:
        if isinstance(c, dict):
            name = str(c.get("category"))
            row = [name, c.get("boxes"), c.get("mean"), c.get("median"), c.get("p10"), c.get(threshold)]
            if filtered:
                row += [kept_boxes.get(name, 0), removed_boxes.get(name, 0)]
            rows.append(row)
    failures_path = folder / "failures.json"
    failures = list(_first(_json_array(failures_path), 20)) if failures_path.is_file() else []
    failed = int(summary.get("failed_images") or 0) + int(summary.get("failed_boxes") or 0)
    failure_html = (_table(["item", "reason"], [[f.get("item"), f.get("reason")] for f in failures
                                                 if isinstance(f, dict)])
                    if failures else '<p class="note">No failures.</p>')
    page.add("counts", "Kept and dropped", _table(["", "count"], counts)
             + "<h3>Per category</h3>" + _table(headers, rows)
             + f"<h3>Failures (first {len(failures)} of {failed})</h3>"
             + failure_html)

    colours = {"all": _ALL, "kept": _KEPT} if filtered else {"all": _KEPT}
    keep = summary.get("keep_above")
    page.add("scores", "Scores", _charts([
        (histograms["clis"], "CLIS of each image", keep),
        (histograms["clis_l"], "CLIS-L (layout)", None),
        (histograms["clis_i"], "CLIS-I of each image", None),
        (box_histogram, "CLIS-I of each box", keep),
    ], colours))

    images_dir = summary.get("images_dir")
    loader = _Images(Path(images_dir) if isinstance(images_dir, str) else None)
    in_order = dict.fromkeys(strip_names + [str(b.get("category")) for bs in boxes_of.values() for b in bs])
    colour_of = {name: _colour(k) for k, name in enumerate(in_order)}

    def box_colour(box: dict[str, Any]) -> str:
        if filtered:
            return _KEPT if box.get("kept") else _DROPPED
        return colour_of.get(str(box.get("category")), _KEPT)

    def thumb(row: dict[str, Any], size: int = 200) -> str | None:
        opened = loader.get(row.get("file_name"))
        if opened is None:
            return None
        boxes = [_Box(tuple(b["bbox"]), f"{b.get('category')} {_score(b.get('clis_i'))}", box_colour(b))
                 for b in boxes_of.get(row.get("id"), []) if _usable_box(b.get("bbox"))]
        page.thumbnails += 1
        caption = f"{row.get('file_name')} · CLIS {_score(row.get('clis'))}"
        return _figure(_thumbnail(opened, boxes, size), caption, str(row.get("caption") or ""))

    no_folder = "" if loader.root else '<p class="note">The report does not name its images folder.</p>'
    sheet = [f for f in (thumb(r) for _, _, r in sorted(sample, key=lambda e: str(e[2].get("id")))) if f]
    legend = (f'<p>Boxes: <span style="color:{_KEPT}">kept</span>, <span style="color:{_DROPPED}">removed'
              "</span> in the filtered copy.</p>" if filtered else "")
    page.add("contact-sheet", f"Contact sheet: {len(sheet)} of {summary.get('scored_images')} scored images",
             legend + f'<div class="grid" data-count="{len(sheet)}">{"".join(sheet)}</div>'
             + no_folder + _problems(loader))
    low = [f for f in (thumb(r, 256) for _, _, r in _ranked(lowest_kept)) if f]
    high = [f for f in (thumb(r, 256) for _, _, r in _ranked(best_removed)) if f]
    right = (f'<div class="grid">{"".join(high)}</div>' if high else
             '<p class="note">No image was removed.</p>' if filtered else
             '<p class="note">No filtered copy (--keep-above) was made.</p>')
    page.add("extremes", "Lowest-scoring kept images and best removed images",
             f'<div class="pair"><div><h3>Lowest CLIS {"kept" if filtered else "scored"}</h3>'
             f'<div class="grid">{"".join(low)}</div></div><div><h3>Best removed</h3>{right}</div></div>')
    file_names = {r.get("id"): r.get("file_name") for _, _, r in (*sample, *lowest_kept, *best_removed)}
    file_names.update(_file_names(images_path, {r.get("image_id") for s in strips.values() for _, _, r in s}))
    page.add("categories", "Examples per category", _strips(
        strip_names, {n: n for n in strip_names}, strips, {n: colour_of.get(n, _KEPT) for n in strip_names},
        loader, page, lambda b: b.get("image_id"), file_names, lambda b: f"CLIS-I {_score(b.get('clis_i'))}"))
    return page


def _ranked(heap: list[_Ranked]) -> list[_Ranked]:
    """A heap of ``_keep_top`` from its first entry to its last."""
    return sorted(heap, key=lambda e: e[:2], reverse=True)


def _keep_top(heap: list[_Ranked], entry: _Ranked, count: int) -> None:
    """Keep the ``count`` largest entries (by their first items) in the min-heap ``heap``."""
    if len(heap) < count:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _first(items: Iterable[Any], count: int) -> Iterator[Any]:
    for n, item in enumerate(items):
        if n >= count:
            return
        yield item


def _file_names(images_path: Path, ids: set[Any]) -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    if ids and images_path.is_file():
        for row in _json_array(images_path):
            if isinstance(row, dict) and row.get("id") in ids:
                found[row["id"]] = row.get("file_name")
    return found
