# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Which ResT (v1 or v2) a checkpoint belongs to, from its keys.

Both families name their blocks ``stage{1..4}.{j}.attn.q`` and so on, and
widths coincide (ResT-Base and ResTv2-Tiny are both 96-192-384-768), so a
checkpoint of the other family would load many tensors without a shape
error and leave the rest at random. Each family has keys of its own:

* v1: ``stem.conv1.weight``, ``patch_embed_{2,3,4}.*``,
  ``attn.transform_conv``;
* v2: ``stem.proj.0.weight``, ``patch_{2,3,4}.*``, ``attn.up.0``.
"""
from typing import Iterable, Optional

from .files import CheckpointError, extract_state_dict, load_checkpoint_file
from .safe_load import safe_torch_load

FAMILY_NAMES = {'v1': 'ResT (v1)', 'v2': 'ResT v2'}


def checkpoint_family(keys: Iterable[str]) -> Optional[str]:
    """``'v1'``, ``'v2'`` or None (neither, or both) for state-dict keys
    (a ``backbone.`` or other prefix already removed)."""
    v1 = v2 = False
    for key in keys:
        if key.startswith(('stem.conv1.', 'patch_embed_')) or \
                '.attn.transform_conv.' in key:
            v1 = True
        elif key.startswith(('stem.proj.', 'patch_2.', 'patch_3.',
                             'patch_4.')) or '.attn.up.0.' in key:
            v2 = True
    if v1 == v2:
        return None
    return 'v1' if v1 else 'v2'


def _peek_keys(path: str, prefix: Optional[str], map_location):
    """The state-dict keys of a checkpoint, or None when it cannot be read
    (the loader that follows reports why). Local files are memory-mapped:
    only the keys are needed."""
    checkpoint = None
    if '://' not in str(path):
        try:
            checkpoint = safe_torch_load(path, map_location='cpu', mmap=True)
        except Exception:  # legacy format, unreadable: read it plainly
            checkpoint = None
    try:
        if checkpoint is None:
            checkpoint = load_checkpoint_file(path, map_location)
        return list(extract_state_dict(checkpoint, prefix, repr(path)))
    except Exception:
        return None


def check_checkpoint_family(path: str,
                            expected: str,
                            prefix: Optional[str] = None,
                            map_location='cpu') -> None:
    """Raise :class:`CheckpointError` when the checkpoint at ``path`` is of
    the other ResT family than ``expected`` (``'v1'`` or ``'v2'``).

    Checkpoints with neither family's keys (or unreadable ones) pass: the
    loader deals with them.
    """
    if expected not in FAMILY_NAMES:
        raise ValueError(f"expected must be 'v1' or 'v2', got {expected!r}")
    keys = _peek_keys(path, prefix, map_location)
    found = checkpoint_family(keys or ())
    if found is not None and found != expected:
        model = 'ResTV2' if expected == 'v2' else 'ResT'
        other = 'ResTV2' if found == 'v2' else 'ResT'
        raise CheckpointError(
            f'{path!r} is a {FAMILY_NAMES[found]} checkpoint, not a '
            f'{FAMILY_NAMES[expected]} one: it cannot initialise {model}. '
            f'Use it with type={other!r}, or give {model} a '
            f'{FAMILY_NAMES[expected]} checkpoint.')
