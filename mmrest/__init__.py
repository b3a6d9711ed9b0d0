# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmrest: the ResT backbone for OpenMMLab (mmdet and mmseg).

Importing this package registers ``ResT`` and ``ResTV2`` in mmdet's and
mmseg's ``MODELS`` registries (so ``custom_imports=dict(imports=['mmrest'])``
is all a config needs) and lets mmengine checkpoints load under torch's
``weights_only``.
"""
from .backbones import ResT, ResTV2
from .checkpoint import allow_mmengine_checkpoints
from .registry import register_all
from .version import __version__

allow_mmengine_checkpoints()
register_all()

__all__ = ['ResT', 'ResTV2', '__version__']
