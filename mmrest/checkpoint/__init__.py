# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Checkpoint handling, all of it.

- :mod:`.safe_load`: weights-only loading (``torch.load(weights_only=True)``
  with a scoped allow-list for mmengine's checkpoints on torch >= 2.6,
  mmrest's restricted unpickler with the same allow-list before);
- :mod:`.files`: a checkpoint file (local, http(s), mmengine backends) and
  the state dict in it, with clear errors (:class:`CheckpointError`);
- :mod:`.family`: which ResT generation (v1 or v2) a checkpoint holds;
- :mod:`.pretrained`: where the authors' ImageNet weights come from, and
  the error for a missing one;
- :mod:`.backbone_weights`: a backbone's weights from a checkpoint
  (``type='Pretrained'`` init configs);
- :mod:`.atomic_io`: checkpoint files written atomically (the file backend
  of :class:`mmrest.engine.AtomicCheckpointHook`);
- :mod:`.detectron2`: the authors' detectron2 detectors converted for
  mmdet (``tools/model_converters/detectron2_to_mmdet.py``).
"""
from .atomic_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write,
                        register_atomic_backend, remove_stale_temp_files)
from .backbone_weights import (MIN_MATCHED_SHARE, PRETRAINED_CFG_KEYS,
                               load_backbone_state_dict,
                               load_pretrained_init_cfg)
from .family import FAMILY_NAMES, check_checkpoint_family, checkpoint_family
from .files import (CheckpointError, download_checkpoint, extract_state_dict,
                    is_http_url, load_checkpoint_file)
from .pretrained import (WEIGHTS_FILES, WEIGHTS_SOURCE, check_pretrained_file,
                         is_local_path, missing_weights_message)
from .safe_load import (RESTRICTED_PICKLE, RestrictedUnpickler,
                        checkpoint_safe_globals, mmengine_safe_loading,
                        restricted_globals, safe_loading, safe_torch_load)

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'CheckpointError', 'FAMILY_NAMES',
    'MIN_MATCHED_SHARE', 'PRETRAINED_CFG_KEYS', 'RESTRICTED_PICKLE',
    'RestrictedUnpickler', 'mmengine_safe_loading', 'restricted_globals',
    'safe_torch_load', 'WEIGHTS_FILES', 'WEIGHTS_SOURCE', 'atomic_write',
    'check_checkpoint_family', 'check_pretrained_file', 'checkpoint_family',
    'checkpoint_safe_globals', 'download_checkpoint', 'extract_state_dict',
    'is_http_url', 'is_local_path', 'load_backbone_state_dict',
    'load_checkpoint_file', 'load_pretrained_init_cfg',
    'missing_weights_message', 'register_atomic_backend',
    'remove_stale_temp_files', 'safe_loading'
]
