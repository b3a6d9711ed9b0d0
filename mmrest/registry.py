# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Registration of mmrest's modules in the downstream OpenMMLab registries.

Nothing is registered over another class of the same name: when mmdet's
registries already hold a different ``ResT`` (or hook of ours), importing
mmrest raises :class:`RegistryConflictError`, naming both. mmsegmentation is
optional: any exception while importing it (not installed is silent; a
version check that fails, a conflict, anything else) leaves mmrest and its
mmdet support working and is reported in a one-line warning.
"""
import importlib
import warnings


class RegistryConflictError(RuntimeError):
    """Another class is registered under the name of one of mmrest's."""


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same class of a re-imported mmrest."""
    return a is b or (a.__module__ == b.__module__
                      and a.__qualname__ == b.__qualname__)


def _register(registry, cls: type) -> None:
    existing = registry.module_dict.get(cls.__name__)
    if existing is cls:
        return
    if existing is not None and not _same_class(existing, cls):
        raise RegistryConflictError(
            f"{registry.scope}'s {registry.name} registry already holds "
            f"another {cls.__name__!r}: {existing.__module__}."
            f'{existing.__qualname__}; mmrest will not replace it with '
            f'{cls.__module__}.{cls.__qualname__}. Remove the other '
            'registration (or use the class object instead of its name in '
            'the config).')
    # ``force`` only for the same class re-imported (a reloaded mmrest).
    registry.register_module(module=cls, force=existing is not None)


def _register_in(package: str) -> None:
    from .backbones import ResT, ResTV2
    from .engine import AtomicCheckpointHook, IterSeedHook
    module = importlib.import_module(f'{package}.registry')
    for registry, cls in ((module.MODELS, ResT), (module.MODELS, ResTV2),
                          (module.HOOKS, AtomicCheckpointHook),
                          (module.HOOKS, IterSeedHook)):
        _register(registry, cls)


def register_all() -> None:
    """Register ``ResT`` and ``ResTV2`` in mmdet's and (when it imports)
    mmseg's MODELS,
    mmrest's hooks in their HOOKS, ``ResTLayerDecayOptimizerConstructor``
    in mmengine's OPTIM_WRAPPER_CONSTRUCTORS (which every downstream scope
    searches) and the atomic checkpoint file backend.

    mmdet is required; mmsegmentation is optional (see the module
    docstring).
    """
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    from .checkpoint import register_atomic_backend
    from .engine import ResTLayerDecayOptimizerConstructor
    register_atomic_backend()
    # mmengine's root registry: found from every scope (mmdet, mmseg).
    _register(OPTIM_WRAPPER_CONSTRUCTORS, ResTLayerDecayOptimizerConstructor)
    _register_in('mmdet')
    try:
        _register_in('mmseg')
    except ModuleNotFoundError as e:
        if e.name != 'mmseg':  # installed, but something it needs is not
            _warn_mmseg(e)
    except Exception as e:  # noqa: BLE001: mmseg is optional, whatever fails
        _warn_mmseg(e)


def _warn_mmseg(error: BaseException) -> None:
    first = (str(error).strip().splitlines() or [''])[0]
    warnings.warn(
        f'mmrest: mmsegmentation support is off (importing or registering '
        f'in mmseg failed: {type(error).__name__}: {first}); mmdet support '
        'is unaffected.',
        stacklevel=3)


def register_detectron2_modules() -> None:
    """Register :mod:`mmrest.models` (``Detectron2RetinaHead``) in mmdet's
    MODELS. Called when :mod:`mmrest.models` is imported (the ``*_d2.py``
    configs name it in ``custom_imports``), so that ``import mmrest`` does
    not import all of mmdet's models."""
    from mmdet.registry import MODELS

    from .models.detectron2_heads import Detectron2RetinaHead
    _register(MODELS, Detectron2RetinaHead)
