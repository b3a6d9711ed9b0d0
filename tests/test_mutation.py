"""mmrest_tools.mutation: the mutants of a source (operators and numbers
inside the named functions, never docstrings, unary signs or unpacking)
and a sweep that runs the tests against each in a worktree, leaving the
repository as it was."""
import json
import re
import subprocess
import sys

import pytest

from mmrest_tools import mutation

SOURCE = '''\
def area(w, h, *rest):
    """w * h + 1 (a docstring is not mutated)"""
    return w * h if w >= 0 else -h


def untested(x):
    return x + 0.5


def other(x):
    return x - 1
'''
# a test of SOURCE's area only (untested() stays untested)
TEST_CALC = ('from calc import area\n\n\ndef test_area():\n'
             '    assert area(2, 3) == 6 and area(0, 4) == 0\n')


def test_mutants_of_the_named_functions():
    found = mutation.mutants(SOURCE, ['area', 'untested'])
    assert [(m.function, m.line, m.old, m.new) for m in found] == [
        ('area', 3, '*', '/'),
        ('area', 3, '>=', '>'),
        ('area', 3, '0', '1'),
        ('untested', 7, '+', '-'),
        ('untested', 7, '0.5', '1.0'),
    ]  # not `*rest`, not the unary `-h`, nothing of `other`
    # a zero becomes 1 however it is written (doubled, 0. would be 0.0)
    zeros = mutation.mutants('def f(x):\n    return x * 0. + 0e0 - 0\n', ['f'])
    assert [(m.old, m.new) for m in zeros
            if m.old[0].isdigit()] == [('0.', '1.0'), ('0e0', '1.0'),
                                       ('0', '1')]
    # an operator after a number, a closing bracket or a name is binary
    after = mutation.mutants('def f(x):\n    return 2 * x - (x) / x[0] // 2\n',
                             ['f'], ['operator'])
    assert [(m.old, m.new) for m in after] == [('*', '/'), ('-', '+'),
                                               ('/', '*'), ('//', '*')]
    assert mutation.apply(SOURCE, found[0]).splitlines()[2] == \
        '    return w / h if w >= 0 else -h'
    with pytest.raises(ValueError, match=r"no function named \['volume'\]"):
        mutation.mutants(SOURCE, ['area', 'volume'])
    with pytest.raises(ValueError, match='does not match line 3'):
        mutation.apply(SOURCE, found[0]._replace(col=5))


def test_logic_mutants_only_when_asked():
    """The 'logic' kind: ``and`` / ``or`` and ``True`` / ``False`` swapped,
    a ``not`` dropped (``is not`` -> ``is``, ``not in`` -> ``in``), each a
    source that still compiles; never in docstrings or other functions, nor
    by default. Each kind alone; an unknown kind refused."""
    source = ('def ok(x, y):\n'
              '    """x and not y"""\n'
              '    if x is not None and y not in (1, ) or not x:\n'
              '        return True\n'
              '    return False\n\n\n'
              'def other(x):\n'
              '    return x or y\n')
    default = mutation.mutants(source, ['ok'])
    assert [(m.old, m.new) for m in default] == [('1', '2')]
    assert mutation.mutants(source, ['ok'], ['number']) == default
    assert mutation.mutants(source, ['ok'], ['operator']) == []
    found = mutation.mutants(source, ['ok'], ['logic'])
    assert mutation.mutants(source, ['ok'], mutation.KINDS) == \
        sorted(found + default, key=lambda m: (m.line, m.col))
    changed = [(m.line, m.old, m.new) for m in found]
    assert changed == [(3, 'not', ''), (3, 'and', 'or'), (3, 'not', ''),
                       (3, 'or', 'and'), (3, 'not', ''), (4, 'True', 'False'),
                       (5, 'False', 'True')]
    lines = [mutation.apply(source, m).splitlines()[2] for m in found[:3]]
    assert [' '.join(line.split()) for line in lines] == [
        'if x is None and y not in (1, ) or not x:',
        'if x is not None or y not in (1, ) or not x:',
        'if x is not None and y in (1, ) or not x:',
    ]
    for m in found:
        compile(mutation.apply(source, m), 'ok.py', 'exec')
    with pytest.raises(ValueError, match=r"unknown kinds \['logical'\]"):
        mutation.mutants(source, ['ok'], ['logical'])
    dropped = dict(
        function='ok', line=3, old='not', new='', code='x', killed=False)
    assert '| ok | 3 | `not` -> dropped | `x` |' in \
        mutation.survivors_markdown([dropped])


def _git_repo(repo, files):
    """A git repository at ``repo`` with ``files`` (name: text) committed;
    returns ``git(*args)``, which runs git there and gives its output."""
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)

    def git(*args):
        return subprocess.run(
            ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True).stdout

    git('init', '-q')
    git('add', '.')
    git('commit', '-q', '-m', 'files')
    return git


