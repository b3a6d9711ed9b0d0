# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Synthetic data that needs no download: :func:`generate_shapes_coco`
writes a shapes set in COCO's layout (instances, and optionally the label
maps of a semantic-segmentation set), which the demos (``make demo``) and
the tests train and evaluate on. It is read by mmdet's ``CocoDataset`` and
mmseg's ``BaseSegDataset``: mmrest defines no dataset class."""
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import generate_shapes_coco, shapes_info

__all__ = ['generate_shapes_coco', 'shapes_info', 'SHAPES_CLASSES']
