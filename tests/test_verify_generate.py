"""`acp generate --verify` end to end (tiny GLIGEN and CLIP): with a detector stand-in that finds
each planned object where the plan put it (and, when asked, one object more), the records,
settings, resume and each --unplanned policy; with the tiny random OWLv2, the real load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from acp.boxes import iou_matrix, plan_to_coco
from acp.cli import app
from acp.jsonl import read_records
from acp.schema import ScenePlan
from acp.score.pixels import image_size
from acp.score.verify import Detection, Verifier, VerifySettings
from tests.test_generate import generate_args

if TYPE_CHECKING:
    from acp.score.pixels import Picture

runner = CliRunner()
VERIFIER_KEYS = {"detector_model", "detection_threshold", "unplanned_threshold", "verify_iou", "unplanned",
                 "refine_boxes"}


def inset(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box 10 % inside ``box`` on each side: IoU 0.64 with it, so verified and visibly refined."""
    x, y, w, h = box
    return (x + 0.1 * w, y + 0.1 * h, 0.8 * w, 0.8 * h)


def extra_box(plan: ScenePlan, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box of the plan's first category that matches none of its planned boxes and lies
    inside none (an unplanned instance)."""
    width, height = size
    first = plan.objects[0].category
    same = plan_to_coco([o.bbox for o in plan.objects if o.category == first], width, height).reshape(-1, 4)
    side = min(width, height) / 4
    for x, y in [(0, 0), (width - side, 0), (0, height - side), (width - side, height - side)]:
        box = (float(x), float(y), side, side)
        inside = [max(0.0, min(x + side, b[0] + b[2]) - max(x, b[0])) * max(0.0, min(y + side, b[1] + b[3])
                  - max(y, b[1])) / side**2 for b in same]
        if iou_matrix([box], same.tolist()).max() < 0.5 and max(inside) < 0.8:
            return box
    raise AssertionError("no free corner in this plan")


class StandIn:
    """A detector that sees what each plan asked for: every planned object just inside its box
    (score 0.9), and with ``extra`` one more object of the plan's first category (0.8)."""

    name = "stand-in"
    family = "owl"

    def __init__(self, extra: bool):
        self.extra = extra
        self.plans: list[ScenePlan] = []
        self.images = 0  # images detected, over the run

    def detect(self, images: Sequence[Picture], queries: Sequence[Sequence[str]], min_score: float
               ) -> list[list[Detection]]:
        assert len(self.plans) == len(images)
        self.images += len(images)
        found = []
        for plan, image, asked in zip(self.plans, images, queries, strict=True):
            assert list(asked) == list(dict.fromkeys(o.category for o in plan.objects))
            size = image_size(image)  # the renderer's device tensor, or a PIL image
            boxes = plan_to_coco([o.bbox for o in plan.objects], *size).reshape(-1, 4).tolist()
            one = [Detection(o.category, 0.9, inset(b)) for o, b in zip(plan.objects, boxes, strict=True)]
            if self.extra:
                one.append(Detection(plan.objects[0].category, 0.8, extra_box(plan, size)))
            found.append(one)
        return found


class StandInVerifier(Verifier):
    """The real checks over the stand-in's detections (it is told the plans of each call)."""

    def check_plans(self, items: Sequence[tuple[ScenePlan, Picture]]) -> list[Any]:
        assert isinstance(self.detector, StandIn)
        self.detector.plans = [plan for plan, _ in items]
        return super().check_plans(items)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``make(extra)``: the next runs' verifier, its detector returned to count its images."""
    from acp.generate import components

    made: dict[str, StandIn] = {}

    def make(extra: bool = False) -> StandIn:
        detector = made["detector"] = StandIn(extra)
        return detector

    def verifier(settings: VerifySettings | None, device: str | None, **_: Any) -> Verifier | None:
        return StandInVerifier(made["detector"], settings) if settings is not None else None

    monkeypatch.setattr(components, "verifier", verifier)
    return make


def args(models: dict[str, Path], out: Path, *extra: str) -> list[str]:
    # The detector folder is real (acp looks for every model first); the stand-in replaces it.
    return generate_args(models, out, "--scenes", "4", "--detector-model", str(models["owlv2"]), *extra)


def records(path: Path) -> list[dict[str, Any]]:
    return [r for _, r, _ in read_records(path)]


def test_verified_records_and_the_settings_record(tiny_models: dict[str, Path], tmp_path: Path,
                                                   stand_in: Any) -> None:
    plain = tmp_path / "plain"
    assert runner.invoke(app, generate_args(tiny_models, plain, "--scenes", "4")).exit_code == 0
    # Without --verify nothing of the verifier is written: earlier runs' files read as before.
    assert not VERIFIER_KEYS & set(json.loads((plain / "settings.json").read_text()))
    for name in ("scores.jsonl", "progress.jsonl"):
        assert "verif" not in (plain / name).read_text() and "detections" not in (plain / name).read_text()
    assert "verification" not in (plain / "annotations.json").read_text()

    detector = stand_in(extra=False)
    out = tmp_path / "verified"
    result = runner.invoke(app, args(tiny_models, out, "--refine-boxes"))
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "settings.json").read_text())
    assert settings["detector_model"] == str(tiny_models["owlv2"].resolve())
    assert {k: settings[k] for k in VERIFIER_KEYS - {"detector_model"}} == {
        "detection_threshold": None, "unplanned_threshold": None, "verify_iou": 0.5, "unplanned": "drop",
        "refine_boxes": True}
    scores = records(out / "scores.jsonl")
    assert len(scores) == 8 and detector.images == 8  # every candidate verified, once
    for record in scores:
        assert record["verification"] == pytest.approx(64.0)  # IoU 0.64 everywhere, nothing unplanned
        assert {o["verification"] for o in record["objects"]} == {"refined"}
        assert all(o["detection_iou"] == pytest.approx(0.64) and o["detection_score"] == 0.9
                   for o in record["objects"])
        assert [d["role"] for d in record["detections"]] == ["match"] * len(record["objects"])
    kept = [r for r in records(out / "progress.jsonl") if r["status"] == "kept"]
    assert kept
    for result_ in kept:
        assert result_["verification"] == pytest.approx(64.0)
        assert sorted(result_["verified_categories"]) == sorted(result_["kept_categories"])
        assert not result_.get("missing_categories") and not result_.get("unplanned_categories")
    data = json.loads((out / "annotations.json").read_text())
    assert data["annotations"]
    for annotation in data["annotations"]:
        provenance = annotation["acp"]
        assert provenance["verification"] == "refined" and annotation["iscrowd"] == 0
        assert annotation["bbox"] == pytest.approx(list(inset(provenance["planned_bbox"])), abs=0.02)

    # A rerun finds every plan finished: nothing is verified again.
    detector = stand_in(extra=False)
    again = runner.invoke(app, args(tiny_models, out, "--refine-boxes"))
    assert again.exit_code == 0, again.output
    assert detector.images == 0
    # Verifying is another setting: the plain run's folder refuses it.
    refused = runner.invoke(app, args(tiny_models, plain))
    assert refused.exit_code == 1
    assert "other settings" in refused.output and "detector_model" in refused.output


