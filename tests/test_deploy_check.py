"""The check of ``tools/deploy.py``: ``mmrest.deploy``'s ``box_iou``,
``match_detections``, ``compare``, ``agrees``, ``graph_report`` and
``graph_matches`` on detections built by hand (no mmdeploy needed), and the
tool's exit code on each verdict.
tests/test_mmdeploy.py exports real detectors; these tests decide whether
the tool's pass / fail can be trusted."""
import pytest
import torch
from _helpers import load_tool
from mmengine.structures import InstanceData

from mmrest.deploy import (GRAPH_TOLERANCE, agrees, box_iou, compare,
                           graph_matches, graph_report, match_detections)


def _dets(boxes, labels, scores, masks=None):
    out = InstanceData()
    out.bboxes = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    out.labels = torch.tensor(labels, dtype=torch.long)
    out.scores = torch.tensor(scores, dtype=torch.float32)
    if masks is not None:
        out.masks = torch.tensor(masks, dtype=torch.bool)
    return out


def test_box_iou_by_hand():
    """Intersection over union of (x1, y1, x2, y2) boxes, worked out:
    the same box 1; disjoint 0; a 2x2 box and its copy moved by 1 share
    2 of 6, and moved by (1, 1) 1 of 7; a 2x2 box inside a 4x4 one
    4 / 16; a zero-area box 0, not NaN."""
    a = torch.tensor([[0., 0., 2., 2.], [0., 0., 4., 4.], [5., 5., 5., 9.]])
    b = torch.tensor([[0., 0., 2., 2.], [1., 0., 3., 2.], [1., 1., 3., 3.],
                      [10., 10., 12., 12.]])
    expected = torch.tensor(
        [[1., 1 / 3, 1 / 7, 0.], [4 / 16, 4 / 16, 4 / 16, 0.], [0.] * 4],
        dtype=torch.float64)
    got = box_iou(a, b)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, rtol=0, atol=1e-12), got
    # rectangles (x and y apart): 2 x 2 of 4 x 2 and 2 x 5, 4 / 14; a box
    # narrower than 1 with itself, 1
    a = torch.tensor([[0., 0., 4., 2.], [0., 0., 0.5, 2.]])
    b = torch.tensor([[1., 0., 3., 5.], [0., 0., 0.5, 2.]])
    assert box_iou(a, b).diagonal().tolist() == pytest.approx([4 / 14, 1.])


def test_match_detections_by_score_label_and_once_each():
    """Each reference detection, highest score first, takes the unpaired
    one of the same label with the highest IoU; a detection is taken once;
    a label with no partner is left unpaired (IoU 0, index -1)."""
    ref = _dets(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
        [1, 1, 2, 3], [0.6, 0.9, 0.8, 0.7])
    got = _dets([[20, 20, 30, 29], [0, 0, 10, 10], [40, 40, 50, 50]],
                [2, 1, 4], [0.8, 0.9, 0.7])
    ious, index = match_detections(ref, got)
    # ref 1 (score 0.9) takes got 1 (IoU 9 / 11); ref 0 finds none left
    assert index.tolist() == [-1, 1, 0, -1]
    assert ious[1].item() == pytest.approx(90 / 110)
    assert ious[2].item() == pytest.approx(0.9)
    assert ious[0] == 0 and ious[3] == 0
    # one against one; a partner of the same label at IoU 0 is still one
    # (compare's lowest IoU then says 0); nothing to pair with
    ious, index = match_detections(ref[1:2], got[1:2])
    assert index.tolist() == [0] and ious.tolist() == [pytest.approx(90 / 110)]
    far = _dets([[60, 60, 70, 70]], [3], [0.5])
    ious, index = match_detections(ref[3:], far)
    assert index.tolist() == [0] and ious.tolist() == [0.]
    ious, index = match_detections(ref, got[:0])
    assert index.tolist() == [-1] * 4 and ious.tolist() == [0.] * 4


