# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Every link between the repository's Markdown files leads somewhere.

A relative link must name a file or folder of the repository, and a
``#fragment`` a heading of its target, as GitHub forms heading anchors
(lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for a
repeated heading). Headings and links inside fenced code are not counted.
The repository paths the text names in code spans exist, and so do the
``make`` targets it names and the options its command lines give the
repository's tools.
"""
import functools
import glob
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
from _helpers import run_program

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# [text](target) and [text](target "title"); images too
_LINK = re.compile(r'\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_HEADING = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')


def _tracked_files(*patterns):
    """The repository's files (git's) that match ``patterns``, sorted."""
    out = subprocess.run(['git', 'ls-files', *patterns],
                         cwd=ROOT,
                         capture_output=True,
                         text=True,
                         check=True).stdout.split()
    return sorted(out)


def _markdown_files():
    return _tracked_files('*.md')


def _current_documents():
    """The Markdown files but docs/results/'s (records of past runs, whose
    commands are what ran then)."""
    return [p for p in _markdown_files() if not p.startswith('docs/results/')]


def _outside_fences(text):
    """The lines of ``text`` that are not inside fenced code blocks."""
    fence = None
    for line in text.splitlines():
        marker = re.match(r'^ {0,3}(`{3,}|~{3,})', line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        if fence is None:
            yield line


def github_anchor(heading):
    """The anchor GitHub gives a heading's text (before de-duplication)."""
    text = re.sub(r'<[^>]+>', '', heading)  # inline HTML
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)  # links: their text
    text = text.strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)  # keeps letters, digits, _ and -
    return text.replace(' ', '-')


def anchors(text):
    """Every heading anchor of a Markdown text, repeated ones numbered."""
    seen, found = {}, set()
    for line in _outside_fences(text):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_anchor(match.group(2))
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f'{slug}-{count}')
        seen[slug] = count + 1
    return found


def _links(text):
    for line in _outside_fences(text):
        line = re.sub(r'`[^`]*`', '', line)  # inline code is not a link
        for match in _LINK.finditer(line):
            yield match.group(1)


@functools.lru_cache(maxsize=None)
def _read(full_path):
    with open(full_path, encoding='utf-8') as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _anchors_of(full_path):
    """:func:`anchors` of a file, read and parsed once for all its links."""
    return anchors(_read(full_path))


def _broken_links(md_path):
    broken = []
    for target in _links(_read(osp.join(ROOT, md_path))):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, mailto:
            continue
        path, _, fragment = target.partition('#')
        dest = osp.normpath(osp.join(osp.dirname(md_path), path)) \
            if path else md_path
        full = osp.join(ROOT, dest)
        if not osp.exists(full):
            broken.append(f'{target}: no file {dest}')
        elif fragment and dest.endswith('.md') and \
                fragment.lower() not in _anchors_of(full):
            broken.append(f'{target}: no heading #{fragment} in {dest}')
    return broken


def test_github_anchor_rules():
    text = ('# Title\n## What was proven, and what not\n'
            '### `make test` on torch 2.1 (CPU)\n## Title\n'
            '```\n# not a heading\n```\n## ResT v2: the [paper](x.md)\n')
    assert anchors(text) == {
        'title', 'what-was-proven-and-what-not', 'make-test-on-torch-21-cpu',
        'title-1', 'rest-v2-the-paper'
    }


def test_broken_links_are_found(tmp_path, monkeypatch):
    (tmp_path / 'a.md').write_text(
        '# A\n[ok](b.md#b-one) [self](#a) [gone](c.md) [bad](b.md#b-two)\n'
        '```\n[in code](nowhere.md)\n```\n[web](https://example.com/x#y)\n')
    (tmp_path / 'b.md').write_text('# B one\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', str(tmp_path))
    assert _broken_links('a.md') == [
        'c.md: no file c.md', 'b.md#b-two: no heading #b-two in b.md'
    ]


@pytest.mark.parametrize('md_path', _markdown_files())
def test_links_lead_somewhere(md_path):
    assert _broken_links(md_path) == []


