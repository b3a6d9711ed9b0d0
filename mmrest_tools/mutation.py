# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Mutation sweeps: does a test fail when a formula is broken?

Each mutant changes one token inside the named functions of a source file
(strings, docstrings included, are single tokens and left alone): a binary
or comparison operator swapped (``+`` and ``-``, ``*`` and ``/``, ``**``
and ``//`` to ``*``, ``<`` and ``<=``, ``>`` and ``>=``, ``==`` and
``!=``) or a number changed (0 -> 1, 1 -> 2, 2 -> 3, another zero -> 1.0,
any other doubled). Asked for (``kinds`` with ``'logic'``), the
conditions too: ``and`` and ``or`` swapped, ``True`` and ``False`` swapped,
and a ``not`` dropped (so ``not x`` becomes ``x``, ``is not`` ``is`` and
``not in`` ``in``).
The tests then run against the mutated copy: a mutant that they pass has
*survived*, and is either equivalent (a chunk size, a swap that cannot
change a result) or a property no test checks. The sweep
runs in a throw-away git worktree of ``HEAD``, so the checkout is never
written to (uncommitted changes are not in it).
"""
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tokenize
from ast import FunctionDef, parse, walk
from typing import (Collection, Dict, Iterable, Iterator, List, NamedTuple,
                    Optional, Sequence)

SWAPS = {
    '+': '-',
    '-': '+',
    '*': '/',
    '/': '*',
    '**': '*',
    '//': '*',
    '<': '<=',
    '<=': '<',
    '>': '>=',
    '>=': '>',
    '==': '!=',
    '!=': '==',
}
ARITHMETIC = ('+', '-', '*', '/', '**', '//')
#: the conditions' keywords, changed in the 'logic' kind ('not' dropped)
LOGIC = {'and': 'or', 'or': 'and', 'True': 'False', 'False': 'True', 'not': ''}
# a token before which + - * / ** are unary or unpacking, not binary
_NOT_AN_OPERAND = ('lambda', 'return', 'in', 'and', 'or', 'not', 'if', 'else',
                   'yield')


class TestsFailWithoutMutant(RuntimeError):
    """A sweep's tests fail, hang or collect nothing on ``HEAD`` itself."""


class Mutant(NamedTuple):
    """One token of ``function`` at ``line`` (1-based) and ``col``
    replaced: ``old`` by ``new``."""
    function: str
    line: int
    col: int
    old: str
    new: str


def _function_lines(source: str, functions: Sequence[str]) -> List[tuple]:
    """(first, last, name): the lines of each function (or method) named,
    its signature's defaults included."""
    return [(node.lineno, node.end_lineno, node.name)
            for node in walk(parse(source))
            if isinstance(node, FunctionDef) and node.name in functions]


def _changed_number(text: str):
    small = {'0': '1', '1': '2', '2': '3'}
    if text in small:
        return small[text]
    try:
        value = float(text)
    except ValueError:  # complex, hex, ...
        return None
    # a zero written otherwise (0.0, 0., 0e0) doubles to itself
    return repr(value * 2) if value else '1.0'


#: the kinds of mutant (see the module), and those made by default
KINDS = ('operator', 'number', 'logic')
DEFAULT_KINDS = ('operator', 'number')


