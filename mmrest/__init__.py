# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmrest: the ResT backbone for OpenMMLab (mmdet and mmseg).

Importing this package registers ``ResT``, ``ResTV2`` and mmrest's hooks in
mmdet's and
(when it imports) mmseg's registries, so
``custom_imports=dict(imports=['mmrest'])`` is all a config needs. It
changes nothing else in the process: no torch or mmengine setting, no
allow-list of ``torch.load`` (mmrest's own loads use a scoped one, see
:mod:`mmrest.checkpoint`).
"""
from .backbones import ResT, ResTV2
from .registry import register_all
from .version import __version__

register_all()

__all__ = ['ResT', 'ResTV2', '__version__']