def test_compare_reports_pairs_and_differences():
    """The report of two detectors' outputs: the counts, the lowest box
    IoU over the reference's detections, the largest score and corner
    differences over the pairs, the lowest mask IoU."""
    masks = [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 1]]]
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.5], masks)
    same = compare(ref, ref)
    assert same == dict(
        num_ref=2,
        num_got=2,
        num_paired=2,
        min_box_iou=1.0,
        max_score_diff=0.0,
        max_box_diff=0.0,
        min_mask_iou=1.0)
    moved = _dets([[20, 20, 30, 31], [0, 0, 10, 10], [50, 50, 60, 60]],
                  [2, 1, 1], [0.25, 0.875, 0.3],
                  [[[0, 0, 0], [0, 1, 0]], [[1, 1, 0], [0, 0, 0]],
                   [[1, 1, 1], [1, 1, 1]]])
    report = compare(ref, moved)
    assert report['num_ref'] == 2 and report['num_got'] == 3
    assert report['num_paired'] == 2
    assert report['min_box_iou'] == pytest.approx(100 / 110)
    assert report['max_score_diff'] == pytest.approx(0.25)
    assert report['max_box_diff'] == pytest.approx(1.0)
    assert report['min_mask_iou'] == pytest.approx(1 / 2)
    empty = compare(ref[:0], moved)
    assert empty['num_ref'] == 0 and empty['min_box_iou'] == 1.0
    assert 'max_score_diff' not in empty
    # masks on one side only (a boxes-only export against Mask R-CNN):
    # no mask IoU, the boxes compared as before
    boxes_only = _dets([[20, 20, 30, 31], [0, 0, 10, 10]], [2, 1],
                       [0.25, 0.875])
    for a, b in ((ref, boxes_only), (boxes_only, ref)):
        report = compare(a, b)
        assert 'min_mask_iou' not in report
        assert report['num_paired'] == 2
        assert report['min_box_iou'] == pytest.approx(100 / 110)


def test_synthetic_image_is_at_least_16_pixels_each_way():
    from mmrest.deploy import synthetic_image
    for shape in ((15, 64), (64, 15), (8, 8)):
        with pytest.raises(ValueError, match='at least 16x16'):
            synthetic_image(shape)
    img = synthetic_image((16, 24), seed=1)
    assert img.shape == (16, 24, 3) and img.dtype.name == 'uint8'
    assert (img == synthetic_image((16, 24), seed=1)).all()
    assert img.std() > 10  # structure, not a flat picture


def test_agrees_only_on_the_same_detections():
    """The verdict: every reference detection paired at box and mask IoU
    >= the bound, and no detection of the other left over."""

    def detections():  # new tensors each time
        return _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.5],
                     [[[1, 1], [0, 0]], [[0, 1], [0, 1]]])

    ref = detections()
    assert agrees(compare(ref, detections()))
    assert not agrees(compare(ref, detections()[:1]))  # one missing
    extra = InstanceData.cat([detections(), detections()[1:]])
    extra.bboxes[2] += 40  # elsewhere: no partner
    assert not agrees(compare(ref, extra))  # one too many
    shifted = detections()
    shifted.bboxes[0, 2] = 8  # box IoU 0.8
    assert not agrees(compare(ref, shifted))
    assert agrees(compare(ref, shifted), min_iou=0.8)
    relabelled = detections()
    relabelled.labels[1] = 3
    assert not agrees(compare(ref, relabelled), min_iou=0.)
    remasked = detections()
    remasked.masks[1] = torch.tensor([[0, 1], [0, 0]])  # mask IoU 1 / 2
    assert not agrees(compare(ref, remasked))
    assert agrees(compare(ref, remasked), min_iou=0.5)
    dot = _dets([[0, 0, 1, 1]], [1], [0.9], [[[0, 1], [0, 0]]])
    assert compare(dot, dot)['min_mask_iou'] == 1.0  # a one-pixel union
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f'IoU bound.*got {bad}'):
            agrees(compare(ref, ref), min_iou=bad)
    # the bounds themselves are allowed: 1 asks for the very same boxes
    assert agrees(compare(ref, ref), min_iou=1.)
    assert not agrees(compare(ref, shifted), min_iou=1.)


def _graph(dets, labels, masks=None):
    """Batched graph outputs of one image: (1, n, 5), (1, n)[, (1, n, h,
    w)]."""
    out = (torch.tensor(dets, dtype=torch.float32).view(1, -1, 5),
           torch.tensor(labels).view(1, -1))
    return out if masks is None else out + (torch.tensor(masks)[None], )


