"""``acp report FOLDER``: one static HTML page showing what a run made and what its filter did.

``FOLDER`` is an ``acp generate`` output or an ``acp score dataset`` report, read only through
``acp.runfolder`` (every record validated before use; see there what a bad file or record
costs). The page (``FOLDER/report.html`` by default) has, each as a ``<section>`` with an id:

- ``run``: the settings and provenance of the run, and the records left out as unreadable;
- ``counts``: images and boxes kept and dropped, per category (most first; the categories
  without any instance folded into one line) and per drop reason;
- ``scores``: histograms of CLIS, CLIS-L and CLIS-I (inline SVG), all candidates or images
  against the kept ones, with the thresholds; how CLIS-L was reached for each plan;
- ``verification``, only when the run or report was verified (``--verify``): per category the
  boxes verified and missing and the unplanned (generate) or unlabeled (score dataset)
  detections; for a score report the detector's settings and the label fidelity, AP and AP50
  overall and per category (``verification.json``); and the ``VERIFY_PAIRS`` least verified
  images, each twice side by side: its labels coloured by verdict, and the detector's boxes
  (``scores.jsonl`` or ``detections.json``) coloured by role. An unreadable
  ``verification.json`` is a note in the section, the rest of the page stands;
- ``contact-sheet``: a sample of kept images with their boxes, labels and (``--masks``) masks;
- ``extremes``: the lowest-scoring kept images beside the best dropped candidates (generate,
  where candidates were kept) or the best removed images (score dataset, with ``--keep-above``);
- ``categories``: a strip of example boxes per category, for the categories with most instances.

Self-contained: thumbnails are embedded as JPEG data URIs, styles inline, no script, nothing
fetched; every text from the folder is escaped. Bounded whatever the dataset's size: the page
holds at most ``REPORT_CONTACT_SHEET + 2 REPORT_EXTREMES + REPORT_STRIP x REPORT_STRIP_CATEGORIES``
thumbnails (``acp.defaults``), and ``2 VERIFY_PAIRS`` more when verified, chosen in one
streaming pass each over the records (a sample by a hash of the image id, so the same dataset
gives the same page), and only those images are opened; at most ``CATEGORY_ROWS`` category
rows and ``MASK_PIXELS`` decoded mask pixels, ``DETECTIONS_DRAWN`` detections on a panel, and
verdicts counted for ``VERDICT_NAMES`` category names (the rest together). The records are
read once, line by line where they are JSON Lines (``detections.json``: only the rows of the
images shown are validated); the COCO file is parsed whole, as every reader of it does.
Labels are drawn with ``acp.fonts`` (any script the machine has a
font for).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import acp
from acp import defaults
from acp.atomic import write_atomic
from acp.errors import InputError
from acp.fonts import missing_note
from acp.images import read_rgb
from acp.paths import UnsafePathError, inside
from acp.rle import decode_rle
from acp.runfolder import (
    REPORT,
    BoxRow,
    CocoAnnotation,
    CocoImage,
    ImageRow,
    RunFolder,
    ScoreReportFolder,
    Skipped,
)

if TYPE_CHECKING:
    from PIL.Image import Image

REPORT_NAME = REPORT
BINS = 50  # histogram bins over 0-100
CATEGORY_ROWS = 100  # rows of the per-category table; the rest is folded into one line
NAMES_SHOWN = 30  # names listed in a folded line
# Masks decoded for one page, in pixels (a 512 x 512 mask is 0.26 M): past this, boxes only.
MASK_PIXELS = 100_000_000
TEXT_SHOWN = 300  # characters of one value from the folder shown on the page
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


def write_report(folder: Path, output: Path | None = None,
                 status: Callable[[str], None] | None = None) -> ReportSummary:
    """Build the page for ``folder`` (see the module docstring) and write it atomically.
    ``status`` is told what is being done, a line per step (reading, drawing)."""
    folder = Path(folder)
    output = Path(output) if output is not None else folder / REPORT_NAME
    say = status or (lambda _line: None)
    if RunFolder(folder).is_run():
        page = _generate_page(RunFolder(folder), say)
    elif ScoreReportFolder(folder).is_report():
        page = _score_page(ScoreReportFolder(folder), say)
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

    def append(self, section_id: str, body: str) -> None:
        """More of section ``section_id``'s body, at its end."""
        self.sections = [(i, h, b + body if i == section_id else b) for i, h, b in self.sections]

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


