# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .checkpoint_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write,
                            register_atomic_backend, remove_stale_temp_files)
from .hooks import AtomicCheckpointHook, IterSeedHook
from .layer_decay import ResTLayerDecayOptimizerConstructor

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'AtomicCheckpointHook',
    'IterSeedHook', 'ResTLayerDecayOptimizerConstructor', 'atomic_write',
    'register_atomic_backend', 'remove_stale_temp_files'
]
