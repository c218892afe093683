"""Size, shape and placement priors of common categories for the heuristic planner.

``side`` is the typical square root of the box area as a fraction of the frame when the
object is the subject of a photo; ``aspect`` is width / height; ``zone`` says where the box
tends to sit:

- ``ground``: stands on the floor or the ground; its bottom edge is low in the frame;
- ``surface``: small things on a table or counter; bottom edge in the lower half;
- ``high``: mounted or hanging (clocks, traffic lights, signs); upper part of the frame;
- ``air``: flies (birds, planes, kites); upper half;
- ``any``: no preference.

``setting`` picks a background; the table gives it with the preposition a caption puts before
it ("on a sidewalk", "at a railway station", "in a park"). The values are rough readings of
COCO's statistics, enough to make layouts that look like photographs; CLIS-L with a real bank
judges them properly.
"""

from __future__ import annotations

from dataclasses import dataclass

from acp.names import canonical_key


@dataclass(frozen=True)
class Prior:
    side: float
    aspect: float
    zone: str
    setting: str  # "a sidewalk": the plan's background
    preposition: str = "in"

    @property
    def place(self) -> str:
        """The setting as a caption ends with it: "on a sidewalk"."""
        return f"{self.preposition} {self.setting}"


def _p(side: float, aspect: float, zone: str, place: str) -> Prior:
    preposition, setting = place.split(" ", 1)
    assert preposition in ("in", "on", "at"), place
    return Prior(side, aspect, zone, setting, preposition)


