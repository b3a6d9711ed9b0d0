# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmcv 2.1.0's source made to compile against the installed torch.

mmcv 2.1.0's ``setup.py`` passes ``-std=c++17`` to the C++ compiler and to
nvcc for every torch after 1.12, but torch 2.14 and later need C++20: their
``ATen/ATen.h`` stops with ``#error C++20 or later compatible compiler is
required to use ATen`` (torch 2.13's asks for C++17). Built as released,
mmcv's ops do not compile against those torches. This module reads the
standard that the installed torch's headers require and writes it into
mmcv's ``setup.py``; ``tools/device/build_mmcv.sh`` runs it on the unpacked
source before compiling::

    python -m mmrest_tools.mmcv_source <mmcv-2.1.0 source folder>

It changes nothing where torch's headers accept C++17.
"""
import argparse
import os.path as osp
import re
from typing import Optional

# what ATen.h tests: `__cplusplus < 201703L` (C++17) or `< 202002L` (C++20)
_ATEN_BOUND = re.compile(r'__cplusplus\s*<\s*(\d{6})L')
_CPLUSPLUS_YEARS = {'201402': 14, '201703': 17, '202002': 20, '202302': 23}
# the standard flags of mmcv's setup.py for torch: `-std=c++17` for g++ and
# nvcc, `/std:c++17` for MSVC
_STD_FLAG = re.compile(r'([-/]std[=:]c\+\+)(\d\d)\b')


def required_cxx_standard(aten_header: Optional[str] = None) -> int:
    """The C++ standard that torch's headers require (17, 20, ...).

    Args:
        aten_header (str, optional): the path of ``ATen/ATen.h``. Defaults to
            the installed torch's.

    Returns:
        int: the newest standard that the header's ``__cplusplus`` checks
        name; 17 where they name none.
    """
    if aten_header is None:
        import torch
        aten_header = osp.join(
            osp.dirname(torch.__file__), 'include', 'ATen', 'ATen.h')
    with open(aten_header, encoding='utf-8') as f:
        text = f.read()
    bounds = _ATEN_BOUND.findall(text)
    for value in bounds:
        if value not in _CPLUSPLUS_YEARS:
            raise ValueError(f'{aten_header}: __cplusplus bound {value}L '
                             'names no C++ standard known here')
    return max((_CPLUSPLUS_YEARS[v] for v in bounds), default=17)


def set_cxx_standard(source: str, standard: int) -> int:
    """Raises the C++ standard flags of mmcv's ``setup.py`` to ``standard``.

    Flags below ``standard`` (``-std=c++14``, ``-std=c++17``, ``/std:c++17``)
    are rewritten; those at or above it are kept, so a second run changes
    nothing.

    Args:
        source (str): mmcv's unpacked source folder (with ``setup.py``).
        standard (int): the C++ standard to compile with, e.g. 20.

    Returns:
        int: how many flags were rewritten.
    """
    setup_py = osp.join(source, 'setup.py')
    if not osp.isfile(setup_py):
        raise FileNotFoundError(f'{source} has no setup.py: not an unpacked '
                                'mmcv source folder')
    with open(setup_py, encoding='utf-8') as f:
        text = f.read()
    if not _STD_FLAG.search(text):
        raise ValueError(f'{setup_py} names no -std=c++NN flag: not the '
                         'mmcv setup.py this was written for')
    changed = 0

    def raise_flag(match):
        nonlocal changed
        if int(match.group(2)) >= standard:
            return match.group(0)
        changed += 1
        return f'{match.group(1)}{standard}'

    text = _STD_FLAG.sub(raise_flag, text)
    if changed:
        with open(setup_py, 'w', encoding='utf-8') as f:
            f.write(text)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='Write the C++ standard that the installed torch needs '
        "into mmcv 2.1.0's setup.py (torch >= 2.14 needs C++20).")
    parser.add_argument('source', help="mmcv's unpacked source folder")
    args = parser.parse_args(argv)
    standard = required_cxx_standard()
    if standard <= 17:
        print(f"torch's headers need C++{standard}: mmcv's setup.py as it is")
        return 0
    changed = set_cxx_standard(args.source, standard)
    print(f"torch's headers need C++{standard}: {changed} flag(s) of "
          f"{osp.join(args.source, 'setup.py')} raised to c++{standard}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
