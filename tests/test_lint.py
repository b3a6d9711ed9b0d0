"""OpenMMLab's lint and format set-up stays applied: flake8, isort and
yapf with the settings in setup.cfg (the same checkers
.pre-commit-config.yaml runs) find nothing in the repository's Python
files."""
import subprocess
import sys

import pytest
from _helpers import ROOT


def _python_files():
    # tracked files and new ones not yet added (not the ignored ones), so
    # that a file is checked before its first commit
    listing = ['git', 'ls-files', '--cached', '--others', '--exclude-standard']
    out = subprocess.run([*listing, '*.py'],
                         cwd=ROOT,
                         text=True,
                         capture_output=True,
                         check=True).stdout
    files = [f for f in out.split() if (ROOT / f).is_file()]
    assert len(files) > 50, 'not a clone of the repository?'
    return files


@pytest.mark.parametrize('checker', [
    ['flake8'],
    ['isort', '--check-only', '--diff'],
    ['yapf', '--diff'],
])
def test_checker_finds_nothing(checker):
    result = subprocess.run([sys.executable, '-m', *checker, *_python_files()],
                            cwd=ROOT,
                            text=True,
                            capture_output=True)
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0 and not result.stdout.strip(), (
        f'{checker[0]} (settings in setup.cfg) reports:\n{report}\n'
        f'fix with: {sys.executable} -m isort . && '
        f'{sys.executable} -m yapf -i -r mmrest mmrest_tools tools tests '
        'configs setup.py')
