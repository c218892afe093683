"""The font of the labels acp draws into images: previews, overlays, report thumbnails.

Category names come in any script ("café", "狗", "собака"), and PIL's built-in font draws
ASCII only: everything else comes out as boxes. acp ships no font (one that covers CJK is
several megabytes); it uses the machine's, chosen per character:

1. the machine's sans-serif font as fontconfig matches it (``fc-match sans-serif``; DejaVu
   Sans on a bare Debian, which covers Latin, Greek and Cyrillic), else matplotlib's copy of
   DejaVu Sans when matplotlib is installed;
2. for a character that font lacks, a font that has it, as fontconfig lists it
   (``fc-list :charset=...``; on Debian, ``fonts-noto-cjk`` or ``fonts-droid-fallback`` bring
   CJK), kept for the characters that follow;
3. PIL's built-in font when there is nothing else.

A font "has" a character when it draws it differently from a character no font maps
(U+10FFFF, drawn as the font's .notdef box). A label is drawn in runs of characters that share a
font, on one baseline. Characters no font on the machine has are drawn as boxes and listed in
``LabelFont.missing``, so a command can say which to install. fontconfig is asked at most
``MAX_LOOKUPS`` times per process (each about 10 ms), however many names a dataset has.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import threading
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.ImageDraw import ImageDraw
    from PIL.ImageFont import FreeTypeFont, ImageFont

    Font = FreeTypeFont | ImageFont

NO_CHARACTER = "\U0010ffff"  # a noncharacter: no font maps it, every font draws its .notdef
MAX_LOOKUPS = 256
INSTALL_HINT = "install a font that covers them (Debian: fonts-noto-cjk, or fonts-droid-fallback for CJK)"
_lock = threading.Lock()
_lookups = 0


def _run(*command: str) -> str:
    """The output of a fontconfig tool; empty when it is not installed or fails."""
    if shutil.which(command[0]) is None:
        return ""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def _primary_file() -> tuple[str, int] | None:
    """The font file (and face index) for most labels: see the module notes."""
    found = _run("fc-match", "--format", "%{file}\n%{index}", "sans-serif:style=Regular").splitlines()
    if len(found) == 2 and Path(found[0]).is_file() and found[1].isdigit():
        return found[0], int(found[1])
    spec = importlib.util.find_spec("matplotlib")  # finds the package without importing it
    if spec is not None and spec.origin is not None:
        dejavu = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if dejavu.is_file():
            return str(dejavu), 0
    return None


@functools.cache
def _files_with(char: str) -> tuple[tuple[str, int], ...]:
    """Font files that fontconfig says have ``char``, regular styles first."""
    global _lookups
    with _lock:
        if _lookups >= MAX_LOOKUPS:
            return ()
        _lookups += 1
    listing = _run("fc-list", "--format", "%{file}|%{index}|%{style}\n", f":charset={ord(char):x}")
    found = []
    for line in listing.splitlines():
        file, _, rest = line.partition("|")
        index, _, style = rest.partition("|")
        if file and index.isdigit():
            plain = any(s in style for s in ("Regular", "Book", "Normal"))
            found.append((not plain, file, int(index)))
    return tuple((file, index) for _, file, index in sorted(found))


def _plain(char: str) -> bool:
    """Spaces and invisible characters: drawn by the first font, never looked up."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")


