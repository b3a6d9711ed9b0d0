"""tools/benchmark_inference.py: CPU inference time of a config's detector
(mmdet's benchmark.py needs CUDA). Figures are not asserted, only that every
timed call happened and the result is complete."""
import json
import time

import pytest
from _helpers import ROOT, load_tool

RETINANET = ROOT / 'configs/retinanet/retinanet_rest-lite_fpn_1x_coco.py'


def test_benchmark_inference_tool(tmp_path, capsys):
    out = tmp_path / 'speed.json'
    start = time.perf_counter()
    code = load_tool('benchmark_inference').main([
        str(RETINANET), '--shape', '64', '96', '--repeats', '2', '--warmup',
        '0', '--json',
        str(out), '--threads', '1'
    ])
    assert code == 0
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert 'detector:' in printed and 'backbone:' in printed
    result = json.loads(out.read_text())
    assert result['shape'] == [64, 96] and result['threads'] == 1
    for name in ('detector', 'backbone'):
        assert len(result[f'{name}_all']) == 2
        assert result[f'{name}_s'] == sum(result[f'{name}_all']) / 2
        assert all(0 < t < elapsed for t in result[f'{name}_all'])


def test_benchmark_inference_refuses_an_unpadded_shape():
    from mmengine.config import Config

    from mmrest_tools.analysis import detector_inference_time
    cfg = Config.fromfile(str(RETINANET))
    with pytest.raises(ValueError, match='pad_size_divisor 32'):
        detector_inference_time(cfg, (65, 96))
    with pytest.raises(ValueError, match='repeats'):
        detector_inference_time(cfg, (64, 96), repeats=0)
    with pytest.raises(ValueError, match='warmup'):
        detector_inference_time(cfg, (64, 96), warmup=-1)
    once = detector_inference_time(cfg, (64, 96), repeats=1, warmup=0)
    assert [len(once[f'{n}_all']) for n in ('detector', 'backbone')] == [1, 1]


@pytest.mark.parametrize('shape', [(0, 0), (0, 96), (64, -32)])
def test_analysis_refuses_a_shape_below_one(shape):
    """0 is a multiple of every divisor: before the check, FLOPs at 0 x 0
    ended in a convolution's error about kernel and input sizes."""
    from mmengine.config import Config

    from mmrest_tools.analysis import (detector_complexity,
                                       detector_inference_time)
    cfg = Config.fromfile(str(RETINANET))
    for measure in (detector_complexity, detector_inference_time):
        with pytest.raises(ValueError, match='must be positive'):
            measure(cfg, shape)
