"""Rendering: GLIGEN candidates per plan (``gligen``), the render folder with its manifest and
resume logic (``folder``), and layout drawings without any model (``preview``).

Importing this package does not import torch; the modules import it where they render.
"""