# Paths of other repositories that the text names as theirs (mmdet's and
# mmseg's tools and bases, the authors' detectron2 and mmseg 0.x files), a
# former config name, and the package data a wheel builds.
OTHER_REPOSITORIES = {
    'tools/analysis_tools/benchmark.py', 'tools/analysis_tools/get_flops.py',
    'configs/_base_/datasets/ade20k.py',
    'configs/_base_/schedules/schedule_160k.py',
    'configs/ResTv1/retinanet_rest_small_FPN_1x.yaml',
    'configs/ResTv1/mask_rcnn_rest_small_FPN_1x.yaml',
    'configs/ResTv2/mask_rcnn_restv2_tiny_FPN_3x.yaml',
    'configs/_base_/models/upernet_restv2.py', 'tools/align_resize.py',
    'configs/retinanet/rest_small_fpn_1x_coco.py', 'mmrest/.mim'
}
_PATH = re.compile(r'`((?:tools|configs|mmrest|mmrest_tools|tests|docs|'
                   r'requirements|\.ci)/[^`\s]*)`')


def _named_paths(text):
    """The repository paths in code spans (without wildcards, placeholders,
    ``::test`` or ``:line`` suffixes)."""
    for match in _PATH.finditer(text):
        path = match.group(1).rstrip('/').split(':')[0]
        if not any(c in path for c in '*<>{}$'):
            yield path


@pytest.mark.parametrize('md_path', _markdown_files())
def test_named_paths_and_make_targets_exist(md_path):
    text = _read(osp.join(ROOT, md_path))
    missing = [
        p for p in _named_paths(text)
        if p not in OTHER_REPOSITORIES and not osp.exists(osp.join(ROOT, p))
    ]
    assert missing == []
    targets = set(
        re.findall(r'^([\w-]+):', _read(osp.join(ROOT, 'Makefile')), re.M))
    assert {'test', 'demo', 'setup', 'setup-oldest'} <= targets
    assert set(re.findall(r'`make ([\w-]+)', text)) - targets == set()


def test_named_paths_are_found():
    text = ('`tools/train.py` `configs/x/*.py` `tests/test_a.py::test_b` '
            '`mmrest/kernels.py:12` `tools/` `docs/<name>.md` `pip install`')
    assert list(_named_paths(text)) == [
        'tools/train.py', 'tests/test_a.py', 'mmrest/kernels.py', 'tools'
    ]


# The shell scripts that pass their options on, and the program reading them
SCRIPT_PROGRAMS = {
    'tools/dist_train.sh': 'tools/train.py',
    'tools/slurm_train.sh': 'tools/train.py',
    'tools/dist_test.sh': 'tools/test.py',
    'tools/slurm_test.sh': 'tools/test.py',
    'tools/device/run_gpu_check.sh': 'tools/gpu_check.py',
    'tools/device/run_gpu_profile.sh': 'tools/device/gpu_profile.py',
}
# A tool's command line in the text: the tool, then the words up to the end
# of the code span, table cell or line (continued lines joined first)
_COMMAND = re.compile(
    r'(?<![\w/.-])(tools/[\w/]+\.(?:py|sh))((?:[ \t]+[^\s`|;&]+)*)')
# A child that runs each tool named on its command line up to its argument
# parser and prints the option strings of that parser, as JSON
_OPTIONS_CHILD = """
import argparse, json, runpy, sys
class Parsed(Exception):
    pass
def stop(self, *args, **kwargs):
    raise Parsed(sorted(self._option_string_actions))
argparse.ArgumentParser.parse_args = stop
argparse.ArgumentParser.parse_known_args = stop
options = {}
for tool in sys.argv[1:]:
    sys.argv = [tool]
    try:
        runpy.run_path(tool, run_name='__main__')
        options[tool] = 'parsed nothing'
    except Parsed as e:
        options[tool] = e.args[0]
print(json.dumps(options))
"""


def documented_options(text: str) -> dict:
    """``{program: {option: [line, ...]}}``: the ``--options`` that the
    text's command lines give each tool (a shell script's options under the
    program it passes them to)."""
    found = {}
    text = re.sub(r'\\\n\s*', ' ', text)
    for line in text.splitlines():
        for match in _COMMAND.finditer(line):
            program = SCRIPT_PROGRAMS.get(match.group(1), match.group(1))
            for option in re.findall(r'(?<![\w-])(--[a-z][\w-]*)',
                                     match.group(2)):
                found.setdefault(program, {}).setdefault(option,
                                                         []).append(line)
    return found


