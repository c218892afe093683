"""acp: synthetic object-detection data from a concept list.

Plan scenes with an LLM (or the offline heuristic planner), render candidates with GLIGEN,
keep the best by CLIS, export COCO. Heavy libraries (torch, diffusers, transformers) are only
imported by the stages that need them.
"""

__version__ = "0.1.0"