def test_sweep_kills_what_the_tests_check(tmp_path):
    """In a small git repository: the tested formula's mutants are killed,
    the untested function's survive; the file and the worktrees are as
    before."""
    repo = tmp_path / 'repo'
    git = _git_repo(repo, {'calc.py': SOURCE, 'test_calc.py': TEST_CALC})
    results = list(
        mutation.sweep(
            str(repo),
            'calc.py', ['area', 'untested'], ['test_calc.py'],
            python=sys.executable))
    killed = {
        (r['function'], r['old'], r['new']): r['killed']
        for r in results
    }
    assert killed == {
        ('area', '*', '/'): True,
        ('area', '>=', '>'): True,  # area(0, 4) would be -4
        ('area', '0', '1'): True,
        ('untested', '+', '-'): False,
        ('untested', '0.5', '1.0'): False,
    }
    assert results[3]['code'] == 'return x - 0.5'
    # pytest's last line, as text; a JSON line with sorted keys
    assert '1 failed' in results[0]['pytest']
    assert '1 passed' in results[3]['pytest']
    line = mutation.to_json_line(results[0])
    assert json.loads(line) == results[0]
    assert list(json.loads(line)) == sorted(results[0])
    assert (repo / 'calc.py').read_text() == SOURCE
    assert git('status', '--porcelain') == ''
    assert len(git('worktree', 'list').splitlines()) == 1
    table = mutation.survivors_markdown(results)
    assert table.startswith('2 of 5 mutants survived')
    assert '| untested | 7 | `+` -> `-` | `return x - 0.5` |' in table


def test_sweep_counts_a_hanging_mutant_as_killed(tmp_path):
    """A mutant whose tests run past the timeout (here an endless loop) is
    killed; a folder that is not a git repository is an error at once."""
    repo = tmp_path / 'repo'
    _git_repo(
        repo, {
            'count.py':
            'def count(n):\n    i = 0\n    while i < n:\n'
            '        i = i + 1\n    return i\n',
            'test_count.py':
            'from count import count\n\n\ndef test_count():\n'
            '    assert count(3) == 3\n'
        })
    results = list(
        mutation.sweep(
            str(repo),
            'count.py', ['count'], ['test_count.py'],
            timeout_s=5,
            kinds=['operator']))
    hanging = [r for r in results if r['code'] == 'i = i - 1']
    assert len(hanging) == 1 and hanging[0]['killed'] is True
    assert hanging[0]['pytest'] == 'timed out after 5 s'
    with pytest.raises(subprocess.CalledProcessError):
        next(
            mutation.sweep(
                str(tmp_path), 'count.py', ['count'], ['test_count.py']))


def test_sweep_again_only_the_survivors(tmp_path):
    """An earlier sweep's survivors, read from its JSON lines, are run
    again, alone, against more tests (here the ones that check them)."""
    repo = tmp_path / 'repo'
    _git_repo(
        repo, {
            'calc.py':
            SOURCE,
            'test_calc.py':
            TEST_CALC,
            'test_more.py':
            'from calc import untested\n\n\ndef test_untested():\n'
            '    assert untested(1) == 1.5\n'
        })
    first = [
        mutation.to_json_line(r) for r in mutation.sweep(
            str(repo), 'calc.py', ['area', 'untested'], ['test_calc.py'])
    ]
    survivors = mutation.survivors_of(first + [''])
    assert [(m.function, m.old, m.new)
            for m in survivors] == [('untested', '+', '-'),
                                    ('untested', '0.5', '1.0')]
    again = list(
        mutation.sweep(
            str(repo),
            'calc.py', ['area', 'untested'], ['test_calc.py', 'test_more.py'],
            only=set(survivors)))
    assert [
        mutation.Mutant(*(r[k] for k in mutation.Mutant._fields))
        for r in again
    ] == survivors
    assert all(r['killed'] for r in again)


@pytest.mark.parametrize('tests, why', [
    (['test_none.py'], 'no tests ran|not found'),
    (['test_calc.py', '-k', 'nothing_by_this_name'], 'deselected'),
    (['test_wrong.py'], '1 failed'),
])
def test_sweep_refuses_tests_that_do_not_pass_without_a_mutant(
        tmp_path, tests, why):
    """Tests that collect nothing or fail on HEAD would count every mutant
    as killed: the sweep refuses them first, saying pytest's last line,
    and leaves no worktree."""
    repo = tmp_path / 'repo'
    git = _git_repo(
        repo, {
            'calc.py': SOURCE,
            'test_calc.py': TEST_CALC,
            'test_wrong.py': TEST_CALC.replace('== 6', '== 7')
        })
    with pytest.raises(
            mutation.TestsFailWithoutMutant,
            match='do not pass on HEAD') as err:
        next(mutation.sweep(str(repo), 'calc.py', ['area'], tests))
    assert re.search(why, str(err.value)), err.value
    assert len(git('worktree', 'list').splitlines()) == 1


def test_sweep_command_line_says_why_it_refuses():
    """tools/mutation_sweep.py ends with the reason, not a traceback, when
    its tests do not pass without a mutant (here a -k matching nothing in
    this repository's HEAD)."""
    from _helpers import ROOT
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import mutation_sweep
    finally:
        sys.path.remove(str(ROOT / 'tools'))
    with pytest.raises(SystemExit) as err:
        mutation_sweep.main([
            'mmrest_tools/mutation.py', '--functions', 'apply', '--tests',
            'tests/test_mutation.py,-k,no_test_by_this_name'
        ])
    assert str(err.value).startswith('mutation_sweep: the tests do not pass')
    assert 'deselected' in str(err.value)