def test_documented_options_are_found():
    text = ('    python tools/train.py CONFIG --amp \\\n'
            '        --cfg-options a=1\n'
            '`bash tools/dist_train.sh CONFIG 8 --resume` and '
            '`tools/test.py` with `--tta`; '
            '`python mmrest_tools/x.py --no` | `tools/x.sh --y && z --w`\n')
    got = {p: sorted(o) for p, o in documented_options(text).items()}
    assert got == {
        'tools/train.py': ['--amp', '--cfg-options', '--resume'],
        'tools/x.sh': ['--y']
    }


def test_documented_tool_options_exist():
    """Every ``--option`` that the documents' command lines give one of the
    repository's tools (or a script that passes it on) is one its argument
    parser takes, as the tool builds it (a child runs each tool up to its
    parser). docs/results/ is left out: its commands are records of what
    ran then."""
    wanted = {}
    for md_path in _current_documents():
        for program, options in documented_options(
                _read(osp.join(ROOT, md_path))).items():
            if not osp.isfile(osp.join(ROOT, program)):
                continue  # another repository's (named paths: above)
            for option, lines in options.items():
                wanted.setdefault(program, {})[option] = (md_path, lines[0])
    assert sum(map(len, wanted.values())) >= 30  # the commands were read
    out = run_program([sys.executable, '-c', _OPTIONS_CHILD, *wanted]).stdout
    known = json.loads(out.strip().splitlines()[-1])
    unknown = [(program, option, *where)
               for program, options in wanted.items()
               for option, where in options.items()
               if option not in known[program]]
    assert unknown == []


def _section(text: str, heading: str) -> str:
    """The text under the level-2 ``heading`` of a Markdown document, up to
    the next level-2 heading."""
    return text.split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]


def test_every_test_file_is_described():
    """docs/testing.md's "What each test file checks" names every test file
    of tests/ (and none that is gone)."""
    text = _read(osp.join(ROOT, 'docs', 'testing.md'))
    section = _section(text, 'What each test file checks')
    described = set(re.findall(r'`(tests/test_\w+\.py)`', section))
    files = {
        osp.relpath(path, ROOT)
        for path in glob.glob(osp.join(ROOT, 'tests', 'test_*.py'))
    }
    assert len(files) > 40
    assert sorted(files - described) == []
    assert sorted(described - files) == []


def test_documented_variables_are_read():
    """Every ``MMREST_*`` environment variable the documents name is one
    that the repository's code, scripts or tests read (docs/results/ aside:
    records of past runs)."""

    def named(paths):
        return {
            name
            for path in paths
            for name in re.findall(r'\bMMREST_[A-Z0-9_]*[A-Z0-9]\b',
                                   _read(osp.join(ROOT, path)))
        }

    read = named(_tracked_files('*.py', '*.sh', 'Makefile', '.ci/*'))
    documented = named(_current_documents())
    assert len(documented) >= 5
    assert sorted(documented - read) == []


def test_backbone_arguments_are_documented():
    """docs/backbones.md's table of ``ResT``'s arguments names each
    argument of ``ResT.__init__`` and no other, its ``arch`` row every key
    of an arch dict; the ``ResTV2`` section names the arguments v2 does not
    take, and v2 takes all the others, and its arch dict's keys."""
    import inspect

    from mmrest import ResT, ResTV2
    text = _read(osp.join(ROOT, 'docs', 'backbones.md'))

    def arguments(cls):
        return set(inspect.signature(cls.__init__).parameters) - {'self'}

    rows = {}
    for line in _section(text, '`mmrest.ResT`').splitlines():
        cells = line.split('|')
        if line.startswith('|') and len(cells) > 2:
            for name in re.findall(r'`(\w+)`', cells[1]):
                rows[name] = cells[2]
    assert set(rows) == arguments(ResT)
    arch_keys = [*ResT.essential_keys, *ResT.optional_keys]
    assert [k for k in arch_keys if f'`{k}`' not in rows['arch']] == []
    v2 = _section(text, '`mmrest.ResTV2`').strip().split('\n\n')[0]
    left_out = arguments(ResT) - arguments(ResTV2)
    assert arguments(ResTV2) < arguments(ResT) and left_out
    assert [a for a in left_out
            if f'`{a}`' not in v2.split('with `arch`')[0]] == []
    arch_keys = [*ResTV2.essential_keys, *ResTV2.optional_keys]
    assert [k for k in arch_keys if f'`{k}`' not in v2] == []