def test_graph_report_and_matches_by_hand():
    """The graph's outputs against the rewritten detector's: counts,
    labels, box corners relative to the image's side, scores and mask
    probabilities; a match only with the same detections and every
    difference within the tolerance (1e-3)."""
    masks = [[[0.2, 0.9]], [[0.6, 0.1]]]
    ref = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4]], [1, 2], masks)
    assert graph_report(ref, ref, 100) == dict(
        num_expected=2,
        num_got=2,
        same_labels=True,
        max_box_diff_of_side=0.,
        max_score_diff=0.,
        max_mask_diff=0.)
    assert graph_matches(graph_report(ref, ref, 100))
    assert graph_matches(graph_report(ref, ref, 100), tolerance=0.)
    assert GRAPH_TOLERANCE == 1e-3
    # a corner 0.09 pixels off on a 100-pixel image: 9e-4 of it
    moved = _graph([[0, 0, 10, 10.09, 0.9], [5, 5, 20, 30, 0.4]], [1, 2],
                   masks)
    report = graph_report(ref, moved, 100)
    assert report['max_box_diff_of_side'] == pytest.approx(9e-4, rel=1e-4)
    assert graph_matches(report)
    assert not graph_matches(graph_report(ref, moved, 50))  # 1.8e-3
    assert not graph_matches(report, tolerance=8e-4)
    rescored = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.402]], [1, 2],
                      masks)
    report = graph_report(ref, rescored, 100)
    assert report['max_score_diff'] == pytest.approx(2e-3, rel=1e-4)
    assert not graph_matches(report)
    remasked = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4]], [1, 2],
                      [[[0.2, 0.9]], [[0.6, 0.102]]])
    report = graph_report(ref, remasked, 100)
    assert report['max_mask_diff'] == pytest.approx(2e-3, rel=1e-4)
    assert not graph_matches(report)
    relabelled = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4]], [1, 3],
                        masks)
    assert not graph_report(ref, relabelled, 100)['same_labels']
    assert not graph_matches(graph_report(ref, relabelled, 100))
    fewer = _graph([[0, 0, 10, 10, 0.9]], [1], masks[:1])
    report = graph_report(ref, fewer, 100)
    assert (report['num_expected'], report['num_got']) == (2, 1)
    assert 'max_box_diff_of_side' not in report and not graph_matches(report)
    boxes_only = graph_report(ref[:2], ref[:2], 100)  # a detection graph
    assert 'max_mask_diff' not in boxes_only and graph_matches(boxes_only)
    for one, other in ((ref, ref[:2]), (ref[:2], ref)):  # masks on one side
        assert graph_report(one, other, 100) == boxes_only
    none = _graph([], [])
    assert graph_matches(graph_report(none, none, 100))


def test_logits_graph_report_and_matches_by_hand():
    """MaskFormer's graph (class and mask logits) against the rewritten
    model's: the largest difference relative to each output's largest
    value; a match only with outputs of the same shapes, each within the
    tolerance."""
    from mmrest.deploy import logits_graph_report
    cls = torch.tensor([[[2., -4.], [1., 0.5]]])
    masks = torch.tensor([[[[10., -20.]], [[0., 5.]]]])
    ref = (cls, masks)
    assert logits_graph_report(ref, ref) == dict(
        num_expected=2, num_got=2, same_shapes=True, max_diff_of_scale=0.)
    assert graph_matches(logits_graph_report(ref, ref), tolerance=0.)
    # 0.018 off a mask logit: 9e-4 of the largest (20), 4.5e-3 of 4
    moved = (cls, masks + torch.tensor([0., 0.018]))
    report = logits_graph_report(ref, moved)
    assert report['max_diff_of_scale'] == pytest.approx(9e-4, rel=1e-4)
    assert graph_matches(report)
    assert not graph_matches(report, tolerance=8e-4)
    report = logits_graph_report(ref, (cls + torch.tensor([0., 0.018]), masks))
    assert report['max_diff_of_scale'] == pytest.approx(4.5e-3, rel=1e-4)
    assert not graph_matches(report)
    for other in ((cls, ), (cls, masks[..., :1]), (cls, masks, masks)):
        report = logits_graph_report(ref, other)
        assert not report['same_shapes'] and not graph_matches(report)
        assert 'max_diff_of_scale' not in report
    assert logits_graph_report(ref, (cls, masks[..., :1]))['num_got'] == 2