# The 80 COCO categories.
PRIORS: dict[str, Prior] = {
    "person": _p(0.45, 0.42, "ground", "in a city park"),
    "bicycle": _p(0.45, 1.5, "ground", "on a quiet street"),
    "car": _p(0.5, 1.8, "ground", "on a city street"),
    "motorcycle": _p(0.45, 1.4, "ground", "on a city street"),
    "airplane": _p(0.55, 2.0, "air", "in a clear sky above an airport"),
    "bus": _p(0.6, 1.6, "ground", "on a city street"),
    "train": _p(0.65, 2.2, "ground", "at a railway station"),
    "truck": _p(0.55, 1.7, "ground", "on a highway"),
    "boat": _p(0.45, 1.8, "ground", "on a calm lake"),
    "traffic light": _p(0.15, 0.4, "high", "on a city street"),
    "fire hydrant": _p(0.25, 0.6, "ground", "on a sidewalk"),
    "stop sign": _p(0.22, 1.0, "high", "on a street corner"),
    "parking meter": _p(0.22, 0.4, "ground", "on a sidewalk"),
    "bench": _p(0.4, 1.8, "ground", "in a park"),
    "bird": _p(0.2, 1.2, "air", "in a garden"),
    "cat": _p(0.35, 1.2, "ground", "in a cozy living room"),
    "dog": _p(0.4, 1.2, "ground", "in a park"),
    "horse": _p(0.5, 1.3, "ground", "in a green pasture"),
    "sheep": _p(0.35, 1.3, "ground", "in a green pasture"),
    "cow": _p(0.45, 1.4, "ground", "in a farm field"),
    "elephant": _p(0.6, 1.3, "ground", "in a savanna"),
    "bear": _p(0.5, 1.2, "ground", "in a forest"),
    "zebra": _p(0.5, 1.3, "ground", "in a savanna"),
    "giraffe": _p(0.6, 0.6, "ground", "in a savanna"),
    "backpack": _p(0.2, 0.75, "ground", "on a hiking trail"),
    "umbrella": _p(0.35, 1.4, "any", "on a rainy street"),
    "handbag": _p(0.18, 1.1, "any", "in a shop"),
    "tie": _p(0.12, 0.35, "any", "in an office"),
    "suitcase": _p(0.3, 0.8, "ground", "in an airport hall"),
    "frisbee": _p(0.12, 1.6, "any", "in a park"),
    "skis": _p(0.35, 2.5, "ground", "on a snowy slope"),
    "snowboard": _p(0.3, 2.2, "ground", "on a snowy slope"),
    "sports ball": _p(0.1, 1.0, "any", "on a sports field"),
    "kite": _p(0.18, 1.0, "air", "on a windy beach"),
    "baseball bat": _p(0.2, 0.4, "any", "on a baseball field"),
    "baseball glove": _p(0.12, 1.0, "any", "on a baseball field"),
    "skateboard": _p(0.25, 2.2, "ground", "at a skate park"),
    "surfboard": _p(0.35, 2.5, "ground", "on a sandy beach"),
    "tennis racket": _p(0.2, 0.6, "any", "on a tennis court"),
    "bottle": _p(0.15, 0.35, "surface", "on a kitchen counter"),
    "wine glass": _p(0.14, 0.45, "surface", "on a dinner table"),
    "cup": _p(0.13, 0.9, "surface", "on a kitchen table"),
    "fork": _p(0.12, 0.3, "surface", "on a dinner table"),
    "knife": _p(0.12, 0.3, "surface", "on a kitchen counter"),
    "spoon": _p(0.11, 0.3, "surface", "on a dinner table"),
    "bowl": _p(0.22, 1.6, "surface", "on a kitchen table"),
    "banana": _p(0.18, 1.6, "surface", "on a kitchen table"),
    "apple": _p(0.12, 1.0, "surface", "on a kitchen table"),
    "sandwich": _p(0.22, 1.4, "surface", "on a lunch table"),
    "orange": _p(0.12, 1.0, "surface", "on a kitchen table"),
    "broccoli": _p(0.18, 1.1, "surface", "on a kitchen counter"),
    "carrot": _p(0.14, 1.5, "surface", "on a kitchen counter"),
    "hot dog": _p(0.18, 1.8, "surface", "on a picnic table"),
    "pizza": _p(0.35, 1.4, "surface", "on a restaurant table"),
    "donut": _p(0.15, 1.2, "surface", "on a bakery counter"),
    "cake": _p(0.3, 1.3, "surface", "on a party table"),
    "chair": _p(0.35, 0.7, "ground", "in a dining room"),
    "couch": _p(0.55, 2.0, "ground", "in a living room"),
    "potted plant": _p(0.3, 0.75, "ground", "in a bright living room"),
    "bed": _p(0.65, 1.5, "ground", "in a bedroom"),
    "dining table": _p(0.6, 1.6, "ground", "in a dining room"),
    "toilet": _p(0.35, 0.7, "ground", "in a bathroom"),
    "tv": _p(0.35, 1.6, "high", "in a living room"),
    "laptop": _p(0.3, 1.3, "surface", "on an office desk"),
    "mouse": _p(0.08, 0.7, "surface", "on an office desk"),
    "remote": _p(0.1, 0.35, "surface", "in a living room"),
    "keyboard": _p(0.25, 3.0, "surface", "on an office desk"),
    "cell phone": _p(0.1, 0.55, "surface", "on a desk"),
    "microwave": _p(0.3, 1.5, "surface", "in a kitchen"),
    "oven": _p(0.45, 1.0, "ground", "in a kitchen"),
    "toaster": _p(0.2, 1.3, "surface", "on a kitchen counter"),
    "sink": _p(0.35, 1.5, "surface", "in a kitchen"),
    "refrigerator": _p(0.6, 0.5, "ground", "in a kitchen"),
    "book": _p(0.15, 0.75, "surface", "in a library"),
    "clock": _p(0.18, 1.0, "high", "in a living room"),
    "vase": _p(0.2, 0.6, "surface", "in a living room"),
    "scissors": _p(0.15, 0.8, "surface", "on a craft table"),
    "teddy bear": _p(0.3, 0.8, "any", "in a child's bedroom"),
    "hair drier": _p(0.15, 1.0, "any", "in a bathroom"),
    "toothbrush": _p(0.12, 0.3, "surface", "in a bathroom"),
}

DEFAULT_PRIOR = _p(0.3, 1.0, "any", "in an indoor scene")

_BY_KEY = {canonical_key(name): prior for name, prior in PRIORS.items()}


def prior_for(category: str) -> Prior:
    return _BY_KEY.get(canonical_key(category), DEFAULT_PRIOR)
