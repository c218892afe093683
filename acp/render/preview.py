"""Layout drawings with PIL and no model: look at the layouts before spending GPU hours on them.

- ``draw_layout(plan)``: the plan's boxes and labels on a blank canvas of its size, with the
  caption underneath; ``draw_layout(plan, image)`` draws them over a rendered candidate.
- ``write_previews(plans, output)`` writes ``<plan_id>.png`` per plan, or with ``overlay``
  (a render folder) ``<plan_id>/<index>.png`` per candidate; with ``grid`` it writes contact
  sheets (``sheet-0001.png``, ...) instead of one file per drawing.

``output`` is a new or empty folder, or an earlier preview's (its ``acp-owned.json`` lists the
drawings, ``acp.owned``): a rerun replaces that preview's drawings and nothing else. Any other
folder is refused; a render folder given as ``output`` would have had its candidates drawn over.

A category always gets the same colour (hashed from its normalised name), so a "dog" is the
same colour on every sheet.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps
from pydantic import ValidationError

from acp.boxes import normalized_to_pixels, xywh_to_xyxy
from acp.errors import InputError
from acp.fonts import LabelFont, label_font
from acp.images import read_rgb
from acp.jsonl import read_records, write_atomic
from acp.names import category_key
from acp.owned import check_owned, replace_owned, temp_folder
from acp.paths import UnsafePathError, file_problem, inside
from acp.render.folder import MANIFEST
from acp.schema import Candidate, ScenePlan

WRITTEN_BY = "acp preview"
TILE = 256  # side of a contact-sheet cell, pixels
LAYOUTS_PER_SHEET = 16  # 4 x 4
ROWS_PER_SHEET = 8  # overlay sheets: one row per plan (layout, then its candidates)
_CANVAS = (245, 245, 245)
_INK = (30, 30, 30)

def category_colour(category: str) -> tuple[int, int, int]:
    """A saturated colour that depends only on the category's normalised name."""
    digest = hashlib.blake2b(category_key(category).encode(), digest_size=3).digest()
    hue = digest[0] / 255
    # HSV -> RGB with full saturation and a value that reads on white and on photos.
    sector, fraction = divmod(hue * 6, 1)
    value, low = 220, 40
    rising, falling = int(low + (value - low) * fraction), int(value - (value - low) * fraction)
    return [
        (value, rising, low), (falling, value, low), (low, value, rising),
        (low, falling, value), (rising, low, value), (value, low, falling),
    ][int(sector) % 6]