class LabelFont:
    """Labels at one pixel size, each character from the first font that has it."""

    def __init__(self, size: int):
        from PIL import ImageFont

        self.size = size
        self.missing: set[str] = set()
        self._files: set[tuple[str, int]] = set()
        self._fonts: list[Font] = []
        self._notdef: list[tuple[tuple[int, int], bytes]] = []
        self._choice: dict[str, int] = {}
        primary = _primary_file()
        if primary is not None:
            self._add(primary)
        if not self._fonts:
            self._fonts.append(ImageFont.load_default(size=size))
            self._notdef.append(self._glyph(self._fonts[0], NO_CHARACTER))

    def _add(self, file: tuple[str, int]) -> int | None:
        from PIL import ImageFont

        if file in self._files:
            return None
        self._files.add(file)
        try:
            font = ImageFont.truetype(file[0], self.size, index=file[1])
        except OSError:  # unreadable, or a format FreeType does not know
            return None
        self._fonts.append(font)
        self._notdef.append(self._glyph(font, NO_CHARACTER))
        return len(self._fonts) - 1

    @staticmethod
    def _glyph(font: Font, char: str) -> tuple[tuple[int, int], bytes]:
        mask = font.getmask(char)
        return mask.size, bytes(mask)  # type: ignore[call-overload]

    def _has(self, k: int, char: str) -> bool:
        return self._glyph(self._fonts[k], char) != self._notdef[k]

    def _font_index(self, char: str) -> int:
        if char in self._choice:
            return self._choice[char]
        chosen = 0
        if not _plain(char):
            for k in range(len(self._fonts)):
                if self._has(k, char):
                    break
            else:
                for file in _files_with(char):
                    added = self._add(file)
                    if added is not None and self._has(added, char):
                        k = added
                        break
                else:
                    self.missing.add(char)
                    k = 0
            chosen = k
        self._choice[char] = chosen
        return chosen

    def runs(self, text: str) -> list[tuple[str, Font]]:
        """``text`` cut into runs of characters drawn by the same font."""
        runs: list[tuple[str, Font]] = []
        current, start = -1, 0
        for i, char in enumerate(text):
            k = self._font_index(char)
            if k != current and i > start:
                runs.append((text[start:i], self._fonts[current]))
                start = i
            current = k
        if text:
            runs.append((text[start:], self._fonts[current]))
        return runs

    def _baseline(self) -> int:
        font = self._fonts[0]
        return font.getmetrics()[0] if hasattr(font, "getmetrics") else 0

    def bbox(self, xy: tuple[float, float], text: str) -> tuple[float, float, float, float]:
        """The box ``draw(..., xy, text)`` covers, as ``ImageDraw.textbbox`` gives it."""
        x, y = xy
        boxes = []
        for run, font in self.runs(text):
            if hasattr(font, "getlength"):
                left, top, right, bottom = font.getbbox(run, anchor="ls")
                boxes.append((x + left, y + self._baseline() + top, x + right,
                              y + self._baseline() + bottom))
                x += font.getlength(run)
            else:  # PIL's bitmap font, the only one there is
                left, top, right, bottom = font.getbbox(run)
                boxes.append((x + left, y + top, x + right, y + bottom))
        if not boxes:
            return xy[0], xy[1], xy[0], xy[1]
        return (min(b[0] for b in boxes), min(b[1] for b in boxes),
                max(b[2] for b in boxes), max(b[3] for b in boxes))

    def draw(self, draw: ImageDraw, xy: tuple[float, float], text: str, fill: object) -> None:
        """``text`` with its top-left at ``xy``, as ``ImageDraw.text`` places it."""
        x, y = xy
        for run, font in self.runs(text):
            if hasattr(font, "getlength"):
                draw.text((x, y + self._baseline()), run, fill=fill, font=font, anchor="ls")  # type: ignore[arg-type]
                x += font.getlength(run)
            else:
                draw.text((x, y), run, fill=fill, font=font)  # type: ignore[arg-type]


_fonts: dict[int, LabelFont] = {}


def label_font(size: int) -> LabelFont:
    """The label font at ``size`` pixels, made once per process (its lookups are cached)."""
    with _lock:
        if size not in _fonts:
            _fonts[size] = LabelFont(size)
        return _fonts[size]


def missing_note() -> str | None:
    """One sentence naming the characters that labels drawn so far showed as boxes, or None."""
    with _lock:
        missing = sorted(set().union(*(f.missing for f in _fonts.values())))
    if not missing:
        return None
    shown = "".join(missing[:20]) + ("…" if len(missing) > 20 else "")
    return f"no font on this machine draws {len(missing)} characters of the labels ({shown}): {INSTALL_HINT}"
