"""Labels in any script: previews, overlays and report thumbnails draw "café", "собака" and "狗"
as glyphs, not as the boxes PIL's built-in font draws for anything past ASCII."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import acp.fonts
import acp.render.preview
from acp.fonts import NO_CHARACTER, label_font
from acp.render.preview import draw_layout
from acp.schema import ScenePlan


def _drawn(text: str, size: int = 24) -> np.ndarray:
    image = Image.new("L", (240, 48))
    label_font(size).draw(ImageDraw.Draw(image), (4, 4), text, fill=255)
    return np.asarray(image)


def _cjk_font_installed() -> bool:
    return bool(acp.fonts._files_with("狗"))


@pytest.mark.parametrize("word", ["café", "собака", "狗"])
def test_every_character_is_a_glyph_of_its_own(word: str) -> None:
    """Each character drawn differs from the .notdef box (what a character no font has is drawn
    as) and from every other character of the word."""
    if word == "狗" and not _cjk_font_installed():
        pytest.skip("no CJK font on this machine: apt-get install fonts-droid-fallback (as .ci/run does)")
    tofu = _drawn(NO_CHARACTER)
    assert tofu.any()  # the box itself is drawn: the comparison below means something
    drawings = {char: _drawn(char) for char in dict.fromkeys(word)}
    for char, drawing in drawings.items():
        assert drawing.any() and not np.array_equal(drawing, tofu), f"{char!r} is drawn as a box"
    distinct = {drawing.tobytes() for drawing in drawings.values()}
    assert len(distinct) == len(drawings)


def _plan(category: str) -> ScenePlan:
    return ScenePlan.model_validate({
        "id": "p", "caption": "A scene.", "planner": "heuristic", "width": 256, "height": 256,
        "objects": [{"id": 0, "category": category, "description": "a thing", "bbox": [0.1, 0.1, 0.8, 0.8]}]})


def test_preview_labels_are_glyphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """One layout labelled with each letter in turn, every box the same colour: every drawing
    differs from the others and from the one labelled with a character no font has (with PIL's
    built-in font, all of them were the same box)."""
    monkeypatch.setattr(acp.render.preview, "category_colour", lambda category: (200, 40, 40))
    letters = ["é", "с", "б", "к", NO_CHARACTER]
    assert len({np.asarray(draw_layout(_plan(letter))).tobytes() for letter in letters}) == len(letters)


def test_report_thumbnail_labels_are_glyphs() -> None:
    import base64
    import io

    from acp.report import ThumbnailBox, thumbnail

    image = Image.new("RGB", (200, 200), (128, 128, 128))

    def labelled(text: str) -> bytes:
        uri = thumbnail(image, [ThumbnailBox((10, 10, 150, 150), text, "#e6194b")], 200)
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))).tobytes()

    letters = ["é", "с", "б", "к", NO_CHARACTER]
    assert len({labelled(letter) for letter in letters}) == len(letters)


@pytest.fixture()
def no_fonts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine without fontconfig and without matplotlib: nothing but PIL's built-in font."""
    def clear() -> None:
        acp.fonts._primary_file.cache_clear()
        acp.fonts._files_with.cache_clear()
        acp.fonts._fonts.clear()

    clear()
    monkeypatch.setattr(acp.fonts, "_run", lambda *command: "")
    monkeypatch.setattr(acp.fonts.importlib.util, "find_spec", lambda name: None)
    yield
    clear()


def test_without_any_font_labels_still_draw_and_the_missing_characters_are_named(no_fonts: None,
                                                                                 tmp_path: Path) -> None:
    drawing = draw_layout(_plan("собака"))
    assert drawing.size[0] == 256
    note = acp.fonts.missing_note()
    assert note is not None and "с" in note and "fonts-noto-cjk" in note
    assert acp.fonts.missing_note() == note  # asked twice, the same sentence


def test_fontconfig_is_asked_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    acp.fonts._files_with.cache_clear()
    monkeypatch.setattr(acp.fonts, "_lookups", 0)
    monkeypatch.setattr(acp.fonts, "_run", lambda *command: calls.append(command) or "")
    try:
        for code in range(0x4E00, 0x4E00 + acp.fonts.MAX_LOOKUPS + 50):
            acp.fonts._files_with(chr(code))
    finally:
        acp.fonts._files_with.cache_clear()
    assert len(calls) == acp.fonts.MAX_LOOKUPS