def draw_layout(plan: ScenePlan, image: Image.Image | None = None) -> Image.Image:
    """The plan's boxes, labelled ``id category``, over ``image`` (a copy) or a blank canvas
    of the plan's size with the caption written under it."""
    canvas = (  # convert() copies: the caller's image is left as it is
        Image.new("RGB", (plan.width, plan.height), _CANVAS) if image is None else image.convert("RGB")
    )
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    font = label_font(max(10, min(width, height) // 32))
    line = max(1, min(width, height) // 170)
    for obj in plan.objects:
        x0, y0, x1, y1 = normalized_to_pixels(xywh_to_xyxy(obj.bbox), width, height).tolist()
        colour = category_colour(obj.category)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
        label = f"{obj.id} {obj.category}"
        left, top, right, bottom = font.bbox((0, 0), label)
        # Inside the box's top-left corner, moved back into the frame when it would leave it.
        tx = min(max(0, x0), max(0, width - (right - left) - 4))
        ty = min(max(0, y0), max(0, height - (bottom - top) - 4))
        draw.rectangle((tx, ty, tx + right - left + 4, ty + bottom + 2), fill=colour)
        font.draw(draw, (tx + 2, ty), label, fill=(255, 255, 255))
    if image is not None:
        return canvas
    return _with_caption(canvas, f"{plan.id}: {plan.caption}", font)


def _with_caption(picture: Image.Image, text: str, font: LabelFont) -> Image.Image:
    size = font.size
    lines = textwrap.wrap(text, width=max(10, int(picture.width / (0.55 * size))))[:4]
    strip = (size + 4) * len(lines) + 6
    out = Image.new("RGB", (picture.width, picture.height + strip), (255, 255, 255))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, text_line in enumerate(lines):
        font.draw(draw, (4, picture.height + 3 + k * (size + 4)), text_line, fill=_INK)
    return out


def _tile(picture: Image.Image) -> Image.Image:
    thumb = ImageOps.contain(picture, (TILE, TILE))  # scales small renders up, large ones down
    cell = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    cell.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    return cell


def contact_sheet(rows: Sequence[Sequence[Image.Image | None]]) -> Image.Image:
    """Pictures in rows of ``TILE`` x ``TILE`` cells (``None`` leaves a cell empty)."""
    columns = max((len(row) for row in rows), default=1)
    sheet = Image.new("RGB", (columns * TILE, max(1, len(rows)) * TILE), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            if picture is not None:
                sheet.paste(_tile(picture), (c * TILE, r * TILE))
    return sheet


def _save(picture: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def read_manifest(folder: Path) -> list[Candidate]:
    """The valid records of a render folder's manifest whose image exists."""
    path = Path(folder) / MANIFEST
    if problem := file_problem(path):
        raise InputError(f"no {MANIFEST} in {folder}: not a render folder" if problem == "no such file"
                         else f"{path}: {problem}")
    found = []
    for _number, record, _text in read_records(path):
        try:
            candidate = Candidate.model_validate(record)
            image = inside(Path(folder), candidate.path, what="path")
        except (ValidationError, UnsafePathError):  # a path out of the folder is never read
            continue
        if image.is_file():
            found.append(candidate)
    return found


@dataclass
class PreviewSummary:
    written: int = 0  # files: drawings, or sheets with ``grid``
    drawings: int = 0
    unmatched: int = 0  # overlay candidates whose plan is not in the plans file
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (image, reason), not drawn

    def line(self) -> str:
        text = f"{self.drawings} drawings in {self.written} files"
        if self.unmatched:
            text += f"; {self.unmatched} rendered candidates have no plan in the plans file"
        if self.unreadable:
            text += f"; {len(self.unreadable)} rendered candidates unreadable"
        return text


class _Sheets:
    """Collects rows of drawings and writes a contact sheet each time ``per_sheet`` are full."""

    def __init__(self, output: Path, per_sheet: int, summary: PreviewSummary):
        self.output, self.per_sheet, self.summary = output, per_sheet, summary
        self.rows: list[Sequence[Image.Image | None]] = []

    def add(self, row: Sequence[Image.Image | None]) -> None:
        self.rows.append(row)
        if len(self.rows) == self.per_sheet:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.summary.written += 1
            _save(contact_sheet(self.rows), self.output / f"sheet-{self.summary.written:04d}.png")
            self.rows = []


def write_previews(
    plans: Sequence[ScenePlan], output: Path, *, overlay: Path | None = None, grid: bool = False,
    progress: bool = False,
) -> PreviewSummary:
    """Draw every plan (or, with ``overlay``, every rendered candidate of every plan) into
    ``output``; see the module notes for the file names. ``progress`` shows a bar over the plans."""
    output = Path(output)
    check_owned(output, WRITTEN_BY, ())
    work = temp_folder(output)
    try:
        summary = _draw(plans, work, overlay, grid, progress)
        replace_owned(work, output, WRITTEN_BY)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _draw(plans: Sequence[ScenePlan], output: Path, overlay: Path | None, grid: bool,
          progress: bool) -> PreviewSummary:
    from tqdm import tqdm

    summary = PreviewSummary()
    bar = tqdm(plans, desc="preview", unit="plan", disable=not progress, dynamic_ncols=True)
    if overlay is None:
        columns = 4
        sheets = _Sheets(output, LAYOUTS_PER_SHEET // columns, summary)
        row: list[Image.Image | None] = []
        for plan in bar:
            drawing = draw_layout(plan)
            summary.drawings += 1
            if not grid:
                _save(drawing, output / f"{plan.id}.png")
                summary.written += 1
                continue
            row.append(drawing)
            if len(row) == columns:
                sheets.add(row)
                row = []
        if row:
            sheets.add(row)
        sheets.flush()
        bar.close()
        return summary

    by_plan: dict[str, list[Candidate]] = defaultdict(list)
    known = {plan.id for plan in plans}
    for candidate in read_manifest(overlay):
        if candidate.plan_id in known:
            by_plan[candidate.plan_id].append(candidate)
        else:
            summary.unmatched += 1
    sheets = _Sheets(output, ROWS_PER_SHEET, summary)
    for plan in bar:
        found = sorted(by_plan.get(plan.id, []), key=lambda c: c.index)
        row = [draw_layout(plan)] if grid and found else []
        for candidate in found:
            path = Path(overlay) / candidate.path
            rendered, reason = read_rgb(path)
            if rendered is None:
                summary.unreadable.append((path, str(reason)))
                continue
            drawing = draw_layout(plan, rendered)
            summary.drawings += 1
            if grid:
                row.append(drawing)
            else:
                _save(drawing, output / plan.id / f"{candidate.index}.png")
                summary.written += 1
        if row:
            sheets.add(row)
    sheets.flush()
    bar.close()
    return summary