def test_graph_report_leaves_out_mmdeploys_padding():
    """mmdeploy's NMS pads its output with a zero box scored 0 (label 0),
    which its backend model drops: that row's mask (from an empty RoI:
    mmcv's RoIAlign and ONNX Runtime's differ there) is not compared, nor
    is the row counted; a detection with any positive score is."""
    masks = [[[0.2, 0.9]], [[0.6, 0.1]], [[0.5, 0.5]]]
    ref = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4], [0, 0, 0, 0, 0]],
                 [1, 2, 0], masks)
    padded_differently = _graph(
        [[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4], [0, 0, 0, 0, 0]], [1, 2, 0],
        masks[:2] + [[[0.9, 0.02]]])
    report = graph_report(ref, padded_differently, 100)
    assert (report['num_expected'], report['max_mask_diff']) == (2, 0.)
    assert graph_matches(report)
    unpadded = _graph([[0, 0, 10, 10, 0.9], [5, 5, 20, 30, 0.4]], [1, 2],
                      masks[:2])
    assert graph_matches(graph_report(ref, unpadded, 100))
    # the same row with a positive score is a detection like any other
    for scores in ([0.9, 0.4, 0.01], [0.9, 0.4, 1e-6]):
        scored = [[0, 0, 10, 10, scores[0]], [5, 5, 20, 30, scores[1]],
                  [0, 0, 0, 0, scores[2]]]
        report = graph_report(
            _graph(scored, [1, 2, 0], masks),
            _graph(scored, [1, 2, 0], masks[:2] + [[[0.9, 0.02]]]), 100)
        assert report['num_expected'] == 3
        assert report['max_mask_diff'] == pytest.approx(0.48)
        assert not graph_matches(report)
        assert not graph_matches(
            graph_report(_graph(scored, [1, 2, 0], masks), unpadded, 100))


def stand_in_models(tool, models, monkeypatch, tmp_path):
    """tools/deploy.py's export and models replaced: ``predict`` answers
    ``models['pytorch']`` for the PyTorch model, ``models['onnx']`` for
    ONNX Runtime's."""
    monkeypatch.setattr(tool, 'build_detector', lambda *a: (None, 'pytorch'))
    monkeypatch.setattr(tool, 'export_detector',
                        lambda *a: str(tmp_path / 'end2end.onnx'))
    monkeypatch.setattr(tool, 'make_input', lambda *a:
                        ({}, torch.zeros(1, 3, 32, 48)))
    monkeypatch.setattr(tool, 'build_ort_model', lambda *a: 'onnx')
    monkeypatch.setattr(tool, 'predict', lambda model, data: models[model])


@pytest.mark.parametrize('case,graph_ok,code,says', [
    ('same', True, 0, 'agrees with'),
    ('missing', True, 1, 'difference comes from mmdeploy'),
    ('extra', True, 1, 'DIFFERS FROM the PyTorch detector'),
    ('none', True, 0, 'nothing to compare'),
    ('same', False, 1, "DIFFERS FROM mmdeploy's rewritten"),
    ('none', False, 1, "DIFFERS FROM mmdeploy's rewritten"),
])
def test_tool_exit_code(case, graph_ok, code, says, monkeypatch, capsys,
                        tmp_path):
    """tools/deploy.py with its export and models replaced by stand-ins
    that return chosen outputs: exit code 0 when the graph computes the
    rewritten detector and ONNX Runtime's detections agree with the
    detector's (or it finds nothing: a message), 1 when a detection is
    missing or extra (with the graph right: the cause named) or when the
    graph differs."""
    tool = load_tool('deploy')
    graph = _graph([[0, 0, 10, 10, 0.9]], [1])
    wrong = _graph([[0, 0, 10, 10, 0.5]], [1])
    monkeypatch.setattr(tool, 'rewritten_outputs', lambda *a: graph)
    monkeypatch.setattr(tool, 'onnx_outputs', lambda *a: graph
                        if graph_ok else wrong)
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.5])
    got = dict(
        same=ref,
        missing=ref[:1],
        extra=InstanceData.cat([ref, ref[:1]]),
        none=ref[:0])[case]
    models = dict(pytorch=ref if case != 'none' else ref[:0], onnx=got)
    stand_in_models(tool, models, monkeypatch, tmp_path)
    assert tool.main(['config.py']) == code
    assert says in capsys.readouterr().out


