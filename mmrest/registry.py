# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Registration of mmrest's modules in the downstream OpenMMLab registries."""
import importlib


def register_all() -> None:
    """Register ``ResT`` in mmdet's and (when installed) mmseg's MODELS,
    mmrest's hooks in their HOOKS, and the atomic checkpoint file backend.

    mmdet is required; mmsegmentation is optional.
    """
    from .backbones import ResT, ResTV2
    from .engine import (AtomicCheckpointHook, IterSeedHook,
                         register_atomic_backend)
    register_atomic_backend()
    for name in ('mmdet.registry', 'mmseg.registry'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            if name == 'mmdet.registry':
                raise
            continue
        for registry, cls in ((module.MODELS, ResT),
                              (module.MODELS, ResTV2),
                              (module.HOOKS, AtomicCheckpointHook),
                              (module.HOOKS, IterSeedHook)):
            if registry.module_dict.get(cls.__name__) is not cls:
                registry.register_module(module=cls, force=True)
