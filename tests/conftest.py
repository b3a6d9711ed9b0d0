"""Fixtures shared by the tests. The reference data lives in the
repository, in ``tests/data`` (see its README): the tests need nothing
outside a clone."""
import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / 'data'


def _data_file(name: str) -> Path:
    path = DATA / name
    assert path.is_file(), (
        f'reference data missing: {path} (it is part of the repository; '
        'see tests/data/README.md)')
    return path


@pytest.fixture(scope='session')
def golden():
    """ResT v1 tiny: weights, inputs, float32 and float64 outputs."""
    return torch.load(_data_file('rest_v1_tiny_golden.pt'),
                      weights_only=True)


@pytest.fixture(scope='session')
def official_shapes():
    """The authors' ResT v1 state-dict shapes, per variant."""
    return json.loads(_data_file('rest_v1_state_dict_shapes.json').read_text())


@pytest.fixture(scope='session')
def golden_v2():
    """ResT v2 tiny: weights, inputs, float32 and float64 outputs."""
    return torch.load(_data_file('rest_v2_tiny_golden.pt'),
                      weights_only=True)


@pytest.fixture(scope='session')
def official_shapes_v2():
    """The authors' ResT v2 state-dict shapes, per variant."""
    return json.loads(
        _data_file('rest_v2_state_dict_shapes.json').read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
