# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmdet modules that reproduce detectron2's test-time behaviour, for the
authors' detectron2 detectors converted with
``tools/model_converters/detectron2_to_mmdet.py``. Importing this package
registers them in mmdet's MODELS (the ``*_d2.py`` configs import it through
``custom_imports``; ``import mmrest`` alone does not)."""
from ..registry import register_detectron2_modules
from .detectron2_heads import Detectron2RetinaHead

register_detectron2_modules()

__all__ = ['Detectron2RetinaHead']