def _short(value: Any, limit: int = TEXT_SHOWN) -> str:
    """A value from the folder as one line of at most ``limit`` characters (JSON unless text)."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)
        except (ValueError, RecursionError):
            value = "(not shown: nested too deeply)"
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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

    def add(self, series: str, value: float | None) -> None:
        """Count ``value``, a score validated to lie in 0-100 (None: no score)."""
        if value is not None:
            self.counts[series][min(int(value * BINS / 100), BINS - 1)] += 1

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
class ThumbnailBox:
    """A box drawn on a thumbnail, with its label (any script: ``acp.fonts``) and mask."""

    bbox: tuple[float, float, float, float]  # pixel x, y, w, h (may reach far outside the image)
    label: str
    colour: str
    mask: Any = None  # a COCO segmentation, drawn when it is an RLE of the image's size


class MaskBudget:
    """Decodes masks for a page until ``MASK_PIXELS`` pixels have been decoded."""

    def __init__(self) -> None:
        self.left = MASK_PIXELS
        self.skipped = 0  # masks not drawn: over the budget, or not an RLE of the image's size

    def decode(self, segmentation: Any, height: int, width: int) -> np.ndarray | None:
        if height * width > self.left:
            self.skipped += 1
            return None
        mask = decode_rle(segmentation, height, width)
        if mask is None:
            self.skipped += 1
            return None
        self.left -= height * width
        return mask


def _clipped(box: tuple[float, float, float, float], width: float, height: float
             ) -> tuple[float, float, float, float] | None:
    """``box`` (x, y, w, h) as corners inside ``width x height``; None when nothing is inside."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def thumbnail(image: Image, boxes: list[ThumbnailBox], size: int, masks: MaskBudget | None = None) -> str:
    """``image`` scaled to fit ``size`` with its boxes (and masks) drawn, as a JPEG data URI."""
    from PIL import Image as PILImage
    from PIL import ImageColor, ImageDraw

    from acp.fonts import label_font

    scale = min(size / image.width, size / image.height)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    if masks is not None:
        for box in boxes:
            mask = masks.decode(box.mask, image.height, image.width) if box.mask is not None else None
            if mask is not None:
                alpha = PILImage.fromarray(mask.astype(np.uint8) * 110)
                alpha = alpha.resize(shown.size, PILImage.Resampling.NEAREST)
                shown.paste(PILImage.new("RGB", shown.size, ImageColor.getrgb(box.colour)), (0, 0), alpha)
    draw = ImageDraw.Draw(shown)
    font = label_font(11)
    for box in boxes:
        corners = _clipped(box.bbox, image.width, image.height)
        if corners is None:
            continue
        x0, y0, x1, y1 = (v * scale for v in corners)
        draw.rectangle([x0, y0, x1, y1], outline=box.colour, width=2)
        if box.label:
            left, top, right, bottom = font.bbox((x0 + 2, y0 + 1), box.label)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=box.colour)
            font.draw(draw, (x0 + 2, y0 + 1), box.label, fill="white")
    return _jpeg(shown)


def _crop(image: Image, bbox: tuple[float, float, float, float], colour: str, size: int) -> str:
    """The box with a margin of a quarter of its size around it, scaled to fit ``size``."""
    corners = _clipped(bbox, image.width, image.height)
    if corners is None:
        return thumbnail(image, [], size)
    x0, y0, x1, y1 = corners
    margin = 0.25 * max(x1 - x0, y1 - y0)
    left, top = max(0, int(x0 - margin)), max(0, int(y0 - margin))
    right = min(image.width, math.ceil(x1 + margin))
    bottom = min(image.height, math.ceil(y1 + margin))
    part = image.crop((left, top, right, bottom))
    return thumbnail(part, [ThumbnailBox((x0 - left, y0 - top, x1 - x0, y1 - y0), "", colour)], size)


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
            image: Image | None = None
            try:
                path = inside(root, name, what="file_name")
                if path.exists() and not path.is_file():  # a FIFO or a device could block or never end
                    reason: str | None = f"{_short(name, 100)}: not a regular file"
                else:
                    image, reason = read_rgb(path)
            except UnsafePathError as error:
                reason = str(error)
            except OSError as error:  # a name too long for the file system, ...
                reason = f"{_short(name, 100)}: {error.strerror or error}"
            if image is None and len(self.problems) < 20:
                self.problems.append(_short(reason))
            self._cache[key] = image
            if len(self._cache) > 64:  # only a handful is drawn at a time
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


def _figure(uri: str, caption: str, title: str = "") -> str:
    tip = f' title="{_e(_short(title))}"' if title else ""
    return (f'<figure><img src="{uri}" alt="{_e(_short(caption))}"{tip}>'
            f"<figcaption>{_e(_short(caption))}</figcaption></figure>")


def _hash_key(value: Any) -> int:
    return int.from_bytes(hashlib.sha256(str(value).encode("utf-8")).digest()[:8], "big")


def _colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _skipped_note(skipped: Skipped, masks: MaskBudget | None = None) -> str:
    """What the page left out: unreadable records, masks not drawn, labels without a font."""
    parts = []
    if skipped.total:
        counts = ", ".join(f"{_e(name)}: {n}" for name, n in skipped.counts.items())
        examples = "".join(f"<li>{_e(line)}</li>" for line in skipped.examples)
        parts.append(f'<p class="note">Records left out as unreadable ({counts}); the first:</p>'
                     f"<ul>{examples}</ul>")
    if masks is not None and masks.skipped:
        parts.append(f'<p class="note">{masks.skipped} masks not drawn (not an RLE of their image\'s '
                     f"size, or past the page's {MASK_PIXELS // 1_000_000} M mask pixels).</p>")
    if (note := missing_note()) is not None:
        parts.append(f'<p class="note">Labels: {_e(note)}.</p>')
    return "".join(parts)


