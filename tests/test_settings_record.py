"""A run's settings record (``settings.json``) is derived from the settings dataclasses, and
stays what it was for the same settings: a run made by an earlier acp still resumes. The
expected records below were written by the hand-listed ``GenerateConfig.record()`` that the
derived one replaced."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acp.concepts import ConceptInput
from acp.generate import ExportSettings, GenerateConfig
from acp.llm import ChatSettings
from acp.render.gligen import RenderSettings
from acp.schema import LayoutRules
from acp.score.candidates import ScoreSettings
from acp.score.judge import JudgeSettings
from acp.segment import MaskSettings
from acp.settings_record import record_of, recorded

PETS = ConceptInput(vocabulary=("dog", "cat"))
CASES = {
    # Older runs scored with CLIS-L v2, their default; today's default (v3) is recorded.
    "defaults": GenerateConfig(concepts=PETS, score=ScoreSettings(clis_l_method="v2")),
    "everything": GenerateConfig(
        concepts=ConceptInput(quotas=(("dog", 3), ("cat", 2))), scenes=7, objects=(2, 4), seed=5,
        size=(768, 512), llm=ChatSettings(model="m1", base_url="http://127.0.0.1:9/v1", concurrency=3,
                                          timeout=30.0, api_key="sk-secret"),
        max_reasks=1, rules=LayoutRules(max_overlap=0.5, on_overlap="flag"),
        render=RenderSettings(model="some/gligen", steps=10, guidance=5.0, beta=0.5, negative_prompt="blurry",
                              safety_checker=True),
        candidates=3,
        score=ScoreSettings(clip_model="some/clip", embed_model="emb", clis_l_method="paper",
                            judge=JudgeSettings("vlm", "http://x/v1", 5.0, 7, api_key="sk-judge"),
                            min_clis_l=20.0, min_clis_i=None),
        masks=MaskSettings("some/sam"), export=ExportSettings(keep_candidates=True, image_format="png")),
    "judge_defaults": GenerateConfig(concepts=PETS, score=ScoreSettings(judge=JudgeSettings("vlm"),
                                                                        clis_l_method="v2")),
}
# Written by the hand-listed record() of acp before the settings were composed.
EXPECTED = json.loads((Path(__file__).parent / "data" / "settings_records.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_record_is_what_older_runs_stored(case: str) -> None:
    record = CASES[case].record()
    assert record == EXPECTED[case]
    assert "sk-" not in json.dumps(record)  # keys are never recorded


def test_a_folder_model_is_recorded_as_its_absolute_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "clip").mkdir()
    monkeypatch.chdir(tmp_path)
    record = GenerateConfig(concepts=PETS, score=ScoreSettings(clip_model="clip")).record()
    assert record["clip_model"] == str((tmp_path / "clip").resolve())


def test_fields_say_how_they_are_recorded() -> None:
    @dataclass(frozen=True)
    class Inner:
        name: str = "x"
        secret: str = field(default="s", metadata=recorded(skip=True))

    @dataclass(frozen=True)
    class Outer:
        kept: int = 1
        added_later: str = field(default="off", metadata=recorded(omit="default"))
        optional: str | None = field(default=None, metadata=recorded(omit="empty"))
        inner: Inner | None = field(default=None, metadata=recorded(flatten="in_", flag="has_inner"))

    assert record_of(Outer()) == {"kept": 1, "has_inner": False}
    assert record_of(Outer(2, "on", "y", Inner("z"))) == {
        "kept": 2, "added_later": "on", "optional": "y", "has_inner": True, "in_name": "z"}
