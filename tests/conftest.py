import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('MMREST_SHARED', ROOT.parent / 'shared'))
REFERENCE = SHARED / 'reference'


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||."""
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope='session')
def golden():
    path = REFERENCE / 'rest_v1_tiny_golden.pt'
    assert path.is_file(), f'reference data missing: {path}'
    return torch.load(path, weights_only=True)


@pytest.fixture(scope='session')
def official_shapes():
    import json
    path = REFERENCE / 'rest_v1_state_dict_shapes.json'
    assert path.is_file(), f'reference data missing: {path}'
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