def _names(names: Iterable[str], limit: int = NAMES_SHOWN) -> str:
    shown: list[str] = []
    more = 0
    for name in names:
        if len(shown) < limit:
            shown.append(_short(name, 60))
        else:
            more += 1
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _category_table(counts: dict[str, tuple[int, int]], headers: tuple[str, str]) -> str:
    """Categories by instances, most first; those without any folded into one line, and past
    ``CATEGORY_ROWS`` the rest into another."""
    ranked = sorted(counts.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    used = [(name, kept, dropped) for name, (kept, dropped) in ranked if kept + dropped]
    empty = [name for name, (kept, dropped) in ranked if not kept + dropped]
    most = max([1, *(max(k, d) for _, k, d in used)])
    rows = [[name, kept, _bar(kept, most), dropped, _bar(dropped, most, dropped=True)]
            for name, kept, dropped in used[:CATEGORY_ROWS]]
    notes = []
    if len(used) > CATEGORY_ROWS:
        rest = used[CATEGORY_ROWS:]
        notes.append(f"{len(rest)} more categories with {sum(k for _, k, _ in rest)} {headers[0]} and "
                     f"{sum(d for _, _, d in rest)} {headers[1]} instances: {_names(n for n, _, _ in rest)}.")
    if empty:
        notes.append(f"{len(empty)} {'category' if len(empty) == 1 else 'categories'} without any "
                     f"instance: {_names(empty)}.")
    table = _table(["category", headers[0], "", headers[1], ""], rows) if rows else \
        '<p class="note">No instance.</p>'
    return table + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


# --- verification (`--verify`) --------------------------------------------------------------

VERIFY_PAIRS = defaults.REPORT_EXTREMES  # images shown with their labels beside the detections
DETECTIONS_DRAWN = 30  # detections drawn on one panel, the most confident first
VERDICT_NAMES = 100_000  # category names counted one by one; the rest are counted together
OTHER = "(other categories)"
_VERIFIED, _MISSING, _UNPLANNED, _PART, _WEAK = "#2ca02c", "#d62728", "#d62728", "#4363d8", "#9a9a9a"
_VERDICT_COLOURS = {"verified": _VERIFIED, "refined": _VERIFIED, "missing": _MISSING}
_ROLE_COLOURS = {"match": _VERIFIED, "part": _PART, "unplanned": _UNPLANNED, "weak": _WEAK}


class _Verdicts:
    """Verified, missing and unplanned (or unlabeled) boxes per category, for a few series (the
    kept images, every candidate); at most ``VERDICT_NAMES`` names, the rest under ``OTHER``."""

    KINDS = ("verified", "missing", "unplanned")

    def __init__(self, series: tuple[str, ...]) -> None:
        self.series = series
        self.counts: dict[str, dict[str, Counter[str]]] = {}  # category -> series -> kind -> n
        self.seen = False

    def add(self, series: str, category: str, kind: str) -> None:
        key = _short(category, TEXT_SHOWN)
        if key not in self.counts and len(self.counts) >= VERDICT_NAMES:
            key = OTHER
        self.counts.setdefault(key, {}).setdefault(series, Counter())[kind] += 1
        self.seen = True

    def add_candidate(self, series: str, record: Any) -> None:
        """A ``CandidateScore``'s verdicts (nothing when it was not verified)."""
        for obj in record.objects:
            if obj.verification is not None:
                self.add(series, obj.category, "missing" if obj.verification == "missing" else "verified")
        for found in record.detections:
            if found.role == "unplanned":
                self.add(series, found.category, "unplanned")

    def total(self, name: str) -> int:
        """The planned boxes of category ``name`` in the last series."""
        counts = self.counts[name].get(self.series[-1], Counter())
        return counts["verified"] + counts["missing"]

    def table(self, third: str) -> str:
        """Categories by planned boxes (the last series'), most first; past ``CATEGORY_ROWS``
        folded into one line."""
        ranked = sorted(self.counts, key=lambda name: (-self.total(name), name))
        headers = ["category"] + [f"{series}: {kind if kind != 'unplanned' else third}"
                                  for series in self.series for kind in self.KINDS]
        rows = [[name] + [self.counts[name].get(series, Counter())[kind] for series in self.series
                          for kind in self.KINDS] for name in ranked[:CATEGORY_ROWS]]
        rest = ranked[CATEGORY_ROWS:]
        note = (f'<p class="note">{len(rest)} more categories with {sum(self.total(n) for n in rest)} '
                f"planned boxes: {_e(_names(rest))}.</p>" if rest else "")
        return _table(headers, rows) + note


def _pair(image: Image, labels: list[tuple[str, tuple[float, float, float, float], str | None]],
          found: list[tuple[str, float, tuple[float, float, float, float], str]], page: _Page,
          caption: str, title: str, size: int = 180) -> str:
    """One image twice, side by side: its labels coloured by verdict, and the detector's boxes
    (the ``DETECTIONS_DRAWN`` most confident) coloured by role."""
    left = [ThumbnailBox(box, _short(category, 40), _VERDICT_COLOURS.get(verdict or "", _WEAK))
            for category, box, verdict in labels]
    best = heapq.nsmallest(DETECTIONS_DRAWN, range(len(found)), key=lambda k: (-found[k][1], k))
    right = [ThumbnailBox(found[k][2], "" if found[k][3] == "weak" else f"{_short(found[k][0], 40)} "
                          f"{found[k][1]:.2f}", _ROLE_COLOURS.get(found[k][3], _WEAK)) for k in best]
    more = f" · {len(found) - len(best)} weaker detections not drawn" if len(found) > len(best) else ""
    page.thumbnails += 2
    panels = "".join(f'<img src="{thumbnail(image, boxes, size)}" alt="{alt}">'
                     for boxes, alt in ((left, "labels"), (right, "detections")))
    tip = f' title="{_e(_short(title))}"' if title else ""
    return (f'<figure{tip}><div style="display:grid;grid-template-columns:1fr 1fr;gap:3px">{panels}</div>'
            f"<figcaption>{_e(_short(caption + more))}</figcaption></figure>")


def _pairs_html(pairs: list[str], what: str) -> str:
    legend = (f'<h3>Labels and detections, side by side: the {len(pairs)} least verified {what}</h3>'
              f'<p>Left, the labels: <span style="color:{_VERIFIED}">verified</span>, '
              f'<span style="color:{_MISSING}">missing</span>. Right, the detections: '
              f'<span style="color:{_VERIFIED}">match</span>, <span style="color:{_UNPLANNED}">unplanned or '
              f'unlabeled</span>, <span style="color:{_PART}">part of a verified object</span>, '
              f'<span style="color:{_WEAK}">weak</span> (under the unplanned-instance threshold). Ranked by '
              "the verification term, lowest first.</p>")
    if not pairs:
        return legend + '<p class="note">No verified image to show.</p>'
    grid = '<div class="grid" style="grid-template-columns:repeat(auto-fill,minmax(360px,1fr))">'
    return legend + grid + "".join(pairs) + "</div>"


# --- an `acp generate` output --------------------------------------------------------------

# How a plan's CLIS-L was reached (``clis_l_method`` of its records, acp.score.layout), in words
# that name the --clis-l-method option it belongs to.
_LAYOUT_METHODS = {
    "density": "v2: densities learned from the bank",
    "pairs": "paper: the published pair formula",
    "priors": "the category's boxes in the bank (no pair of these categories there)",
    "sanity": "reference-free sanity check (no bank, or none of the categories in it)",
    "degenerate": "a degenerate box (score 0)",
    "empty": "no object (score 0)",
}


def _generate_page(run: RunFolder, say: Callable[[str], None]) -> _Page:
    settings = run.settings()
    summary = run.summary()
    say(f"reading {run.annotations_path} ({run.annotations_path.stat().st_size / 1e6:.1f} MB)")
    coco = run.coco()
    names: dict[Any, str] = {}
    for category in coco.categories():
        names.setdefault(category.id, category.name)
    colour_of = {cid: _colour(k) for k, cid in enumerate(sorted(names, key=str))}
    colour_of_name = {names[cid]: colour for cid, colour in colour_of.items()}
    page = _Page("generate", f"acp dataset: {run.root.resolve().name}", images=coco.image_count)
    kept_by = summary.instances_kept_by_category if summary else {}
    dropped_by = summary.instances_dropped_by_category if summary else {}

    # Run settings and provenance.
    rows: list[list[Any]] = []
    values = settings.values if settings else {}
    concepts = list(dict.fromkeys([*kept_by, *dropped_by])) or list(dict.fromkeys(names.values()))
    for key, value in values.items():
        if key == "concepts":
            fingerprint = f" (fingerprint {value[:12]}…)" if isinstance(value, str) else ""
            rows.append(["concepts", f"{len(concepts)}: {_names(concepts)}{fingerprint}"])
        elif key != "clis_l_method":
            rows.append([key, _short(value)])
    if settings is not None:
        method = settings.clis_l_method
        default = " (the default)" if method == defaults.CLIS_L_METHOD else ""
        rows.append(["clis_l_method", method + default])
    last = summary.last_run if summary else None
    if last is not None:
        scenes = "–" if last.scenes is None else last.scenes
        seconds = "–" if last.seconds is None else f"{last.seconds:g}"
        rows.append(["last run", f"{scenes} scenes in {seconds} s"])
        if last.planner is not None:
            rows.append(["last run: planner", last.planner.line()])
    page.add("run", "Run settings and provenance",
             f"<p>Folder <code>{_e(run.root.resolve())}</code>.</p>" + _table(["setting", "value"], rows))

    # Counts per category and per reason.
    by_name: dict[str, tuple[int, int]] = {name: (0, 0) for name in names.values()}
    for name in dict.fromkeys([*kept_by, *dropped_by]):
        by_name[name] = (kept_by.get(name, 0), dropped_by.get(name, 0))
    reasons = summary.drop_reasons if summary else {}
    def count(key: str) -> int | str:
        value = getattr(summary, key) if summary is not None else None
        return "–" if value is None else value

    images_kept = count("images_kept")
    counts = _table(["", "count"], [
        ["scenes finished", count("scenes")],
        ["images kept", coco.image_count if images_kept == "–" else images_kept],
        ["scenes dropped", count("scenes_dropped")], ["scenes failed", count("scenes_failed")],
        ["boxes (annotations)", coco.annotation_count]])
    page.add("counts", "Kept and dropped", counts
             + "<h3>Instances per category</h3>" + _category_table(by_name, ("kept", "dropped"))
             + "<h3>Scenes dropped, per reason</h3>"
             + (_table(["reason", "scenes"], sorted(([_short(r), n] for r, n in reasons.items()),
                                                     key=lambda x: -x[1]))
                if reasons else '<p class="note">No scene was dropped.</p>'))

    # Scores of every candidate against the kept ones; the best dropped candidates on the way.
    say(f"reading {run.progress_path.name} and {run.scores_path.name}")
    status: dict[str, str] = {}
    methods: Counter[str] = Counter()
    for result in run.progress():
        if result.status != "kept":
            status[result.plan_id] = result.status
        if result.clis_l_method is not None:
            methods[result.clis_l_method if result.clis_l_method in _LAYOUT_METHODS else "other"] += 1
    histograms = {key: _Histogram("all candidates", "kept") for key in ("clis", "clis_l", "clis_i")}
    instance = _Histogram("all candidates", "kept")
    dropped: list[_Ranked] = []  # the best candidates of dropped plans
    verdicts = _Verdicts(("kept images", "all candidates"))
    least_verified: list[_Ranked] = []  # (-verification, -position, record): kept, least verified
    for n, record in enumerate(run.scores()):
        kept = record.best and record.kept and record.plan_id not in status
        for series in ("kept images", "all candidates") if kept else ("all candidates",):
            verdicts.add_candidate(series, record)
        if kept and record.verification is not None:
            _keep_top(least_verified, (-record.verification, -n, record), VERIFY_PAIRS)
        for key, histogram in histograms.items():
            histogram.add("all candidates", getattr(record, key))
            if kept:
                histogram.add("kept", getattr(record, key))
        for obj in record.objects:
            instance.add("all candidates", obj.clis_i)
            if kept and obj.kept:
                instance.add("kept", obj.clis_i)
        if status.get(record.plan_id) == "dropped":
            _keep_top(dropped, (record.clis, -n, record), defaults.REPORT_EXTREMES)
    bank = settings is not None and bool(settings.bank)
    min_l = settings.min_clis_l if settings is not None and bank else None
    method_rows = [[_LAYOUT_METHODS.get(m, "another method"), k] for m, k in methods.most_common()]
    page.add("scores", "Scores", _charts([
        (histograms["clis"], "CLIS of each candidate", None),
        (histograms["clis_l"], "CLIS-L (layout)", min_l),
        (histograms["clis_i"], "CLIS-I of each candidate", None),
        (instance, "CLIS-I of each instance", settings.min_clis_i if settings else None),
    ], {"all candidates": _ALL, "kept": _KEPT}) + ("" if bank else
        '<p class="note">No --bank: CLIS-L is not computed (a reference-free sanity score only).</p>')
        + ("<h3>How CLIS-L was reached, per plan</h3>" + _table(["method", "plans"], method_rows)
           if method_rows else ""))
    verified = verdicts.seen or bool(values.get("detector_model"))
    if verified:
        detector = _short(values.get("detector_model", "–"), 100)
        page.add("verification", "Verification", (
            f"<p>Every candidate's planned boxes checked by the detector <code>{_e(detector)}</code>: "
            "<b>verified</b>, a detection of its category overlaps the box; <b>missing</b>, none does; "
            "<b>unplanned</b>, a confident detection of a scene category that no planned box matches. "
            "Kept images: the kept candidate of each kept plan.</p>")
            + (verdicts.table("unplanned") if verdicts.seen else
               '<p class="note">No candidate was verified yet.</p>'))
    verify_plans = {entry[2].plan_id: entry[2] for entry in least_verified}
    verify_images: dict[str, CocoImage] = {}

    # Thumbnails: a sample, the extremes, the category strips; only these images are opened.
    sample: list[_Ranked] = []  # (-hash, -position, image): the smallest hashes
    lowest: list[_Ranked] = []  # (-clis, -position, image): the lowest scores
    for n, image in enumerate(coco.images()):
        _keep_top(sample, (-_hash_key(image.id), -n, image), defaults.REPORT_CONTACT_SHEET)
        clis = image.acp.clis if image.acp is not None and image.acp.clis is not None else math.inf
        _keep_top(lowest, (-clis, -n, image), defaults.REPORT_EXTREMES)
        plan_id = image.acp.plan_id if image.acp is not None else None
        if plan_id is not None and plan_id in verify_plans and plan_id not in verify_images:
            verify_images[plan_id] = image
    wanted = {entry[2].id for entry in (*sample, *lowest)}
    file_names: dict[Any, str] = {entry[2].id: entry[2].file_name for entry in (*sample, *lowest)}
    boxes_of: dict[Any, list[ThumbnailBox]] = {}
    strips: dict[Any, list[_Ranked]] = {}
    kept_count = {cid: kept_by.get(name, 0) for cid, name in names.items()}
    strip_categories = sorted(names, key=lambda c: (-kept_count[c], str(c)))
    strip_categories = strip_categories[: defaults.REPORT_STRIP_CATEGORIES]
    shown_categories = set(strip_categories)
    for n, annotation in enumerate(coco.annotations()):
        cid = annotation.category_id
        box = tuple(annotation.bbox)
        if annotation.image_id in wanted:
            boxes_of.setdefault(annotation.image_id, []).append(
                ThumbnailBox(box, names.get(cid, str(cid)), colour_of.get(cid, _PALETTE[0]),  # type: ignore[arg-type]
                     annotation.segmentation))
        if cid in shown_categories:
            _keep_top(strips.setdefault(cid, []), (-_hash_key(annotation.id), -n, annotation),
                      defaults.REPORT_STRIP)
    strip_images = {a.image_id for heap in strips.values() for _, _, a in heap} - file_names.keys()
    if strip_images:
        file_names.update({i.id: i.file_name for i in coco.images(again=True) if i.id in strip_images})

    loader = _Images(run.images_dir)
    masks = MaskBudget()
    most = len(sample) + len(lowest) + sum(map(len, strips.values())) + len(dropped)
    say(f"drawing up to {most} thumbnails")

    def thumb(image: CocoImage, size: int = 200) -> str | None:
        opened = loader.get(image.file_name)
        if opened is None:
            return None
        page.thumbnails += 1
        uri = thumbnail(opened, boxes_of.get(image.id, []), size, masks)
        provenance = image.acp
        caption = f"{image.file_name} · CLIS {_score(provenance.clis if provenance else None)}"
        return _figure(uri, caption, (provenance.caption if provenance else None) or "")

    sheet = [f for f in (thumb(e[2]) for e in sorted(sample, key=lambda e: str(e[2].id))) if f]
    page.add("contact-sheet", f"Contact sheet: {len(sheet)} of {coco.image_count} kept images",
             f'<div class="grid" data-count="{len(sheet)}">{"".join(sheet)}</div>' + _problems(loader))

    low = [f for f in (thumb(e[2], 256) for e in _ranked(lowest)) if f]
    best_dropped = []
    candidates = run.candidates_dir
    if candidates.is_dir() and dropped:
        plans = {plan.id: plan for plan in run.plans(ids={e[2].plan_id for e in dropped})}
        for _, _, record in _ranked(dropped):
            opened = loader.get(record.path, root=candidates) if record.path is not None else None
            if opened is None:
                continue
            plan = plans.get(record.plan_id)
            boxes = [ThumbnailBox((o.bbox[0] * opened.width, o.bbox[1] * opened.height,
                           o.bbox[2] * opened.width, o.bbox[3] * opened.height),
                          o.category, colour_of_name.get(o.category, _PALETTE[0]))
                     for o in (plan.objects if plan else [])]
            page.thumbnails += 1
            best_dropped.append(_figure(thumbnail(opened, boxes, 256),
                                        f"plan {record.plan_id} #{record.index} · CLIS {_score(record.clis)}",
                                        record.reason or ""))
    if not candidates.is_dir():
        right = '<p class="note">Candidates were not kept (run with --keep-candidates to see them).</p>'
    elif not best_dropped:
        right = '<p class="note">No rendered candidate was dropped.</p>'
    else:
        right = f'<div class="grid">{"".join(best_dropped)}</div>'
    page.add("extremes", "Lowest-scoring kept images and best dropped candidates",
             f'<div class="pair"><div><h3>Lowest CLIS kept</h3><div class="grid">{"".join(low)}</div></div>'
             f'<div><h3>Best dropped candidates</h3>{right}</div></div>')

    def strip_score(annotation: CocoAnnotation) -> str:
        return "CLIS-I " + _score(annotation.acp.clis_i if annotation.acp else None)

    page.add("categories", "Examples per category", _strips(
        strip_categories, names, strips, colour_of, loader, page, file_names, strip_score))
    if verified:
        planned_by = {plan.id: plan for plan in run.plans(ids=set(verify_plans))} if verify_plans else {}
        pairs = []
        for _, _, record in _ranked(least_verified):
            shown = verify_images.get(record.plan_id)
            opened = loader.get(shown.file_name) if shown is not None else None
            if shown is None or opened is None:
                continue
            plan = planned_by.get(record.plan_id)
            verdict_of = {o.id: o.verification for o in record.objects}
            width, height = opened.size
            planned = [(o.category, (o.bbox[0] * width, o.bbox[1] * height, o.bbox[2] * width,
                                     o.bbox[3] * height), verdict_of.get(o.id))
                       for o in (plan.objects if plan is not None else [])]
            found = [(d.category, d.score, tuple(d.bbox), d.role) for d in record.detections]
            note = "" if plan is not None else " · plan not found"
            pairs.append(_pair(opened, planned, found, page,
                               f"{shown.file_name} · verification {_score(record.verification)}{note}",
                               shown.acp.caption if shown.acp is not None and shown.acp.caption else ""))
        page.append("verification", _pairs_html(pairs, "kept images"))
    page.append("run", _skipped_note(run.skipped, masks))
    return page


def _problems(loader: _Images) -> str:
    if not loader.problems:
        return ""
    items = "".join(f"<li>{_e(p)}</li>" for p in loader.problems)
    return f'<p class="note">Images that could not be shown:</p><ul>{items}</ul>'


_Ranked = tuple[float, int, Any]  # (rank, -position, record) in a bounded heap


def _strips(categories: list[Any], names: dict[Any, str], strips: dict[Any, list[_Ranked]],
            colour_of: dict[Any, str], loader: _Images, page: _Page, file_names: dict[Any, Any],
            score_of: Callable[[Any], str]) -> str:
    rows = []
    for cid in categories:
        figures = []
        for _, _, box in _ranked(strips.get(cid, [])):
            source = file_names.get(box.image_id)
            opened = loader.get(source) if source is not None else None
            if opened is None:
                continue
            page.thumbnails += 1
            crop = _crop(opened, tuple(box.bbox), colour_of.get(cid, _PALETTE[0]), 112)  # type: ignore[arg-type]
            figures.append(_figure(crop, score_of(box), str(source)))
        body = "".join(figures) or '<p class="note">no box</p>'
        rows.append(f"<h3>{_e(_short(names.get(cid, cid), 100))}</h3><div class=\"strip\">{body}</div>")
    note = (f'<p class="note">Strips for the {len(categories)} of {len(names)} categories with most '
            "instances.</p>" if len(names) > len(categories) else "")
    return note + "".join(rows)


# --- an `acp score dataset` report ---------------------------------------------------------


def _score_page(report: ScoreReportFolder, say: Callable[[str], None]) -> _Page:
    summary = report.summary()
    filtered = summary.keep_above is not None
    page = _Page("score", f"acp score dataset: {_short(summary.annotations, 100)}",
                 images=summary.images or 0)
    settings = [[k, _short(getattr(summary, k))] for k in ("annotations", "images_dir", "clip_model", "bank",
                                                         "keep_above", "removed_boxes")]
    page.add("run", "Run settings and provenance",
             f"<p>Report folder <code>{_e(report.root.resolve())}</code>.</p>"
             + _table(["setting", "value"], settings))

    say(f"reading {report.images_path.name}")
    series = ("all", "kept") if filtered else ("all",)
    histograms = {key: _Histogram(*series) for key in ("clis", "clis_l", "clis_i")}
    box_histogram = _Histogram(*series)
    kept_boxes: Counter[str] = Counter()
    removed_boxes: Counter[str] = Counter()
    sample: list[_Ranked] = []  # (-hash, -position, image row): the smallest hashes
    lowest_kept: list[_Ranked] = []  # by -score
    best_removed: list[_Ranked] = []
    least_verified: list[_Ranked] = []  # (-verification, -position, image row)
    for n, row in enumerate(report.images()):
        for key, histogram in histograms.items():
            histogram.add("all", getattr(row, key))
            if row.kept:
                histogram.add("kept", getattr(row, key))
        _keep_top(sample, (-_hash_key(row.id), -n, row), defaults.REPORT_CONTACT_SHEET)
        if row.clis is not None:
            if row.kept or not filtered:
                _keep_top(lowest_kept, (-row.clis, -n, row), defaults.REPORT_EXTREMES)
            else:
                _keep_top(best_removed, (row.clis, -n, row), defaults.REPORT_EXTREMES)
        if row.verification is not None:
            _keep_top(least_verified, (-row.verification, -n, row), VERIFY_PAIRS)
    categories = report.categories()
    ranked_categories = sorted(categories, key=lambda c: (-c.boxes, c.category))
    strip_names = [c.category for c in ranked_categories][: defaults.REPORT_STRIP_CATEGORIES]
    wanted = {row.id for _, _, row in (*sample, *lowest_kept, *best_removed, *least_verified)}
    boxes_of: dict[Any, list[BoxRow]] = {}
    strips: dict[Any, list[_Ranked]] = {}
    say(f"reading {report.boxes_path.name}")
    for n, box in enumerate(report.boxes()):
        box_histogram.add("all", box.clis_i)
        if box.kept:
            box_histogram.add("kept", box.clis_i)
            kept_boxes[box.category] += 1
        elif filtered:
            removed_boxes[box.category] += 1
        if box.image_id in wanted:
            boxes_of.setdefault(box.image_id, []).append(box)
        if box.category in strip_names:
            _keep_top(strips.setdefault(box.category, []), (-_hash_key(box.id), -n, box),
                      defaults.REPORT_STRIP)

    counts: list[list[Any]] = [["images", summary.images], ["scored images", summary.scored_images],
              ["failed images", summary.failed_images], ["boxes", summary.boxes],
              ["scored boxes", summary.scored_boxes], ["failed boxes", summary.failed_boxes]]
    for key in ("crowd_boxes", "kept_images", "kept_boxes", "ignored_boxes", "renumbered_annotations"):
        if getattr(summary, key) is not None:
            counts.append([key.replace("_", " "), getattr(summary, key)])
    headers = ["category", "boxes", "mean CLIS-I", "median", "10th pct", "share < 60"]
    if filtered:
        headers += ["kept", "removed"]
    rows = []
    for c in ranked_categories[:CATEGORY_ROWS]:
        cells: list[Any] = [c.category, c.boxes, c.mean, c.median, c.p10, c.below]
        if filtered:
            cells += [kept_boxes[c.category], removed_boxes[c.category]]
        rows.append(["–" if v is None else v for v in cells])
    folded = ranked_categories[CATEGORY_ROWS:]
    more = (f'<p class="note">{len(folded)} more categories with {sum(c.boxes for c in folded)} boxes: '
            f"{_e(_names(c.category for c in folded))}.</p>" if folded else "")
    failures = list(_first(report.failures(), 20))
    failed = (summary.failed_images or 0) + (summary.failed_boxes or 0)
    failure_html = (_table(["item", "reason"], [[_short(f.item), _short(f.reason)] for f in failures])
                    if failures else '<p class="note">No failures.</p>')
    page.add("counts", "Kept and dropped", _table(["", "count"], [[k, "–" if v is None else v]
                                                                  for k, v in counts])
             + "<h3>Per category</h3>" + _table(headers, rows) + more
             + f"<h3>Failures (first {len(failures)} of {failed})</h3>"
             + failure_html)

    colours = {"all": _ALL, "kept": _KEPT} if filtered else {"all": _KEPT}
    keep = summary.keep_above
    page.add("scores", "Scores", _charts([
        (histograms["clis"], "CLIS of each image", keep),
        (histograms["clis_l"], "CLIS-L (layout)", None),
        (histograms["clis_i"], "CLIS-I of each image", None),
        (box_histogram, "CLIS-I of each box", keep),
    ], colours))
    verified = report.verified()
    if verified:
        page.add("verification", "Verification and label fidelity", _fidelity_html(report))

    loader = _Images(Path(summary.images_dir) if summary.images_dir else None)
    in_order = dict.fromkeys(strip_names + [b.category for bs in boxes_of.values() for b in bs])
    colour_of = {name: _colour(k) for k, name in enumerate(in_order)}

    def box_colour(box: BoxRow) -> str:
        if filtered:
            return _KEPT if box.kept else _DROPPED
        return colour_of.get(box.category, _KEPT)

    def thumb(row: ImageRow, size: int = 200) -> str | None:
        opened = loader.get(row.file_name) if row.file_name is not None else None
        if opened is None:
            return None
        boxes = [ThumbnailBox(tuple(b.bbox), f"{b.category} {_score(b.clis_i)}", box_colour(b))  # type: ignore[arg-type]
                 for b in boxes_of.get(row.id, [])]
        page.thumbnails += 1
        caption = f"{row.file_name} · CLIS {_score(row.clis)}"
        return _figure(thumbnail(opened, boxes, size), caption, row.caption or "")

    say("drawing thumbnails")
    no_folder = "" if loader.root else '<p class="note">The report does not name its images folder.</p>'
    sheet = [f for f in (thumb(r) for _, _, r in sorted(sample, key=lambda e: str(e[2].id))) if f]
    legend = (f'<p>Boxes: <span style="color:{_KEPT}">kept</span>, <span style="color:{_DROPPED}">removed'
              "</span> in the filtered copy.</p>" if filtered else "")
    page.add("contact-sheet", f"Contact sheet: {len(sheet)} of {summary.scored_images} scored images",
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
    file_names = {r.id: r.file_name for _, _, r in (*sample, *lowest_kept, *best_removed)}
    strip_images = {b.image_id for heap in strips.values() for _, _, b in heap} - file_names.keys()
    if strip_images:
        file_names.update({r.id: r.file_name for r in report.images(again=True)
                           if r.id in strip_images and r.file_name is not None})
    page.add("categories", "Examples per category", _strips(
        strip_names, {n: n for n in strip_names}, strips, {n: colour_of.get(n, _KEPT) for n in strip_names},
        loader, page, file_names, lambda b: f"CLIS-I {_score(b.clis_i)}"))
    if verified:
        found_of = {row.id: row for row in report.detections({r.id for _, _, r in least_verified})}
        pairs = []
        for _, _, row in _ranked(least_verified):
            opened = loader.get(row.file_name) if row.file_name is not None else None
            if opened is None:
                continue
            labels = [(b.category, tuple(b.bbox), b.verification) for b in boxes_of.get(row.id, [])]
            detected = found_of.get(row.id)
            found = [(d.category, d.score, tuple(d.bbox), d.role)
                     for d in (detected.detections if detected is not None else [])]
            note = "" if detected is not None else " · no detections row"
            pairs.append(_pair(opened, labels, found, page,  # type: ignore[arg-type]
                               f"{row.file_name} · verification {_score(row.verification)} · unlabeled "
                               f"{'–' if row.unlabeled is None else row.unlabeled}{note}", row.caption or ""))
        page.append("verification", _pairs_html(pairs, "images"))
    page.append("run", _skipped_note(report.skipped))
    return page


def _fidelity_html(report: ScoreReportFolder) -> str:
    """The verifier's figures of a score report: its settings, the counts and label fidelity,
    and per category; a note when ``verification.json`` is missing or unreadable."""
    try:
        verification = report.verification()
    except InputError as error:
        return f'<p class="note">Verification figures not shown: {_e(_short(str(error)))}</p>'
    if verification is None:
        return (f'<p class="note">The summary names a detector but {_e(report.verification_path.name)} '
                "is missing.</p>")
    record = verification.record
    fidelity = record.label_fidelity
    overall: list[list[Any]] = [
        ["detector", _short(record.detector_model or "–", 100)],
        ["family", _short(record.detector_family or "–")],
        ["detection threshold", _fraction(record.detection_threshold)],
        ["unplanned threshold", _fraction(record.unplanned_threshold)],
        ["IoU to verify", _fraction(record.verify_iou)],
        ["boxes verified", _count(record.verified)], ["boxes missing", _count(record.missing)],
        ["unlabeled objects", _count(record.unlabeled)],
        ["images with an unlabeled object", _count(record.images_with_unlabeled)],
        ["label fidelity: AP", _fraction(fidelity.ap if fidelity else None)],
        ["label fidelity: AP50", _fraction(fidelity.ap50 if fidelity else None)]]
    ranked = sorted(verification.categories, key=lambda c: (-(c.verified + c.missing), c.category))
    rows = [[c.category, c.verified, c.missing, c.unlabeled, c.detections, _fraction(c.ap), _fraction(c.ap50)]
            for c in ranked[:CATEGORY_ROWS]]
    rest = ranked[CATEGORY_ROWS:]
    more = (f'<p class="note">{len(rest)} more categories with {sum(c.verified + c.missing for c in rest)} '
            f"boxes: {_e(_names(c.category for c in rest))}.</p>" if rest else "")
    table = (_table(["category", "verified", "missing", "unlabeled", "detections", "AP", "AP50"], rows)
             if rows else '<p class="note">No category.</p>')
    return ("<p>Each box checked by a zero-shot detector: <b>verified</b>, a detection of its category "
            "overlaps it; <b>missing</b>, none does; <b>unlabeled</b>, a confident detection that no box "
            "of its category matches. Label fidelity: COCO AP and AP50 of the detections against the "
            "labels (pycocotools' COCOeval; – where a category has no label).</p>"
            + _table(["", "value"], overall) + "<h3>Per category</h3>" + table + more)


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _count(value: int | None) -> int | str:
    return "–" if value is None else value


def _ranked(heap: list[_Ranked]) -> list[_Ranked]:
    """A heap of ``_keep_top`` from its first entry to its last."""
    return sorted(heap, key=lambda e: e[:2], reverse=True)


def _keep_top(heap: list[_Ranked], entry: _Ranked, count: int) -> None:
    """Keep the ``count`` largest entries (by their first two items) in the min-heap ``heap``."""
    if len(heap) < count:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _first(items: Iterable[Any], count: int) -> Iterator[Any]:
    for n, item in enumerate(items):
        if n >= count:
            return
        yield item
