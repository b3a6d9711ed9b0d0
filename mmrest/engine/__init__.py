# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""What mmrest adds to mmengine's training loop: the hooks and ResT's
layer-wise learning-rate decay. (The atomic checkpoint file backend the
hooks write through is in :mod:`mmrest.checkpoint`.)"""
from .hooks import AtomicCheckpointHook, IterSeedHook
from .layer_decay import ResTLayerDecayOptimizerConstructor

__all__ = [
    'AtomicCheckpointHook', 'IterSeedHook',
    'ResTLayerDecayOptimizerConstructor'
]
