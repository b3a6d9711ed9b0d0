# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The former name of :mod:`mmrest.synthetic` (it holds a data generator,
not datasets), kept so that ``mmrest.datasets.generate_shapes_coco``, which
configs' comments and older scripts name, still imports."""
from ..synthetic import SHAPES_CLASSES, generate_shapes_coco, shapes_info

__all__ = ['generate_shapes_coco', 'shapes_info', 'SHAPES_CLASSES']
