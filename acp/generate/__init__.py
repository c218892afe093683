"""``acp generate``: concepts to a COCO dataset, every stage wired together, resumable.

Read it top-down:

- ``config``: ``GenerateConfig``, the settings each stage owns composed, and its record;
- ``records``: what a plan is between stages (``Laid``, ``Rendered``, ``Finished``);
- ``components``: the one builder of the planner, renderer, scorer and segmenter;
- ``stages``: ``lay``, ``render``, ``finish``, functions over records;
- ``engine``: what an engine is; ``local`` and ``ray``: the two engines;
- ``feed``: plans made ahead in a background thread;
- ``run``: ``generate()``, everything around the engine (lock, settings, resume, summary).

The output folder and its files belong to ``acp.runfolder``.
"""

from acp.generate.config import ExportSettings, GenerateConfig
from acp.generate.local import LocalEngine
from acp.generate.run import GenerateSummary, NothingMade, generate

__all__ = ["ExportSettings", "GenerateConfig", "GenerateSummary", "LocalEngine", "NothingMade", "generate"]
