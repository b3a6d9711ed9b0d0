# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .checkpoint_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write,
                            register_atomic_backend, remove_stale_temp_files)
from .hooks import AtomicCheckpointHook, IterSeedHook

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'AtomicCheckpointHook',
    'IterSeedHook', 'atomic_write', 'register_atomic_backend',
    'remove_stale_temp_files'
]
