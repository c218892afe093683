"""English for captions and descriptions: "an orange jacket", "two fire hydrants", "a dog and a cat".

A few rules and tables rather than a library: the names are short nouns (COCO's 80 categories
or the user's concepts), and ``inflect`` costs about two seconds of import, which `acp plan`
would pay on every run. The last word of a phrase carries its number; a plural the user typed
("frisbees") is read back with ``acp.names.singular``.
"""

from __future__ import annotations

from collections.abc import Callable

from acp.names import singular as _key_singular

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_VOWELS = ("a", "e", "i", "o", "u")
# Said with "an" although spelt with a consonant first (a silent h) ...
_AN = ("hour", "honest", "honor", "honour", "heir")
# ... and with "a" although spelt with a vowel first (a "y" or "w" sound).
_A = ("uni", "use", "usu", "uten", "uti", "uku", "ufo", "eu", "ewe", "one", "once")
_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children",
              "mouse": "mice", "goose": "geese", "tooth": "teeth", "foot": "feet", "ox": "oxen",
              "knife": "knives", "leaf": "leaves", "wolf": "wolves", "shelf": "shelves",
              "loaf": "loaves", "calf": "calves", "half": "halves", "life": "lives", "wife": "wives",
              "scarf": "scarves", "die": "dice", "potato": "potatoes", "tomato": "tomatoes",
              "mango": "mangoes", "hero": "heroes", "cactus": "cacti"}
_SINGULAR = {many: one for one, many in _IRREGULAR.items()}
_SAME = {"sheep", "deer", "fish", "moose", "bison", "aircraft", "series", "species", "cattle"}
# Counted in pairs: a box of COCO's "skis" holds a pair of skis.
_PAIRS = {"skis", "scissors", "glasses", "sunglasses", "trousers", "pants", "jeans", "shorts",
          "binoculars", "headphones", "pliers", "tongs"}
# Singulars in "-ie", which the "-ies" -> "-y" rule would get wrong.
_IE = {"cookie", "movie", "zombie", "brownie", "hoodie", "selfie", "smoothie", "beanie", "birdie",
       "goalie", "rookie", "veggie", "pixie", "genie", "calorie", "tie", "pie"}


def with_article(phrase: str) -> str:
    """``phrase`` after "a" or "an", by the sound of its first word: "an orange jacket",
    "a unicorn", "an hour", "an SUV"."""
    word = phrase.split(" ", 1)[0]
    lower = word.lower()
    if word.isupper() and len(word) > 1:  # an initialism, read letter by letter
        vowel = lower[0] in "aefhilmnorsx"
    elif lower.startswith(_AN):
        vowel = True
    else:
        vowel = lower.startswith(_VOWELS) and not lower.startswith(_A)
    return f"{'an' if vowel else 'a'} {phrase}"


def _singular(word: str) -> str:
    if word.endswith("ies") and word[:-1] in _IE:
        return word[:-1]
    return _SINGULAR.get(word) or _key_singular(word)


def _plural(word: str) -> str:
    if word in _PAIRS or word in _SAME or word in _IRREGULAR.values():
        return word
    word = _singular(word) if word.endswith("s") else word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _on_last_word(phrase: str, change: Callable[[str], str], initialism: Callable[[str], str]) -> str:
    """``phrase`` with ``change`` applied to its last word, in lower case; "Dog" keeps its
    capital, "TV" (an initialism) gets ``initialism`` instead."""
    head, _, last = phrase.rpartition(" ")
    if last.isupper() and len(last) > 1:
        word = initialism(last)
    elif last[:1].isupper():
        word = change(last.lower()).capitalize()
    else:
        word = change(last.lower())
    return f"{head} {word}" if head else word


def plural(phrase: str) -> str:
    """The plural of a noun phrase: "fire hydrants", "wine glasses", "people", "sheep"."""
    return _on_last_word(phrase, _plural, lambda word: word + "s")


def singular(phrase: str) -> str:
    """The singular of a noun phrase that may have been typed as a plural: "frisbee"."""
    return _on_last_word(phrase, _singular, lambda word: word)


def count_phrase(name: str, count: int) -> str:
    """``count`` things called ``name``: "a frisbee", "two fire hydrants", "12 cups", "a pair of
    skis"; numbers up to ten in words."""
    number = _NUMBERS[count] if 0 <= count < len(_NUMBERS) else str(count)
    if name.rpartition(" ")[2].lower() in _PAIRS:
        return f"a pair of {name}" if count == 1 else f"{number} pairs of {name}"
    return with_article(singular(name)) if count == 1 else f"{number} {plural(name)}"


def listing(parts: list[str]) -> str:
    """ "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