@pytest.mark.parametrize('graph_ok,maps_ok,code', [(True, True, 0),
                                                   (False, True, 1),
                                                   (True, False, 1)])
def test_tool_checks_maskformers_logits_and_panoptic_maps(
        graph_ok, maps_ok, code, monkeypatch, capsys, tmp_path):
    """With ``--deploy-cfg panoptic-seg`` (MaskFormer, Mask2Former) the
    tool checks the graph's class and mask logits
    (``logits_graph_report``), and a panoptic detector's map of segment
    ids (no instances predicted) as label maps, naming the detector (and
    not the segmentors' advice); stand-ins as above."""
    tool = load_tool('deploy')
    logits = (torch.tensor([[[2., -1.]]]), torch.ones(1, 1, 4, 6))
    off = (logits[0] + 0.1, logits[1])
    monkeypatch.setattr(tool, 'rewritten_outputs', lambda *a: logits)
    monkeypatch.setattr(tool, 'onnx_outputs', lambda *a: logits
                        if graph_ok else off)
    ids = torch.zeros(4, 6, dtype=torch.long)
    ids[1:3, 2:5] = 1 + 1000  # a segment of class 1
    other = ids.clone()
    other[1:3, 2:4] = 0
    models = dict(pytorch=ids, onnx=ids if maps_ok else other)
    stand_in_models(tool, models, monkeypatch, tmp_path)
    assert tool.main(['config.py', '--deploy-cfg', 'panoptic-seg']) == code
    out = capsys.readouterr().out
    assert ('same_shapes True, max_diff_of_scale ' +
            ('0\n' if graph_ok else '0.05\n')) in out
    assert ('agrees with' if maps_ok else 'DIFFERS FROM') + \
        ' the PyTorch detector' in out
    assert 'mmseg' not in out


def test_predict_takes_instances_label_maps_or_panoptic_maps():
    """``predict``'s answer for the first image: a detector's instances
    (also where a panoptic map comes with them), a segmentor's label map,
    a panoptic detector's map of segment ids where it has no instances;
    the data's samples are not changed."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import PixelData

    from mmrest.deploy import predict
    labels = torch.arange(6).view(1, 2, 3)
    ids = labels + 1000
    instances = _dets([[0, 0, 10, 10]], [1], [0.9])

    def model_of(**fields):

        def model(inputs, samples, mode):
            assert mode == 'predict' and inputs == 'inputs'
            out = []
            for i, sample in enumerate(samples):
                sample.set_metainfo(dict(changed=True))
                other = DetDataSample()
                for key, value in fields.items():
                    if i == 0:  # the second image's sample stays empty
                        setattr(other, key, value)
                out.append(other)
            return out

        return model

    data = dict(inputs='inputs', data_samples=[DetDataSample()] * 2)
    assert predict(model_of(pred_instances=instances), data) is instances
    assert predict(
        model_of(
            pred_instances=instances,
            pred_panoptic_seg=PixelData(sem_seg=ids)), data) is instances
    assert torch.equal(
        predict(model_of(pred_panoptic_seg=PixelData(sem_seg=ids)), data),
        ids[0])
    assert torch.equal(
        predict(model_of(pred_sem_seg=PixelData(data=labels)), data),
        labels[0])
    assert 'changed' not in data['data_samples'][0]


def test_tool_refuses_an_iou_bound_outside_0_1(capsys):
    """--box-iou outside [0, 1] stops the tool before anything is built,
    naming the option and the value."""
    with pytest.raises(SystemExit) as exc:
        load_tool('deploy').main(['config.py', '--box-iou', '90'])
    assert exc.value.code == 2
    assert '--box-iou must lie in [0, 1], got 90.0' in capsys.readouterr().err


def test_tool_mmdeploy_nms(monkeypatch):
    """The graph is exported and checked with mmdet's post-processing, or
    with mmdeploy's own with --mmdeploy-nms: the same choice for both."""
    tool = load_tool('deploy')
    seen = []
    monkeypatch.setattr(tool, 'build_detector', lambda *a: (None, None))
    monkeypatch.setattr(tool, 'export_detector', lambda *a: seen.append(
        ('export', a[5])) or 'x.onnx')
    monkeypatch.setattr(tool, 'make_input', lambda *a:
                        (None, torch.zeros(1, 3, 8, 8)))

    def stop(*args):
        seen.append(('check', args[4]))
        raise RuntimeError('stop here')

    monkeypatch.setattr(tool, 'rewritten_outputs', stop)
    for argv, mmdet_nms in ([], True), (['--mmdeploy-nms'], False):
        with pytest.raises(RuntimeError, match='stop here'):
            tool.main(['config.py', *argv])
        assert seen == [('export', mmdet_nms), ('check', mmdet_nms)]
        seen.clear()


