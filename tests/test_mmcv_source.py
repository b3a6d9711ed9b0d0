"""mmcv 2.1.0's source made to compile against the installed torch
(mmrest_tools.mmcv_source, run by tools/device/build_mmcv.sh): torch 2.14
and later need C++20, mmcv's setup.py asks for C++17."""
import os.path as osp
import re

import pytest
import torch
from _helpers import ROOT

from mmrest_tools import mmcv_source

# the checks that open torch's ATen/ATen.h, as torch 2.13 and 2.15 write them
TORCH_2_13_ATEN = '''#pragma once

#if !defined(_MSC_VER) && __cplusplus < 201703L
#error C++17 or later compatible compiler is required to use ATen.
#endif
'''
TORCH_2_15_ATEN = '''#pragma once

// MSVC keeps __cplusplus at 199711L unless /Zc:__cplusplus is passed, so check
// _MSVC_LANG there instead.
#if (defined(_MSVC_LANG) && _MSVC_LANG < 202002L) || \\
    (!defined(_MSC_VER) && __cplusplus < 202002L)
#error C++20 or later compatible compiler is required to use ATen.
#endif
'''
# the lines of mmcv 2.1.0's setup.py that choose the standard (parrots, g++
# by torch version, MSVC, nvcc)
MMCV_SETUP = '''
        extra_compile_args = {
            'nvcc': [cuda_args, '-std=c++14'] if cuda_args else ['-std=c++14'],
            'cxx': ['-std=c++14'],
        }
            if parse_version(torch.__version__) <= parse_version('1.12.1'):
                extra_compile_args['cxx'] = ['-std=c++14']
            else:
                extra_compile_args['cxx'] = ['-std=c++17']
        else:
            if parse_version(torch.__version__) <= parse_version('1.12.1'):
                extra_compile_args['cxx'] = ['/std:c++14']
            else:
                extra_compile_args['cxx'] = ['/std:c++17']
            extra_compile_args['cxx'] = ['-Wall', '-std=c++17']
            if parse_version(torch.__version__) <= parse_version('1.12.1'):
                extra_compile_args['nvcc'] += ['-std=c++14']
            else:
                extra_compile_args['nvcc'] += ['-std=c++17']
'''


def _standards(text):
    return sorted(int(v) for v in re.findall(r'std[=:]c\+\+(\d+)', text))


@pytest.mark.parametrize('header, standard', [
    (TORCH_2_13_ATEN, 17),
    (TORCH_2_15_ATEN, 20),
    ('#pragma once\n', 17),
])
def test_required_standard_is_read_from_atens_check(tmp_path, header,
                                                    standard):
    path = tmp_path / 'ATen.h'
    path.write_text(header)
    assert mmcv_source.required_cxx_standard(str(path)) == standard


def test_an_unknown_cplusplus_bound_is_refused(tmp_path):
    path = tmp_path / 'ATen.h'
    path.write_text('#if __cplusplus < 201104L\n#error old\n#endif\n')
    with pytest.raises(ValueError, match=r'ATen\.h.*201104L'):
        mmcv_source.required_cxx_standard(str(path))


def test_the_installed_torch_needs_cxx20_from_2_14():
    """torch 2.14's headers were the first to need C++20 (read off the
    2.13.0, 2.14.1 and 2.15.0 wheels, 2026-12-06)."""
    major, minor = (int(v) for v in torch.__version__.split('.')[:2])
    expected = 20 if (major, minor) >= (2, 14) else 17
    assert mmcv_source.required_cxx_standard() == expected


def test_setup_flags_below_the_standard_are_raised(tmp_path):
    setup_py = tmp_path / 'setup.py'
    setup_py.write_text(MMCV_SETUP)
    assert _standards(MMCV_SETUP) == [14] * 6 + [17] * 4
    assert mmcv_source.set_cxx_standard(str(tmp_path), 17) == 6
    raised = setup_py.read_text()
    assert _standards(raised) == [17] * 10
    assert mmcv_source.set_cxx_standard(str(tmp_path), 20) == 10
    raised = setup_py.read_text()
    assert _standards(raised) == [20] * 10
    # only the numbers changed: the MSVC flags keep their form
    assert raised.count('/std:c++20') == 2
    assert re.sub(r'c\+\+\d+', 'c++N',
                  raised) == re.sub(r'c\+\+\d+', 'c++N', MMCV_SETUP)
    # a second run (build_mmcv.sh on a kept build folder) changes nothing
    assert mmcv_source.set_cxx_standard(str(tmp_path), 20) == 0
    assert setup_py.read_text() == raised


def test_a_folder_that_is_not_mmcvs_source_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='no setup.py'):
        mmcv_source.set_cxx_standard(str(tmp_path), 20)
    setup_py = tmp_path / 'setup.py'
    setup_py.write_text('from setuptools import setup\nsetup()\n')
    with pytest.raises(ValueError, match='names no -std'):
        mmcv_source.set_cxx_standard(str(tmp_path), 20)
    assert setup_py.read_text() == 'from setuptools import setup\nsetup()\n'


@pytest.mark.parametrize('standard', [17, 20])
def test_command_line_rewrites_only_for_a_newer_standard(
        tmp_path, monkeypatch, capsys, standard):
    (tmp_path / 'setup.py').write_text(MMCV_SETUP)
    monkeypatch.setattr(mmcv_source, 'required_cxx_standard', lambda: standard)
    assert mmcv_source.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f'C++{standard}' in out
    text = (tmp_path / 'setup.py').read_text()
    if standard == 17:
        assert text == MMCV_SETUP
    else:
        assert _standards(text) == [20] * 10 and '10 flag(s)' in out


def test_build_script_raises_the_standard_before_compiling():
    """tools/device/build_mmcv.sh runs the module on the unpacked source,
    with the environment's Python, before mmcv's setup.py builds."""
    script = open(osp.join(ROOT, 'tools', 'device', 'build_mmcv.sh')).read()
    steps = [
        line.strip() for line in script.splitlines()
        if not line.lstrip().startswith('#')
    ]
    unpack = next(i for i, s in enumerate(steps) if 'tar -xzf' in s)
    raise_std = steps.index(
        '"$python" -m mmrest_tools.mmcv_source "$build/mmcv-2.1.0"')
    build = next(i for i, s in enumerate(steps)
                 if 'setup.py' in s and 'bdist_wheel' in s)
    assert unpack < raise_std < build