def mutants(source: str,
            functions: Sequence[str],
            kinds: Sequence[str] = DEFAULT_KINDS) -> List[Mutant]:
    """Every mutant of the ``kinds`` of ``source`` inside ``functions``
    (see the module)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f'unknown kinds {sorted(unknown)}; choose from '
                         f'{KINDS}')
    spans = _function_lines(source, functions)
    missing = set(functions) - {name for _, _, name in spans}
    if missing:
        raise ValueError(f'no function named {sorted(missing)} in the file')
    found, prev = [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line, col = tok.start
        name = next((n for a, b, n in spans if a <= line <= b), None)
        if 'operator' in kinds and name is not None \
                and tok.type == tokenize.OP and tok.string in SWAPS:
            binary = prev is not None and (
                prev.type == tokenize.NUMBER or prev.string in (')', ']') or
                (prev.type == tokenize.NAME
                 and prev.string not in _NOT_AN_OPERAND))
            if binary or tok.string not in ARITHMETIC:
                found.append(
                    Mutant(name, line, col, tok.string, SWAPS[tok.string]))
        elif 'number' in kinds and name is not None \
                and tok.type == tokenize.NUMBER:
            new = _changed_number(tok.string)
            if new is not None:
                found.append(Mutant(name, line, col, tok.string, new))
        elif 'logic' in kinds and name is not None \
                and tok.type == tokenize.NAME and tok.string in LOGIC:
            found.append(
                Mutant(name, line, col, tok.string, LOGIC[tok.string]))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                            tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return found


def apply(source: str, mutant: Mutant) -> str:
    """``source`` with ``mutant`` applied."""
    lines = source.splitlines(keepends=True)
    text = lines[mutant.line - 1]
    if text[mutant.col:mutant.col + len(mutant.old)] != mutant.old:
        raise ValueError(f'{mutant} does not match line {mutant.line}')
    lines[mutant.line - 1] = (
        text[:mutant.col] + mutant.new + text[mutant.col + len(mutant.old):])
    return ''.join(lines)


def _worktree(root: str) -> str:
    path = tempfile.mkdtemp(prefix='mmrest-mutation-')
    subprocess.run(
        ['git', 'worktree', 'add', '--detach', '--force', path, 'HEAD'],
        cwd=root,
        check=True,
        capture_output=True)
    return path


def sweep(root: str,
          path: str,
          functions: Sequence[str],
          tests: Sequence[str],
          timeout_s: float = 600.,
          python: str = sys.executable,
          kinds: Sequence[str] = DEFAULT_KINDS,
          only: Optional[Collection[Mutant]] = None) -> Iterator[Dict]:
    """Runs ``pytest -x tests`` once per mutant of ``path`` (relative to
    the repository ``root``) in a worktree of ``HEAD``, with that
    worktree first on ``PYTHONPATH``; yields one result per mutant:
    the mutant, the mutated line, ``killed`` (the tests failed or timed
    out), the seconds and pytest's last line. With ``only``, just those
    mutants (e.g. an earlier sweep's survivors, :func:`survivors_of`).
    The worktree is removed at the end."""
    tree = _worktree(root)
    target = os.path.join(tree, path)
    with open(target) as f:
        source = f.read()
    env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE='1')

    def run_tests():
        """(the tests failed or timed out, pytest's last line)"""
        try:
            proc = subprocess.run([
                python, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider',
                *tests
            ],
                                  cwd=tree,
                                  env=env,
                                  capture_output=True,
                                  text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return True, f'timed out after {timeout_s:.0f} s'
        return proc.returncode != 0, (proc.stdout.strip().splitlines()
                                      or [''])[-1]

    try:
        # without a mutant the tests must pass: tests that fail, collect
        # nothing (a name HEAD does not have) or hang would count every
        # mutant as killed
        failed, last = run_tests()
        if failed:
            raise TestsFailWithoutMutant(
                f'the tests do not pass on HEAD without a mutant ({last}); '
                f'a sweep against them would count every mutant as killed')
        for mutant in mutants(source, functions, kinds):
            if only is not None and mutant not in only:
                continue
            mutated = apply(source, mutant)
            with open(target, 'w') as f:
                f.write(mutated)
            start = time.time()
            killed, last = run_tests()
            yield dict(
                mutant._asdict(),
                code=mutated.splitlines()[mutant.line - 1].strip(),
                killed=killed,
                seconds=round(time.time() - start, 1),
                pytest=last[:200])
    finally:
        with open(target, 'w') as f:
            f.write(source)
        subprocess.run(['git', 'worktree', 'remove', '--force', tree],
                       cwd=root,
                       capture_output=True)


def survivors_of(json_lines: Iterable[str]) -> List[Mutant]:
    """The mutants that survived in a sweep's JSON lines (``--out``)."""
    found = []
    for line in json_lines:
        if line.strip():
            r = json.loads(line)
            if not r['killed']:
                found.append(Mutant(*(r[k] for k in Mutant._fields)))
    return found


def survivors_markdown(results: Sequence[Dict]) -> str:
    """The survivors as a Markdown table, under a count."""
    alive = [r for r in results if not r['killed']]
    lines = [
        f'{len(alive)} of {len(results)} mutants survived', '',
        '| function | line | change | mutated line |', '|---|---|---|---|'
    ]
    lines += [
        f'| {r["function"]} | {r["line"]} | `{r["old"]}` -> ' +
        (f'`{r["new"]}`' if r['new'] else 'dropped') +
        f' | `{r["code"].replace("|", "&#124;")}` |' for r in alive
    ]
    return '\n'.join(lines)


def to_json_line(result: Dict) -> str:
    return json.dumps(result, sort_keys=True)