def test_tool_opset(monkeypatch, capsys):
    """--opset replaces the deploy config's opset in what is built and
    exported; one under 11 stops the tool before anything is built."""
    tool = load_tool('deploy')
    seen = []

    def stop(config, deploy_cfg, *args):
        seen.append(deploy_cfg.onnx_config.opset_version)
        raise RuntimeError('stop here')

    monkeypatch.setattr(tool, 'build_detector', stop)
    for argv, opset in ([], 11), (['--opset', '16'], 16):
        with pytest.raises(RuntimeError, match='stop here'):
            tool.main(['config.py', '--deploy-cfg', 'instance-seg', *argv])
        assert seen.pop() == opset
    with pytest.raises(SystemExit) as exc:
        tool.main(['config.py', '--opset', '10'])
    assert exc.value.code == 2 and not seen
    assert '--opset must be at least 11' in capsys.readouterr().err
    from mmrest.deploy import max_opset
    with pytest.raises(SystemExit) as exc:
        tool.main(['config.py', '--opset', str(max_opset() + 1)])
    assert exc.value.code == 2 and not seen
    assert f'--opset must be at most {max_opset()}' in \
        capsys.readouterr().err


@pytest.mark.parametrize('opset', [10, True, 11.0, '16', None])
def test_load_deploy_cfg_checks_the_opset(opset):
    """``opset_version`` replaces the deploy config's (an integer of at
    least 11, mmdeploy's lowest); anything else is refused by value and
    leaves the config given unchanged; None keeps its own."""
    from mmrest.deploy import load_deploy_cfg, ort_deploy_cfg
    given = ort_deploy_cfg('detection')
    assert given['onnx_config']['opset_version'] == 11
    assert load_deploy_cfg(given, 16).onnx_config.opset_version == 16
    if opset is None:
        assert load_deploy_cfg(given, opset).onnx_config.opset_version == 11
    else:
        with pytest.raises(ValueError, match=f'at least 11.*got {opset!r}'):
            load_deploy_cfg(given, opset)
    assert given == ort_deploy_cfg('detection')