def test_a_resumed_run_verifies_only_the_unfinished_plan(tiny_models: dict[str, Path], tmp_path: Path,
                                                         stand_in: Any) -> None:
    out = tmp_path / "out"
    stand_in()
    assert runner.invoke(app, args(tiny_models, out)).exit_code == 0
    progress = out / "progress.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]))  # as if killed before the last plan was written
    detector = stand_in()
    assert runner.invoke(app, args(tiny_models, out)).exit_code == 0
    assert detector.images == 2  # its two candidates
    scored = [(r["plan_id"], r["index"]) for r in records(out / "scores.jsonl")]
    assert len(scored) == len(set(scored)) == 8


@pytest.mark.parametrize("policy", ["drop", "ignore", "pseudo-label"])
def test_each_unplanned_policy(tiny_models: dict[str, Path], tmp_path: Path, stand_in: Any,
                               policy: str) -> None:
    """Every candidate holds one object more than its plan."""
    stand_in(extra=True)
    out = tmp_path / "out"
    result = runner.invoke(app, args(tiny_models, out, "--unplanned", policy))
    assert result.exit_code == 0, result.output
    scores = records(out / "scores.jsonl")
    for record in scores:
        assert [d["role"] for d in record["detections"]].count("unplanned") == 1
        objects = len(record["objects"])
        assert record["verification"] == pytest.approx(64.0 * objects / (objects + 1), abs=1e-3)
    results = records(out / "progress.jsonl")
    data = json.loads((out / "annotations.json").read_text())
    if policy == "drop":
        assert not data["images"] and not data["annotations"]
        assert all(not r["kept"] and r["reason"].startswith("1 unlabeled objects the detector is sure of")
                   for r in scores)
        assert {r["status"] for r in results} == {"dropped"}
        # Counted as the detector's drops in the summary, not as CLIP's.
        assert {r["reason_kind"] for r in results} == {"unlabeled objects the detector is sure of"}
        return
    assert len(data["images"]) == 4
    names = {c["id"]: c["name"] for c in data["categories"]}
    for image in data["images"]:
        mine = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        extra = [a for a in mine if a["acp"]["object_id"] is None]
        planned = [a for a in mine if a["acp"]["object_id"] is not None]
        assert len(extra) == 1 and planned
        (region,) = extra
        assert region["iscrowd"] == (1 if policy == "ignore" else 0)
        assert region["acp"]["verification"] == policy and region["acp"]["detection_score"] == 0.8
        plan_id = image["acp"]["plan_id"]
        kept = next(r for r in results if r["plan_id"] == plan_id)
        assert kept["unplanned_categories"] == [names[region["category_id"]]]
        assert all(a["acp"]["verification"] == "verified" and a["iscrowd"] == 0 for a in planned)


def test_the_tiny_owl_detector_verifies_a_run(tiny_models: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loader and detector in a run: each candidate detected once, in one call per batch."""
    from acp.score.detector import ZeroShotDetector

    calls: list[int] = []
    original = ZeroShotDetector.detect

    def counted(self: ZeroShotDetector, images: Any, queries: Any, min_score: float) -> Any:
        calls.append(len(images))
        return original(self, images, queries, min_score)

    monkeypatch.setattr(ZeroShotDetector, "detect", counted)
    out = tmp_path / "out"
    result = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "3", "--verify",
                                              "--detector-model", str(tiny_models["owlv2"]),
                                              "--unplanned", "ignore"))
    assert result.exit_code == 0, result.output
    scores = records(out / "scores.jsonl")
    assert sum(calls) == len(scores) == 6
    assert all(o["verification"] in ("verified", "missing") for r in scores for o in r["objects"])
    assert all(r["verification"] is not None for r in scores)
    kinds = {r.get("reason_kind") for r in records(out / "progress.jsonl") if r["status"] == "dropped"}
    assert "no candidate passes the CLIS-I threshold" not in kinds


def test_a_bad_detector_is_one_line_before_any_model_loads(tiny_models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "1", "--detector-model",
                                              str(tmp_path / "no-such-detector")))
    assert result.exit_code == 1
    assert "--detector-model" in result.output and "no-such-detector" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    lone = runner.invoke(app, generate_args(tiny_models, out, "--scenes", "1", "--unplanned", "ignore"))
    assert lone.exit_code != 0 and "--unplanned: only with --verify" in lone.output
