# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Files that a kill at any moment cannot leave half-written.

A file is written to a hidden temporary file in the same folder, flushed to
disk, and only then renamed over its final name with :func:`os.replace`
(atomic on POSIX and Windows within one file system). A process killed
during the write leaves the old file (or no file) under the final name, and
at worst a stale ``.<name>.<pid>.tmp`` beside it, which
:func:`remove_stale_temp_files` clears. The temporary name never ends in
``.pth``, so nothing that globs for checkpoints can pick it up.
"""
import os
import os.path as osp
import re
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.backends import backends as registered_backends
from mmengine.utils import mkdir_or_exist

#: The name of :class:`AtomicLocalBackend` in mmengine's file backends.
ATOMIC_BACKEND = 'mmrest_atomic_local'

_TEMP_RE = re.compile(r'^\..+\.(\d+)\.tmp$')


def _temp_path(path: str) -> str:
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}.{os.getpid()}.tmp')


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if os.name != 'posix':
        return
    fd = os.open(folder or '.', os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never half-written.

    Readers see either the previous content of ``path`` (or no file) or all
    of ``data``. Parent folders are created as needed.
    """
    path = os.fspath(path)
    folder = osp.dirname(path)
    if folder:
        mkdir_or_exist(folder)
    temp = _temp_path(path)
    try:
        with open(temp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def remove_stale_temp_files(folder: str) -> List[str]:
    """Remove temporary files that a killed :func:`atomic_write` left.

    Only files named like ours whose writing process no longer runs are
    removed. Returns the removed paths.
    """
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = _TEMP_RE.match(name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            os.remove(osp.join(folder, name))
            removed.append(osp.join(folder, name))
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep it
    return True


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with all-or-nothing ``put``.

    ``put`` and ``put_text`` go through :func:`atomic_write`; everything
    else (reading, listing, removing) is :class:`LocalBackend`'s.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj.encode(encoding))


def register_atomic_backend() -> None:
    """Register :class:`AtomicLocalBackend` as ``ATOMIC_BACKEND``.

    Registration by name only: no URI prefix is taken over, so nothing that
    does not ask for it by name changes.
    """
    if registered_backends.get(ATOMIC_BACKEND) is not AtomicLocalBackend:
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