def test_opsets_above_torchs_exporter_are_refused(monkeypatch):
    """Above the highest opset of torch's TorchScript exporter (torch 2.1
    warns and writes a graph anyway), refused by value; torch 2.1's is 17,
    torch 2.13's to 2.15's 20."""
    from torch.onnx import _constants

    from mmrest.deploy import load_deploy_cfg, max_opset, ort_deploy_cfg
    from mmrest.utils.torch_compat import torch_version
    assert max_opset() == (17 if torch_version() < (2, 2) else 20)
    top = max_opset()
    assert ort_deploy_cfg('detection',
                          top)['onnx_config']['opset_version'] == top
    with pytest.raises(ValueError, match=f'{top + 1} is above {top}'):
        load_deploy_cfg('detection', top + 1)
    monkeypatch.setattr(
        _constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 17, raising=False)
    with pytest.raises(ValueError, match='18 is above 17'):
        ort_deploy_cfg('detection', 18)
    monkeypatch.delattr(_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET')
    assert max_opset() == 17


def _mmdeploy_onnx_config(output_names, dynamic_axes):
    """mmdeploy 1.3.1's ``configs/_base_/onnx_config.py`` with a
    config's outputs and dynamic axes."""
    return dict(
        type='onnx',
        export_params=True,
        keep_initializers_as_inputs=False,
        opset_version=11,
        save_file='end2end.onnx',
        input_names=['input'],
        output_names=output_names,
        input_shape=None,
        optimize=True,
        dynamic_axes=dynamic_axes)


def test_deploy_cfgs_are_mmdeploys_files():
    """``ort_deploy_cfg`` is mmdeploy 1.3.1's ONNX Runtime deploy configs
    with their bases flattened, every entry: written out here by hand from
    the files of mmdeploy's v1.3.1 tag (``configs/_base_/onnx_config.py``,
    ``configs/_base_/backends/onnxruntime.py``,
    ``configs/mmdet/_base_/base_{static,dynamic,instance-seg_static,
    instance-seg_dynamic}.py``,
    ``configs/mmdet/{detection,instance-seg}/*_onnxruntime_dynamic.py``,
    ``configs/mmseg/segmentation_{static,dynamic,onnxruntime_dynamic}.py``),
    which the mmdeploy wheel does not ship."""
    from mmrest.deploy import ort_deploy_cfg
    image = {0: 'batch', 2: 'height', 3: 'width'}
    boxes = {0: 'batch', 1: 'num_dets'}
    post_processing = dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1)
    detection = dict(
        type='mmdet',
        task='ObjectDetection',
        model_type='end2end',
        post_processing=post_processing)
    backend = dict(type='onnxruntime')
    expected = {
        'detection':
        dict(
            onnx_config=_mmdeploy_onnx_config(['dets', 'labels'],
                                              dict(
                                                  input=image,
                                                  dets=boxes,
                                                  labels=boxes)),
            codebase_config=detection,
            backend_config=backend),
        'instance-seg':
        dict(
            onnx_config=_mmdeploy_onnx_config(['dets', 'labels', 'masks'],
                                              dict(
                                                  input=image,
                                                  dets=boxes,
                                                  labels=boxes,
                                                  masks={
                                                      0: 'batch',
                                                      1: 'num_dets',
                                                      2: 'height',
                                                      3: 'width'
                                                  })),
            codebase_config=dict(
                detection,
                post_processing=dict(
                    post_processing, export_postprocess_mask=False)),
            backend_config=backend),
        'segmentation':
        dict(
            onnx_config=_mmdeploy_onnx_config(['output'],
                                              dict(input=image, output=image)),
            codebase_config=dict(
                type='mmseg', task='Segmentation', with_argmax=True),
            backend_config=backend),
    }
    # configs/mmdet/_base_/base_panoptic-seg_static.py and
    # configs/mmdet/panoptic-seg/panoptic-seg_maskformer_onnxruntime_
    # {static-800x1344,dynamic}.py: opset 13
    maskformer = _mmdeploy_onnx_config(['cls_logits', 'mask_logits'],
                                       dict(
                                           input=image,
                                           cls_logits={0: 'batch'},
                                           mask_logits={
                                               0: 'batch',
                                               2: 'h',
                                               3: 'w'
                                           }))
    maskformer['opset_version'] = 13
    expected['panoptic-seg'] = dict(
        onnx_config=maskformer,
        codebase_config=dict(
            detection,
            model_type='panoptic_end2end',
            post_processing=dict(
                post_processing,
                score_threshold=0.0,
                export_postprocess_mask=False)),
        backend_config=backend)
    for task, cfg in expected.items():
        assert ort_deploy_cfg(task) == cfg, task
    assert ort_deploy_cfg('panoptic-seg',
                          16)['onnx_config']['opset_version'] == 16
    # the logits: the same with mmdeploy's with_argmax=False
    logits = ort_deploy_cfg('segmentation-logits')
    assert logits['codebase_config'].pop('with_argmax') is False
    del expected['segmentation']['codebase_config']['with_argmax']
    assert logits == expected['segmentation']
