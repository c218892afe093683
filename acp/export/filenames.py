"""File names made from user text (concept names, plan ids) that are safe on every filesystem.

``safe_filename`` keeps the name readable where it can and never returns something that could
leave its folder, hide itself, collide with a device name on Windows or exceed a filesystem's
255-byte name limit:

- Unicode is normalised to NFC (one spelling of "é"); letters and emoji are kept;
- path separators, characters Windows forbids (``<>:"|?*``), whitespace, control and
  format characters (NUL, newlines, the right-to-left override that can disguise an extension),
  lone surrogates and unassigned code points become ``_``;
- leading and trailing dots, underscores and spaces are dropped, so ``..`` and ``.hidden`` cannot
  come out; a name left empty becomes ``unnamed``;
- a Windows device name (``CON``, ``nul.txt``, ``COM1``...) gets a leading ``_``;
- the result is at most ``max_bytes`` bytes of UTF-8. A name that had to be cut ends with ``-``
  and 8 hex digits of a hash of the original, so two long names that share a prefix stay distinct.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_FILENAME_BYTES = 120  # leaves room for a suffix and a disambiguating hash under the 255 limit

_FORBIDDEN = set('/\\<>:"|?*')
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}
_RUNS = re.compile(r"_{2,}")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{stem}{n}" for stem in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")
}


def _is_safe(char: str) -> bool:
    if char in _FORBIDDEN or char.isspace():
        return False
    return unicodedata.category(char) not in _UNSAFE_CATEGORIES


def _cut_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")[:max_bytes]
    return data.decode("utf-8", errors="ignore")  # drops a code point split by the cut


def safe_filename(name: str, *, max_bytes: int = MAX_FILENAME_BYTES) -> str:
    """A file name (no folder part) made from ``name``; see the module docstring for the rules."""
    if max_bytes < 16:
        raise ValueError(f"max_bytes must be at least 16, got {max_bytes}")
    text = unicodedata.normalize("NFC", name)
    text = "".join(char if _is_safe(char) else "_" for char in text)
    text = _RUNS.sub("_", text).strip("._ ")
    if not text:
        text = "unnamed"
    if text.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        text = "_" + text
    if len(text.encode("utf-8")) > max_bytes:
        digest = hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
        text = _cut_utf8(text, max_bytes - 9).rstrip("._ ") + "-" + digest
    return text
