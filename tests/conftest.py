"""Fixtures shared by the tests. The reference data lives in the
repository, in ``tests/data`` (see its README): the tests need nothing
outside a clone."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / 'data'

# The repository's programs (mmrest_tools, beside mmrest) import from the
# clone under test, also with ``pytest tests`` (``python -m pytest`` puts the
# working directory first already) and an editable install made before
# mmrest_tools existed.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
# The programs the tests run in subprocesses (tools/*.py, mmdet's packaged
# tools/train.py, ``python -c``) import this clone's mmrest and mmrest_tools
# too, whatever clone an editable install or an inherited PYTHONPATH names
# (tests/test_tools.py::test_subprocesses_import_this_clone).
os.environ['PYTHONPATH'] = os.pathsep.join([_REPO] + [
    p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if p and p != _REPO
])

# The 'triton' EMSA core's kernels (mmrest/backbones/emsa_triton.py) run on
# the CPU only in Triton's interpreter, chosen when the kernels are defined:
# set before any test imports them. (The tests run on the CPU.)
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# pytest-xdist's workers (`make test` runs two) share the CPUs: each takes
# its share of intra-op threads, and so do the programs its tests start
# (OMP_NUM_THREADS), instead of every process taking every core.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    from mmrest_tools.demo import set_cpu_threads, usable_cpus
    _SHARE = set_cpu_threads(max(1, usable_cpus() // _WORKERS))
    os.environ['OMP_NUM_THREADS'] = str(_SHARE)


def _data_file(name: str) -> Path:
    path = DATA / name
    assert path.is_file(), (
        f'reference data missing: {path} (it is part of the repository; '
        'see tests/data/README.md)')
    return path


@pytest.fixture(scope='session')
def golden():
    """ResT v1 tiny: weights, inputs, float32 and float64 outputs."""
    return torch.load(_data_file('rest_v1_tiny_golden.pt'), weights_only=True)


@pytest.fixture(scope='session')
def official_shapes():
    """The authors' ResT v1 state-dict shapes, per variant."""
    return json.loads(_data_file('rest_v1_state_dict_shapes.json').read_text())


@pytest.fixture(scope='session')
def golden_v2():
    """ResT v2 tiny: weights, inputs, float32 and float64 outputs."""
    return torch.load(_data_file('rest_v2_tiny_golden.pt'), weights_only=True)


@pytest.fixture(scope='session')
def official_shapes_v2():
    """The authors' ResT v2 state-dict shapes, per variant."""
    return json.loads(_data_file('rest_v2_state_dict_shapes.json').read_text())


@pytest.fixture(scope='session')
def tiny_coco(tmp_path_factory):
    """A one-image COCO set (train and val, 64 x 64, made by
    ``tests/_tiny_coco.py``) as config overrides, the data loaders
    running in the test process."""
    from _tiny_coco import tiny_coco_overrides, write_tiny_coco
    root = tmp_path_factory.mktemp('coco')
    write_tiny_coco(str(root), num_train=1, num_val=1, image_size=(64, 64))
    options = tiny_coco_overrides(str(root))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.num_workers'] = 0
        options[f'{loader}.persistent_workers'] = False
    return options


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads_restored():
    """The number of intra-op threads each test starts with: tools run in
    the test process (benchmark_inference.py --threads 1, the demo, the
    benchmark) set it for the rest of the process, and the float32 results
    of later tests depend on it (their reductions are grouped by thread)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
