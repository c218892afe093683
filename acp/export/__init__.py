"""COCO export: categories, the resumable writer, safe file names, merging with a real set."""

from acp.export.categories import Category, CategorySet, load_categories
from acp.export.coco import (
    ANNOTATIONS_NAME,
    IMAGES_DIR,
    CocoWriter,
    EncodedImage,
    ExportedImage,
    ImageProvenance,
    Instance,
    InstanceProvenance,
    encode_image,
    plan_instances,
)
from acp.export.filenames import safe_filename
from acp.export.merge import MergeSummary, merge_coco

__all__ = [
    "ANNOTATIONS_NAME",
    "IMAGES_DIR",
    "Category",
    "CategorySet",
    "CocoWriter",
    "EncodedImage",
    "ExportedImage",
    "ImageProvenance",
    "Instance",
    "InstanceProvenance",
    "MergeSummary",
    "encode_image",
    "load_categories",
    "merge_coco",
    "plan_instances",
    "safe_filename",
]
