"""CLIS scoring: how plausible a layout is (CLIS-L) and how well an image shows its plan (CLIS-I).

- ``bank``: a reference bank of real layouts built from any COCO-format annotation file;
- ``layout``: CLIS-L, a layout scored against the bank (``LayoutScorer``);
- ``image``: CLIS-I with CLIP (``ImageScorer``);
- ``judge``: the optional VLM judge for instances CLIP is unsure about;
- ``candidates``: ``Scorer``, CLIS-L and CLIS-I combined into a plan's ``PlanScores`` (one
  ``CandidateScore`` per candidate, the best marked), for ``score candidates`` and ``generate``;
- ``dataset``: scoring every image and box of an existing COCO dataset.

Every score is on a 0-100 scale. CLIS-I and the paper's CLIS-L (``--clis-l-method paper``) keep
the paper's thresholds (instance CLIS-I 60, CLIS-L 50); acp's CLIS-L v2 is the share of real
layouts that are less plausible, so its threshold is 10 (``acp.defaults.MIN_CLIS_L``, see
docs/architecture.md). Importing this package does not import torch.
"""

from acp.score.bank import Bank
from acp.score.candidates import PlanScores, Scorer, Thresholds, compose_clis, layout_fields
from acp.score.image import ImageScore, ImageScorer, InstanceScore, Scene, SceneObject
from acp.score.layout import LayoutScore, LayoutScorer, PairScore

__all__ = [
    "Bank",
    "ImageScore",
    "ImageScorer",
    "InstanceScore",
    "LayoutScore",
    "LayoutScorer",
    "PairScore",
    "PlanScores",
    "Scene",
    "SceneObject",
    "Scorer",
    "Thresholds",
    "compose_clis",
    "layout_fields",
]
