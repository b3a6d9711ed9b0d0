"""The benchmark runs and reports what it measured (no timing asserts)."""
import pytest

from mmrest.benchmark import BACKBONES, build_backbone, format_row, \
    measure_speed


def test_every_backbone_builds_and_is_measured():
    row = measure_speed('rest_small_literal', repeats=1, batch=2,
                        small=(64, 64), large=(72, 104))
    assert row['params_M'] == pytest.approx(13.17, abs=0.01)  # no head
    assert row['img_per_s_224_b16'] > 0 and row['s_per_img_800x1344'] > 0
    assert 'rest_small_literal' in format_row(row)
    for name in BACKBONES:
        assert sum(p.numel() for p in build_backbone(name).parameters())
    with pytest.raises(KeyError, match='resnet101'):
        build_backbone('resnet101')
