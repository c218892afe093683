"""What decides an ``acp generate`` dataset: the run's own choices (concepts, scenes, seed,
size) and the settings each stage owns, composed. ``record()``, stored as ``settings.json``,
is derived from the fields themselves (``acp.settings_record``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from acp import defaults
from acp.concepts import ConceptInput, all_concepts
from acp.errors import InputError
from acp.llm import ChatSettings
from acp.plan.base import PlanSettings
from acp.render.gligen import RenderSettings
from acp.schema import LayoutRules
from acp.score.candidates import ScoreSettings
from acp.segment import MaskSettings
from acp.settings_record import record_of, recorded

IMAGE_FORMATS = ("jpeg", "png")


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` or ``"768x512"`` (width x height), each a multiple of 8 in 64..4096."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        raise InputError(f"--size: expected N or WIDTHxHEIGHT, got {text!r}") from None
    for value in (width, height):
        if not 64 <= value <= 4096 or value % 8:
            raise InputError(
                f"--size: width and height must be multiples of 8 in 64..4096, got {text!r}"
            )
    return width, height


@dataclass(frozen=True)
class ExportSettings:
    """What the run folder holds besides the COCO dataset's defaults: the category file whose
    ids the output follows, every candidate (``keep_candidates``), the image format."""

    categories: Path | None = None
    keep_candidates: bool = False
    image_format: str = defaults.IMAGE_FORMAT

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise InputError(f"--image-format: expected jpeg or png, got {self.image_format!r}")


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides the dataset. ``llm`` set plans with that LLM, else the offline
    heuristic planner; ``masks`` set adds SAM masks. The renderer's size and seed are the run's
    (``size``, ``seed``)."""

    concepts: ConceptInput = field(metadata=recorded(convert=ConceptInput.fingerprint))
    scenes: int | None = None
    objects: tuple[int, int] = defaults.OBJECTS_PER_SCENE
    seed: int = 0
    size: tuple[int, int] = (defaults.IMAGE_SIZE, defaults.IMAGE_SIZE)
    planner: str = field(init=False, default="heuristic")
    llm: ChatSettings | None = None
    max_reasks: int = field(default=defaults.LLM_MAX_REASKS, metadata=recorded(skip=True))
    rules: LayoutRules = field(default_factory=LayoutRules)
    render: RenderSettings = field(default_factory=RenderSettings, metadata=recorded(flatten=""))
    candidates: int = defaults.CANDIDATES
    score: ScoreSettings = field(default_factory=ScoreSettings, metadata=recorded(flatten=""))
    masks: MaskSettings | None = field(default=None, metadata=recorded(flatten="", flag="masks"))
    export: ExportSettings = field(default_factory=ExportSettings, metadata=recorded(flatten=""))

    def __post_init__(self) -> None:
        object.__setattr__(self, "planner", "openai" if self.llm is not None else "heuristic")
        if self.render.size not in (None, self.size) or self.render.seed not in (0, self.seed):
            raise InputError(f"render settings: size and seed are the run's ({self.size}, {self.seed}), "
                             f"got {self.render.size} and {self.render.seed}")
        object.__setattr__(self, "render", replace(self.render, size=self.size, seed=self.seed))
        if not 1 <= self.candidates <= defaults.MAX_CANDIDATES:
            raise InputError(f"candidates must be 1..{defaults.MAX_CANDIDATES}, got {self.candidates}")

    @property
    def plan_settings(self) -> PlanSettings:
        return PlanSettings(width=self.size[0], height=self.size[1], rules=self.rules,
                            categories=tuple(all_concepts(self.concepts)))

    def record(self) -> dict[str, Any]:
        """The JSON of ``settings.json``: what a rerun must match."""
        return json.loads(json.dumps(record_of(self)))
