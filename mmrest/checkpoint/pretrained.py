# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Where the authors' ImageNet weights come from, and the error for a
missing one.

The detection and segmentation configs start the backbone from
``checkpoints/rest_<arch>.pth``. When that file is missing, the error names
the path it looked for and says where to get the file (or how to train from
scratch instead). ``tools/train.py`` runs that check on a whole config
before anything is built
(:func:`mmrest_tools.prerun_checks.check_pretrained_files`), so it stops at
once instead of after loading a dataset.
"""
import os
import os.path as osp
from typing import Any

#: The authors' repository, which publishes the ImageNet-1K checkpoints.
WEIGHTS_SOURCE = 'https://github.com/wofmanaf/ResT'
#: The checkpoints it publishes, one per variant (ResT, then ResT v2).
WEIGHTS_FILES = ('rest_lite.pth', 'rest_small.pth', 'rest_base.pth',
                 'rest_large.pth', 'restv2_tiny_224.pth',
                 'restv2_small_224.pth', 'restv2_base_224.pth',
                 'restv2_large_224.pth')


def missing_weights_message(path: str) -> str:
    """The error text for a pretrained checkpoint that does not exist."""
    path = str(path)
    return (
        f'Pretrained checkpoint not found: {path!r} (looked for '
        f'{osp.abspath(osp.expanduser(path))}). The authors of ResT publish '
        f'the ImageNet-1K weights {", ".join(WEIGHTS_FILES)} at '
        f'{WEIGHTS_SOURCE} (download links in its README); save the one for '
        f'this variant as {path!r}. To train the backbone from scratch '
        f'instead, pass --cfg-options model.backbone.init_cfg=None.')


def is_local_path(path: Any) -> bool:
    """A path of the local file system (not a URL or another backend's)."""
    return isinstance(path, (str, os.PathLike)) and '://' not in str(path)


def check_pretrained_file(path: str) -> None:
    """Raise FileNotFoundError with :func:`missing_weights_message` when
    ``path`` is a local file path that does not exist (URLs and other
    storage backends are left to the loader)."""
    if is_local_path(path) and not osp.isfile(osp.expanduser(str(path))):
        raise FileNotFoundError(missing_weights_message(str(path)))
