# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Registration of mmrest's modules in the downstream OpenMMLab registries."""
import importlib


def register_all() -> None:
    """Register ``ResT`` in mmdet's and (when installed) mmseg's MODELS.

    mmdet is required; mmsegmentation is optional.
    """
    from .backbones import ResT
    for name in ('mmdet.registry', 'mmseg.registry'):
        try:
            registry = importlib.import_module(name).MODELS
        except ImportError:
            if name == 'mmdet.registry':
                raise
            continue
        if registry.module_dict.get('ResT') is not ResT:
            registry.register_module(module=ResT, force=True)
