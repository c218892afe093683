"""What every renderer gives and takes: ``Renderer.render(plans, K)`` -> K ``RenderedCandidate``s
per plan. GLIGEN (``acp.render.gligen``) implements it; a second layout-to-image backend would
implement the same and the engines would not change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from acp.schema import Candidate, ScenePlan

if TYPE_CHECKING:
    import torch
    from PIL import Image


class RenderedCandidate(NamedTuple):
    """One candidate: its manifest record and its image (not yet written anywhere).

    ``flagged``: the safety checker flagged it and the renderer returned a black image in its
    place. Drop it: do not write, score or export it.

    ``pixels``: the same image as a ``(3, H, W)`` uint8 tensor still on the device the renderer
    ran on, where it has one: the scorers read it there (``picture``) instead of copying
    ``image`` back (``acp.score.pixels``)."""

    candidate: Candidate
    image: Image.Image
    flagged: bool = False
    pixels: torch.Tensor | None = None

    @property
    def picture(self) -> Image.Image | torch.Tensor:
        """The image as the scorers take it: the device tensor where there is one."""
        return self.pixels if self.pixels is not None else self.image


class Renderer(Protocol):
    """A loaded layout-to-image model. ``device`` is where it runs (the scorer's models go
    there too)."""

    device: str

    def render(self, plans: Sequence[ScenePlan], candidates: int) -> list[list[RenderedCandidate]]:
        """``candidates`` images of each plan, in plan order, every candidate of a plan
        returned (flagged ones too)."""
        ...
