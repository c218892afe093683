"""Category-name normalisation shared by every stage that matches names.

``category_key("Fire Hydrants")`` and ``category_key("fire_hydrant")`` are both
``"fire hydrant"``: lower case, single spaces, underscores and hyphens read as spaces, and
the last word put in the singular by a few English rules. The key is only ever compared with
other keys; it is never shown to the user.

``name_problem`` says why a name cannot become a COCO category name: it holds a character that
is invisible or changes how the text around it is shown (see ``is_hidden``), so two categories
could look alike, or a name could display reversed (U+202E) or be cut at a NUL.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from acp.errors import quoted

_SEPARATORS = re.compile(r"[\s_\-]+")
# Words whose trailing "s" is not a plural ending (or whose plural is irregular).
_INVARIANT = {"glass", "grass", "bus", "gas", "bass", "lens", "scissors", "series", "species",
              "dress", "cross", "boss", "chess", "mattress", "compass", "cactus", "octopus",
              "asparagus", "hummus", "couscous", "canvas", "iris", "walrus", "bonus", "status"}
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child",
              "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot",
              "knives": "knife", "leaves": "leaf", "wolves": "wolf", "shelves": "shelf",
              "loaves": "loaf", "calves": "calf", "halves": "half", "sheep": "sheep",
              "buses": "bus", "glasses": "glass", "dresses": "dress", "boxes": "box",
              "benches": "bench", "couches": "couch", "sandwiches": "sandwich",
              "watches": "watch", "skis": "ski", "dice": "die", "oxen": "ox"}


def singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _INVARIANT or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@functools.lru_cache(maxsize=1 << 16)  # plans repeat the same few names; bounded for hostile input
def category_key(name: str) -> str:
    words = _SEPARATORS.sub(" ", name.strip().lower()).split(" ")
    if not words or words == [""]:
        return ""
    words[-1] = singular(words[-1])
    return " ".join(words)


# Other names for the same thing, keyed by ``category_key``; values are the canonical key
# (COCO's name where COCO has the class). Used to match concepts to category files and to
# real layouts in a CLIS-L bank.
SYNONYMS: dict[str, str] = {
    "aeroplane": "airplane", "plane": "airplane", "jet": "airplane",
    "bike": "bicycle", "motorbike": "motorcycle", "scooter": "motorcycle",
    "automobile": "car", "taxi": "car", "lorry": "truck",
    "sofa": "couch", "settee": "couch", "tv": "tv", "television": "tv", "tvmonitor": "tv",
    "tv monitor": "tv", "monitor": "tv", "cellphone": "cell phone", "mobile phone": "cell phone",
    "phone": "cell phone", "smartphone": "cell phone", "laptop computer": "laptop",
    "puppy": "dog", "kitten": "cat", "kitty": "cat", "pony": "horse", "cow": "cow",
    "cattle": "cow", "calf": "cow", "lamb": "sheep", "human": "person", "man": "person",
    "woman": "person", "child": "person", "kid": "person", "boy": "person", "girl": "person",
    "pedestrian": "person", "people": "person", "dining table": "dining table",
    "table": "dining table", "diningtable": "dining table", "pottedplant": "potted plant",
    "houseplant": "potted plant", "plant": "potted plant", "doughnut": "donut",
    "hotdog": "hot dog", "ball": "sports ball", "football": "sports ball",
    "soccer ball": "sports ball", "tennis racquet": "tennis racket", "racket": "tennis racket",
    "hairdryer": "hair drier", "hair dryer": "hair drier", "fridge": "refrigerator",
    "ski": "skis", "glass": "wine glass", "mug": "cup", "handbag": "handbag", "purse": "handbag",
    "rucksack": "backpack", "stop light": "traffic light", "traffic signal": "traffic light",
    "hydrant": "fire hydrant", "teddy": "teddy bear", "teddybear": "teddy bear",
    "sailboat": "boat", "ship": "boat", "canoe": "boat", "kayak": "boat",
}


def canonical_key(name: str) -> str:
    """``category_key`` followed by the synonym table: ``"Puppies"`` -> ``"dog"``."""
    key = category_key(name)
    target = SYNONYMS.get(key)
    return category_key(target) if target else key


# Format characters that are part of correct spelling: the zero-width non-joiner and joiner
# (Persian, Indic scripts, emoji sequences). They change how letters join, never the order.
_SPELLING_JOINERS = frozenset("\u200c\u200d")


def is_hidden(character: str) -> bool:
    """A control character other than whitespace (NUL, BEL, ...: category Cc), a format
    character (bidirectional controls U+202A-U+202E, U+2066-U+2069, U+200E/U+200F, zero-width
    space, BOM, soft hyphen, ...: Cf) other than the spelling joiners, or a lone surrogate (Cs,
    not even writable as UTF-8). Whitespace is left to the callers, which collapse it."""
    category = unicodedata.category(character)
    if category == "Cc":
        return not character.isspace()
    if category == "Cf":
        return character not in _SPELLING_JOINERS
    return category == "Cs"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a category name, as a message fragment, or None."""
    for character in name:
        if is_hidden(character):
            what = unicodedata.name(character, "a control character")
            return (f"{quoted(name)} holds U+{ord(character):04X} ({what}), a control or formatting "
                    "character; remove it")
    return None
