# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Whole detectors and segmentors to ONNX Runtime with mmdeploy 1.3.1 on
torch >= 2.9.

mmdeploy 1.3.1 (its latest release) predates torch 2.9 and fails with it in
two places, both fixed for the duration of :func:`mmdeploy_torch_shims`:

1. It calls ``torch.onnx.export`` without ``dynamo=``. Since torch 2.9 the
   default is the ``torch.export``-based exporter, which needs
   ``onnxscript`` and, more to the point, ignores everything mmdeploy does
   to the graph (its symbolic functions for mmcv's NMS and RoIAlign, its
   function rewrites, its ``_model_to_graph`` hook are all written for the
   TorchScript exporter). The shim makes ``dynamo=False`` the default.
2. Its RoIAlign symbolic (ONNX Runtime, opset < 16) imports
   ``torch.onnx.symbolic_opset9._cast_Long``, a private helper torch has
   removed. The shim puts back the one-line equivalent (``Cast`` to INT64)
   if, and only if, it is missing.

With them, :func:`export_detector` does what mmdeploy's ``torch2onnx`` does
(mmdeploy's ``tools/deploy.py`` for ONNX Runtime), with the deploy configs
of :func:`ort_deploy_cfg`: mmdeploy's ``detection_onnxruntime_dynamic.py``,
``instance-seg_onnxruntime_dynamic.py``,
``panoptic-seg_maskformer_onnxruntime_dynamic.py`` and
``segmentation_onnxruntime_dynamic.py`` (the mmdeploy wheel ships no config
files); by default the post-processing of the RPN, the box head, RetinaNet,
FCOS, ATSS, TOOD and Cascade R-CNN is mmdet's, not mmdeploy's, adaptive pooling
(UperNet's) is torch's at every size and mmseg's ``Upsample`` sizes and
PointRend's point counts are computed in the graph
(:mod:`mmrest.deploy_rewrites`); the detectron2 post-processing of mmrest's
``Detectron2RetinaHead`` likewise.
:func:`build_ort_model` wraps the file in mmdeploy's ONNX
Runtime backend model, which takes the same ``test_step`` data as the
PyTorch model. The checks of ``tools/deploy.py``: the graph's outputs
(:func:`onnx_outputs`) against the model with mmdeploy's rewrites run
in PyTorch (:func:`rewritten_outputs`, a segmentor's
:func:`rewritten_logits`; :func:`graph_matches`, :func:`seg_graph_report`
with a binary segmentor's :func:`binary_threshold`, MaskFormer's
:func:`logits_graph_report`), and the backend
model's detections or label
map against the PyTorch model's own (:func:`compare`,
:func:`compare_maps`, :func:`agrees`).

Needs ``mmdeploy``, ``onnx`` and ``onnxruntime``
(``requirements/deploy.txt`` and ``requirements/mmdeploy.txt``).
"""
import contextlib
import copy
import functools
import importlib.util
import math
import os
import os.path as osp
import types
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch

from .utils import torch_compat

#: The tasks :func:`ort_deploy_cfg` knows, as mmdeploy names them.
DEPLOY_TASKS = ('detection', 'instance-seg', 'panoptic-seg', 'segmentation',
                'segmentation-logits')
#: The lowest ONNX opset mmdeploy 1.3.1's symbolic functions support.
MIN_OPSET = 11
#: The dynamic axes of an image batch (the input, a segmentor's output).
_IMAGE_AXES = {0: 'batch', 2: 'height', 3: 'width'}

_INSTALL = ('pip install -r requirements/deploy.txt -c '
            'requirements/constraints.txt && pip install --no-deps -r '
            'requirements/mmdeploy.txt')


def check_requirements() -> None:
    """Raise an ImportError naming what is missing among ``mmdeploy``,
    ``onnx`` and ``onnxruntime``."""
    missing = [
        name for name in ('mmdeploy', 'onnx', 'onnxruntime')
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ImportError(
            f'Deploying with mmdeploy needs {", ".join(missing)}, which '
            f'{"is" if len(missing) == 1 else "are"} not installed. Install '
            f'with: {_INSTALL}')


def ort_deploy_cfg(task: str = 'detection',
                   opset_version: Optional[int] = None) -> dict:
    """mmdeploy 1.3.1's ONNX Runtime deploy config with dynamic shapes, as a
    dict: ``configs/mmdet/detection/detection_onnxruntime_dynamic.py``,
    ``configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py``,
    ``configs/mmdet/panoptic-seg/panoptic-seg_maskformer_onnxruntime_dynamic.py``
    or ``configs/mmseg/segmentation_onnxruntime_dynamic.py`` with their
    bases flattened (opset 11, MaskFormer's 13; dynamic batch, height and
    width; at most 100 detections).

    Args:
        task (str): ``'detection'`` (boxes), ``'instance-seg'`` (boxes
            and masks), ``'panoptic-seg'`` (MaskFormer and Mask2Former: the
            graph gives the class and mask logits of the queries, and
            mmdeploy's backend model runs the config's fusion head on them
            in PyTorch: instances, a panoptic map or both, as the config's
            ``test_cfg`` asks), ``'segmentation'`` (a label map at the
            network input's size) or ``'segmentation-logits'`` (the same
            config with ``with_argmax=False``: the logits, which
            :func:`build_ort_model` resizes and labels as mmseg does).
        opset_version (int, optional): The ONNX opset; mmdeploy's (the
            default) is 11, 13 for ``'panoptic-seg'``. From 16 on,
            mmdeploy exports mmcv's aligned RoIAlign as ONNX's with
            ``half_pixel`` coordinates, which computes RoIs smaller than one
            feature pixel as mmcv does; before 16 ONNX Runtime widens them
            to one pixel (Mask R-CNN; docs/deployment.md).
    """
    if task not in DEPLOY_TASKS:
        raise ValueError(f'task must be one of {DEPLOY_TASKS}, got {task!r}')
    if opset_version is None:
        opset_version = 13 if task == 'panoptic-seg' else MIN_OPSET
    _check_opset(opset_version)
    if task.startswith('segmentation'):
        return _onnx_deploy_cfg(
            opset_version, dict(output=_IMAGE_AXES),
            dict(
                type='mmseg',
                task='Segmentation',
                with_argmax=task == 'segmentation'))
    detections = {0: 'batch', 1: 'num_dets'}
    outputs = dict(dets=detections, labels=detections)
    post_processing = dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1)
    model_type = 'end2end'
    if task == 'instance-seg':
        outputs['masks'] = {0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'}
        post_processing['export_postprocess_mask'] = False
    if task == 'panoptic-seg':
        outputs = dict(
            cls_logits={0: 'batch'}, mask_logits={
                0: 'batch',
                2: 'h',
                3: 'w'
            })
        post_processing.update(
            score_threshold=0.0, export_postprocess_mask=False)
        model_type = 'panoptic_end2end'
    return _onnx_deploy_cfg(
        opset_version, outputs,
        dict(
            type='mmdet',
            task='ObjectDetection',
            model_type=model_type,
            post_processing=post_processing))


def _onnx_deploy_cfg(opset_version: int, outputs: dict,
                     codebase_config: dict) -> dict:
    """A deploy config for ONNX Runtime; ``outputs`` maps each output's
    name to its dynamic axes, in the graph's order (each a copy here)."""
    axes = dict(input=_IMAGE_AXES, **outputs)
    return dict(
        onnx_config=dict(
            type='onnx',
            export_params=True,
            keep_initializers_as_inputs=False,
            opset_version=opset_version,
            save_file='end2end.onnx',
            input_names=['input'],
            output_names=list(outputs),
            input_shape=None,
            optimize=True,
            dynamic_axes={
                k: dict(v)
                for k, v in axes.items()
            }),
        codebase_config=codebase_config,
        backend_config=dict(type='onnxruntime'))


def max_opset() -> int:
    """The highest opset of this torch's TorchScript ONNX exporter, the one
    mmdeploy drives: 17 on torch 2.1, 20 on torch 2.13 to 2.15 (above it
    torch 2.1 warns and writes a graph anyway)."""
    from torch.onnx import _constants
    return getattr(_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 17)


def _check_opset(opset_version) -> None:
    if isinstance(opset_version, bool) or not isinstance(
            opset_version, int) or opset_version < MIN_OPSET:
        raise ValueError(f'opset_version must be an integer of at least '
                         f'{MIN_OPSET} (mmdeploy 1.3.1\'s lowest), got '
                         f'{opset_version!r}')
    if opset_version > max_opset():
        raise ValueError(
            f'opset_version {opset_version} is above {max_opset()}, the '
            f'highest of torch {torch.__version__}\'s TorchScript ONNX '
            'exporter, which mmdeploy uses')


def load_deploy_cfg(deploy_cfg, opset_version: Optional[int] = None):
    """A deploy config as an mmengine ``Config`` (a copy): a task name of
    :data:`DEPLOY_TASKS`, an mmdeploy deploy-config file, a dict or a
    ``Config``; ``opset_version``, if given, replaces its
    ``onnx_config.opset_version``."""
    from mmengine.config import Config
    if isinstance(deploy_cfg, Config):
        cfg = copy.deepcopy(deploy_cfg)
    elif isinstance(deploy_cfg, dict):
        cfg = Config(copy.deepcopy(deploy_cfg))
    elif deploy_cfg in DEPLOY_TASKS:
        cfg = Config(ort_deploy_cfg(deploy_cfg))
    elif not osp.isfile(deploy_cfg):
        raise FileNotFoundError(
            f'deploy config must be one of {DEPLOY_TASKS} or a file of '
            f'mmdeploy deploy config; {deploy_cfg!r} is neither')
    else:
        cfg = Config.fromfile(deploy_cfg)
    if opset_version is not None:
        _check_opset(opset_version)
        cfg.onnx_config.opset_version = opset_version
    return cfg


def _cast_long(g, x, non_blocking=False):
    """torch's removed ``symbolic_opset9._cast_Long``: Cast to INT64."""
    return g.op('Cast', x, to_i=7)  # onnx.TensorProto.INT64


@contextlib.contextmanager
def mmdeploy_torch_shims() -> Iterator[None]:
    """Make mmdeploy 1.3.1's ONNX export work with torch >= 2.9, for the
    duration of the ``with`` block (see the module's docstring):
    ``torch.onnx.export`` defaults to ``dynamo=False`` (where it has the
    argument, torch >= 2.5), and
    ``torch.onnx.symbolic_opset9._cast_Long`` exists. Both are undone on
    exit; an explicit ``dynamo=`` and an existing ``_cast_Long`` are left as
    they are.
    """
    import torch.onnx.symbolic_opset9 as opset9
    export = torch.onnx.export

    def export_torchscript(*args, **kwargs):
        if torch_compat.ONNX_EXPORT_HAS_DYNAMO:  # torch < 2.5: no choice
            kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    export_torchscript.__wrapped__ = export
    add_cast = not hasattr(opset9, '_cast_Long')
    torch.onnx.export = export_torchscript
    if add_cast:
        opset9._cast_Long = _cast_long
    try:
        yield
    finally:
        torch.onnx.export = export
        if add_cast and getattr(opset9, '_cast_Long', None) is _cast_long:
            del opset9._cast_Long


def build_detector(config,
                   deploy_cfg: Union[str, dict] = 'detection',
                   checkpoint: Optional[str] = None,
                   device: str = 'cpu',
                   cfg_options: Optional[dict] = None):
    """mmdeploy's task processor for a detector or segmentor config and the
    PyTorch model in eval mode.

    Args:
        config (str | Config): The mmdet or mmseg config (file or Config).
            A segmentor must test whole images (``test_cfg.mode='whole'``,
            the only mode mmdeploy exports).
        deploy_cfg (str | dict | Config): See :func:`load_deploy_cfg`; for
            the config's codebase (mmdet or mmseg).
        checkpoint (str, optional): A checkpoint of the whole model of that
            config. Without one, the weights are initialised from scratch
            (the backbone's pretrained ``init_cfg`` is dropped, so no file is
            needed).
        device (str): Where to build the model.
        cfg_options (dict, optional): Overrides of config entries.

    Returns:
        tuple: ``(task_processor, model)``.
    """
    check_requirements()
    from mmengine.config import Config

    import mmrest  # noqa: F401  (registers ResT)
    from .checkpoint import (CheckpointError, extract_state_dict,
                             load_checkpoint_file)
    source = 'the config'
    if isinstance(config, str):
        if not osp.isfile(config):
            raise FileNotFoundError(f'Config file not found: {config!r}')
        source = repr(config)
        config = Config.fromfile(config)
    else:
        config = copy.deepcopy(config)
    if cfg_options:
        config.merge_from_dict(cfg_options)
    deploy_cfg = load_deploy_cfg(deploy_cfg)
    scope = config.get('default_scope', 'mmdet')
    codebase = deploy_cfg.get('codebase_config', {}).get('type')
    if scope not in ('mmdet', 'mmseg') or scope != codebase:
        raise ValueError(
            f'{source} is an {scope} config (model type '
            f'{config.model.get("type")!r}) and the deploy config is for '
            f"{codebase}; mmrest.deploy exports mmdet detectors with the "
            "deploy configs 'detection' and 'instance-seg', mmseg "
            "segmentors with 'segmentation' and 'segmentation-logits'")
    if scope == 'mmseg':
        mode = config.model.get('test_cfg', {}).get('mode', 'whole')
        if mode != 'whole':
            raise ValueError(
                f"{source} tests in {mode!r} mode; mmdeploy 1.3.1 exports "
                "whole-image inference only: add --cfg-options "
                "model.test_cfg.mode=whole (and compare with mmseg in that "
                'mode)')
    config.model.backbone.init_cfg = None
    from mmdeploy.apis import build_task_processor
    task_processor = build_task_processor(config, deploy_cfg, device)
    model = task_processor.build_pytorch_model(None)
    if checkpoint is None:
        model.init_weights()
    else:
        weights = extract_state_dict(
            load_checkpoint_file(checkpoint), source=repr(checkpoint))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing:
            raise CheckpointError(
                f'{checkpoint!r} is not a checkpoint of this detector: it '
                f'lacks {len(missing)} of its weights, e.g. {missing[:3]}')
    return task_processor, model.to(device).eval()


def make_input(task_processor, model, image):
    """The detector's data and the ONNX model's input for ``image`` (a file
    name or an HxWx3 uint8 BGR array), through the config's test pipeline
    and the detector's data preprocessor (``data['inputs']`` is the
    normalised batch: feed it to the forward, not to ``test_step``)."""
    # mmdeploy's detection and segmentation processors return the data
    # preprocessor's stacked batch (a tensor, one image here)
    return task_processor.create_input(
        image, None, data_preprocessor=model.data_preprocessor)


def export_detector(task_processor,
                    model,
                    image,
                    out_dir: str,
                    deploy_cfg,
                    mmdet_nms: bool = True) -> str:
    """Export ``model`` with mmdeploy as its ``torch2onnx`` would, within
    :func:`mmdeploy_torch_shims`; returns the ``.onnx`` file.

    mmdeploy's graph optimiser is a C++ extension the wheel does not ship,
    so ``optimize`` is off (mmdeploy would warn and skip it).

    Args:
        task_processor: From :func:`build_detector`.
        model: The PyTorch detector, in eval mode. mmdeploy leaves its
            rewritten ``forward`` bound on the instance; it is removed, so the
            model stays usable.
        image: The example image (file name or HxWx3 uint8 BGR array).
        out_dir (str): Where to write the file (created if needed).
        deploy_cfg (str | dict | Config): See :func:`load_deploy_cfg`.
        mmdet_nms (bool): The RPN's, the box head's, RetinaNet's, FCOS's,
            ATSS's, TOOD's and the cascade's post-processing as mmdet's
            instead of mmdeploy's (:mod:`mmrest.deploy_rewrites`).
    """
    from mmdeploy.apis.core.pipeline_manager import no_mp
    from mmdeploy.apis.onnx import export
    from mmdeploy.utils import get_backend, get_dynamic_axes, get_onnx_config

    from .deploy_rewrites import mmrest_rewrites
    deploy_cfg = load_deploy_cfg(deploy_cfg)
    onnx_cfg = get_onnx_config(deploy_cfg)
    os.makedirs(out_dir, exist_ok=True)
    prefix = osp.join(
        out_dir,
        osp.splitext(onnx_cfg.get('save_file', 'end2end.onnx'))[0])
    data, inputs = make_input(task_processor, model, image)
    names = onnx_cfg['input_names'] + onnx_cfg['output_names']
    had_forward = 'forward' in model.__dict__
    try:
        with mmdeploy_torch_shims(), no_mp(), mmrest_rewrites(mmdet_nms):
            export(
                model,
                inputs,
                output_path_prefix=prefix,
                backend=get_backend(deploy_cfg).value,
                input_metas={
                    'data_samples': data['data_samples'],
                    'mode': 'predict'
                },
                context_info={'deploy_cfg': deploy_cfg},
                input_names=onnx_cfg['input_names'],
                output_names=onnx_cfg['output_names'],
                opset_version=onnx_cfg.get('opset_version', 11),
                dynamic_axes=get_dynamic_axes(deploy_cfg, names),
                keep_initializers_as_inputs=onnx_cfg.get(
                    'keep_initializers_as_inputs', True),
                optimize=False)
    finally:
        if not had_forward:
            model.__dict__.pop('forward', None)
    return prefix + '.onnx'


def build_ort_model(task_processor, onnx_file: str):
    """mmdeploy's ONNX Runtime backend model of ``onnx_file``; its
    ``test_step(data)`` returns ``DetDataSample``s like the detector's, or
    ``SegDataSample``s like the segmentor's, packed by
    :func:`_pack_as_mmseg` in place of mmdeploy's packing. A segmentor's
    logits (deploy config ``segmentation-logits``: mmdeploy's
    ``with_argmax=False``) are resized to the original image and turned
    into labels as mmseg does (its ``postprocess_result``: bilinear, then
    the argmax), where mmdeploy's backend model takes the argmax first and
    resizes the labels (nearest). Labels (``segmentation``'s, and a binary
    segmentor's in either config: mmdeploy's rewrite thresholds its logits
    in the graph) are taken as mmseg takes logits (a data preprocessor's
    test padding cut off, a flip undone) and resized nearest, where
    mmdeploy's packing resizes the padded map (the padding stretched over
    the image) and takes a binary segmentor's labels' argmax over the one
    channel (every pixel 0)."""
    if not osp.isfile(onnx_file):
        raise FileNotFoundError(f'ONNX file not found: {onnx_file!r}')
    model = task_processor.build_backend_model([onnx_file])
    if task_processor.deploy_cfg.codebase_config.type == 'mmseg':
        model.pack_result = functools.partial(
            _pack_as_mmseg, segmentor_view(task_processor.model_cfg.model))
    return model


def segmentor_view(model_cfg) -> types.SimpleNamespace:
    """What mmseg's ``BaseSegmentor.postprocess_result`` reads of a
    segmentor with several output channels, from its model config:
    ``align_corners``, the decode head's or a cascade's last head's (as
    mmseg's ``CascadeEncoderDecoder`` takes it)."""
    head = model_cfg.decode_head
    if isinstance(head, (list, tuple)):
        head = head[-1]
    return types.SimpleNamespace(
        align_corners=head.get('align_corners', False))


def _pack_as_mmseg(segmentor, batch_outputs, data_samples):
    """The graph's logits as mmseg's ``postprocess_result`` labels them;
    labels (a binary segmentor's) taken as it takes logits (the test
    padding cut off, a flip undone), then resized to the original image
    nearest, not bilinear."""
    if batch_outputs.is_floating_point():
        from mmseg.models.segmentors import BaseSegmentor
        return BaseSegmentor.postprocess_result(segmentor, batch_outputs,
                                                data_samples)
    from mmengine.structures import PixelData
    for labels, sample in zip(batch_outputs, data_samples):
        meta = sample.metainfo
        left, right, top, bottom = meta.get('img_padding_size',
                                            meta.get('padding_size', [0] * 4))
        height, width = labels.shape[-2:]
        labels = labels[:, top:height - bottom, left:width - right]
        if meta.get('flip'):
            direction = meta.get('flip_direction')
            if direction not in ('horizontal', 'vertical'):
                raise ValueError('flip_direction must be horizontal or '
                                 f'vertical, got {direction!r}')
            labels = labels.flip(-1 if direction == 'horizontal' else -2)
        size = tuple(meta['ori_shape'])
        if tuple(labels.shape[-2:]) != size:
            labels = torch.nn.functional.interpolate(
                labels[None].float(), size=size,
                mode='nearest')[0].to(labels.dtype)
        sample.set_data(dict(pred_sem_seg=PixelData(data=labels)))
    return data_samples


def rewritten_outputs(task_processor,
                      model,
                      data,
                      inputs,
                      mmdet_nms: bool = True) -> tuple:
    """What the ONNX graph should compute: the model's forward with
    mmdeploy's rewrites applied (its post-processing included; with
    ``mmdet_nms``, as :func:`export_detector`'s), run in PyTorch, on
    ``make_input``'s ``data`` and ``inputs``: ``(dets, labels)`` or
    ``(dets, labels, masks)`` of a detector, ``(labels, )`` of a segmentor
    (N x 1 x H x W; with ``with_argmax=False`` in the deploy config its
    logits, but a binary one's labels: see :func:`rewritten_logits`),
    batched as the graph's outputs."""
    with _rewriting(task_processor.deploy_cfg, mmdet_nms):
        out = model(inputs, data['data_samples'], mode='predict')
    # a segmentor's graph has one output, a detector's several
    return (out, ) if isinstance(out, torch.Tensor) else tuple(out)


def rewritten_logits(task_processor, model, data, inputs) -> torch.Tensor:
    """A segmentor's logits at the network input's size (N x C x H x W)
    as mmdeploy's rewritten forward computes them (run in PyTorch, as in
    :func:`rewritten_outputs`), before its argmax or, for a binary
    segmentor (C = 1), its threshold, which it puts in the graph in every
    deploy config."""
    samples = copy.deepcopy(data['data_samples'])
    for sample in samples:  # as mmdeploy's forward sets it
        sample.set_metainfo(dict(img_shape=tuple(inputs.shape[2:])))
    with _rewriting(task_processor.deploy_cfg):
        return model.predict(inputs, samples)


@contextlib.contextmanager
def _rewriting(cfg, mmdet_nms: bool = True) -> Iterator[None]:
    """mmdeploy's rewrites for ``cfg`` with mmrest's (mmdet's
    post-processing unless ``mmdet_nms`` is False), without autograd, the
    backbones' literal computation."""
    from mmdeploy.core import RewriterContext
    from mmdeploy.utils import get_backend, get_ir_config

    from .backbones import kernels
    from .deploy_rewrites import mmrest_rewrites

    # the backbones' literal computation (the same formulas): their fast
    # path's SDPA call would meet mmdeploy's rewrite of SDPA, which divides
    # by the scale (the export writes the formula out instead)
    with torch.no_grad(), kernels.literal(), mmdeploy_torch_shims(), \
            mmrest_rewrites(mmdet_nms), RewriterContext(
                cfg=cfg,
                backend=get_backend(cfg).value,
                opset=get_ir_config(cfg).get('opset_version', 11)):
        yield


def mmdeploy_ops_library() -> Optional[str]:
    """The ONNX Runtime library of mmdeploy's custom operators that the
    mmdeploy wheel ships, or None (no mmdeploy, or a build without it).
    mmdeploy exports ``grid_sample`` as its ``mmdeploy::grid_sampler`` at
    every opset (DINO's deformable attention, PointRend); its backend model
    registers the library in every session."""
    if importlib.util.find_spec('mmdeploy') is None:
        return None
    from mmdeploy.backend.onnxruntime.init_plugins import get_ops_path
    path = get_ops_path()
    return path if path and osp.isfile(path) else None


def onnx_outputs(onnx_file: str, inputs: torch.Tensor) -> tuple:
    """The ONNX file's outputs on ``inputs`` in ONNX Runtime (CPU), as
    tensors, with mmdeploy's custom operators
    (:func:`mmdeploy_ops_library`) where it has them, as its backend
    model runs the file."""
    import onnxruntime
    if not osp.isfile(onnx_file):
        raise FileNotFoundError(f'ONNX file not found: {onnx_file!r}')
    options = onnxruntime.SessionOptions()
    library = mmdeploy_ops_library()
    if library is not None:
        options.register_custom_ops_library(library)
    session = onnxruntime.InferenceSession(
        onnx_file, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return tuple(
        torch.from_numpy(out)
        for out in session.run(None, {name: inputs.cpu().numpy()}))


#: The largest differences :func:`graph_matches` allows between the graph's
#: outputs and the rewritten PyTorch model's: box corners, relative to
#: the input's larger side; scores and mask probabilities, absolute; a
#: segmentor's logits, relative to the largest. Far above float32 rounding
#: (a ResT-Lite Mask R-CNN at 128 x 128: 1.5e-5 pixels, mask 8e-6; the
#: trained demo UperNet: logits 1.7e-5 apart, the largest about 10), far
#: below a changed weight's effect.
GRAPH_TOLERANCE = 1e-3


def graph_report(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor],
                 image_size: int) -> dict:
    """How the ONNX graph's ``(dets, labels[, masks])`` (``got``) differ
    from :func:`rewritten_outputs`' (``expected``), first image: numbers of
    detections, whether the labels are equal and, where the numbers agree,
    the largest box difference relative to ``image_size`` (the input's
    larger side), score and mask differences.

    Rows scored 0 or less are left out on both sides, as mmdeploy's backend
    model drops them: its NMS pads its output with one zero box scored 0,
    whose mask comes from an empty RoI, where mmcv's RoIAlign and ONNX
    Runtime's differ (docs/deployment.md)."""

    def detections(outputs):
        keep = outputs[0][0][:, 4] > 0
        return [out[0][keep] for out in outputs]

    expected, got = detections(expected), detections(got)
    dets, labels = expected[0].double(), expected[1]
    got_dets, got_labels = got[0].double(), got[1]
    out = dict(
        num_expected=len(dets),
        num_got=len(got_dets),
        same_labels=bool(
            len(labels) == len(got_labels)
            and torch.equal(labels.long(), got_labels.long())))
    if len(dets) == len(got_dets) and len(dets):
        out['max_box_diff_of_side'] = float(
            (dets[:, :4] - got_dets[:, :4]).abs().max()) / image_size
        out['max_score_diff'] = float(
            (dets[:, 4] - got_dets[:, 4]).abs().max())
        if len(expected) > 2 and len(got) > 2:
            out['max_mask_diff'] = float(
                (expected[2].double() - got[2].double()).abs().max())
    return out


def logits_graph_report(expected: Sequence[torch.Tensor],
                        got: Sequence[torch.Tensor]) -> dict:
    """How a graph's raw outputs (``got``; MaskFormer's class and mask
    logits, deploy config ``panoptic-seg``) differ from
    :func:`rewritten_outputs`' (``expected``): the numbers of outputs,
    whether their shapes agree and, where they do, the largest difference
    relative to the largest value of its output."""
    out = dict(
        num_expected=len(expected),
        num_got=len(got),
        same_shapes=len(expected) == len(got)
        and all(e.shape == g.shape for e, g in zip(expected, got)))
    if out['same_shapes']:
        out['max_diff_of_scale'] = max(
            float((e.double() - g.double()).abs().max() /
                  e.double().abs().max().clamp(min=1e-12))
            for e, g in zip(expected, got))
    return out


def seg_graph_report(logits: torch.Tensor,
                     got: torch.Tensor,
                     threshold: Optional[float] = None) -> dict:
    """How a segmentor graph's output (``got``: N x 1 x H x W labels, or
    with ``with_argmax=False`` N x C x H x W logits) differs from the
    rewritten segmentor's logits (``logits``: N x C x H x W, from
    :func:`rewritten_logits`): the largest logit (``logit_scale``, what
    differences are measured against), the number of pixels, how many
    labels differ and, of those, the largest margin between the two best
    logits (a difference within rounding is a tie, not an error); for
    logits, their largest difference too. A binary segmentor (C = 1, its
    decode head's ``threshold`` given) labels a pixel 1 where the logit's
    sigmoid exceeds ``threshold``: the margin is the logit's distance from
    the threshold's logit."""
    logits = logits.double()
    out = dict(logit_scale=float(logits.abs().max()))
    if got.is_floating_point():
        out['max_logit_diff'] = float((logits - got.double()).abs().max())
        got = got.argmax(1, keepdim=True)
    if threshold is not None and logits.shape[1] == 1:
        cut = -math.inf if threshold <= 0 else math.inf if threshold >= 1 \
            else math.log(threshold / (1 - threshold))
        labels = (logits > cut).long()
        margin = (logits - cut).abs()
    else:
        labels = logits.argmax(1, keepdim=True)
        top2 = logits.topk(min(2, logits.shape[1]), dim=1)[0]
        margin = top2[:, :1] - top2[:, -1:]
    if labels.shape != got.shape:
        raise ValueError(f'the graph gave labels of shape {tuple(got.shape)} '
                         f'for logits of shape {tuple(logits.shape)}')
    differ = labels != got.long()
    out.update(
        num_pixels=labels.numel(),
        num_differ=int(differ.sum()),
        max_margin_where_differ=float(margin[differ].max())
        if differ.any() else 0.)
    return out


def binary_threshold(segmentor) -> Optional[float]:
    """A binary segmentor's threshold (its decode head's, or a cascade's
    last head's, with one output channel), else None."""
    head = segmentor.decode_head
    if isinstance(head, torch.nn.ModuleList):
        head = head[-1]
    return head.threshold if head.out_channels == 1 else None


def graph_matches(report: dict, tolerance: float = GRAPH_TOLERANCE) -> bool:
    """Whether :func:`graph_report` shows the rewritten detector's outputs:
    the same detections and labels, each difference within
    ``tolerance``; or whether :func:`seg_graph_report` shows the rewritten
    segmentor's labels, except where its two best logits are within
    ``tolerance`` of the largest logit (and its logits within that); or
    whether :func:`logits_graph_report` shows outputs of the same shapes
    within ``tolerance`` of their scale."""
    if 'same_shapes' in report:
        return report['same_shapes'] and \
            report['max_diff_of_scale'] <= tolerance
    if 'num_pixels' in report:
        bound = tolerance * report['logit_scale']
        return (report['max_margin_where_differ'] <= bound
                and report.get('max_logit_diff', 0.) <= bound)
    return (report['num_expected'] == report['num_got']
            and report['same_labels'] and all(
                report.get(key, 0.) <= tolerance
                for key in ('max_box_diff_of_side', 'max_score_diff',
                            'max_mask_diff')))


def synthetic_image(shape: Sequence[int], seed: int = 0):
    """A deterministic HxWx3 uint8 picture with some structure (coloured
    rectangles on a gradient, a little noise), to export and check with
    when no image is at hand. (On plain noise the features of a detector
    barely change from place to place.)"""
    import numpy as np
    h, w = shape
    if h < 16 or w < 16:
        raise ValueError(f'image shape must be at least 16x16, got {shape}')
    rng = np.random.default_rng(seed)
    img = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0, 1, 3)
    img = np.broadcast_to(img, (h, w, 3)).copy()
    for _ in range(6):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        # sides of 8 to half the image's (8 where that is under 9)
        img[y:y + rng.integers(8, max(9, h // 2)),
            x:x + rng.integers(8, max(9, w // 2))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def predict(model, data):
    """The prediction for the first image of ``data`` (from
    :func:`make_input`, already through the model's data preprocessor: the
    forward takes it as it is, where ``test_step`` would normalise the
    image a second time), without autograd: a detector's
    ``pred_instances``, a segmentor's label map (H x W, of the original
    image), or a panoptic detector's map of segment ids where it predicts
    no instances (MaskFormer with ``instance_on=False``)."""
    with torch.no_grad():
        sample = model(
            data['inputs'],
            copy.deepcopy(data['data_samples']),
            mode='predict')[0]
    if 'pred_sem_seg' in sample:
        return sample.pred_sem_seg.data[0]
    if 'pred_instances' not in sample and 'pred_panoptic_seg' in sample:
        return sample.pred_panoptic_seg.sem_seg[0]
    return sample.pred_instances


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of two sets of (x1, y1, x2, y2) boxes."""
    a, b = a.double(), b.double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def match_detections(ref, got) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pair the detections of two ``pred_instances``: each of ``ref``, in
    order of score, with the unpaired one of ``got`` of the same label and
    the highest IoU. Returns the IoUs of the pairs (0 where none is left)
    and the index into ``got`` (-1 where none)."""
    iou = box_iou(ref.bboxes, got.bboxes)
    iou[ref.labels[:, None] != got.labels[None, :]] = -1
    ious = torch.zeros(len(ref), dtype=torch.float64)
    index = torch.full((len(ref), ), -1, dtype=torch.long)
    for i in torch.argsort(ref.scores, descending=True).tolist():
        if iou.shape[1] == 0:
            break
        best, j = iou[i].max(0)
        if best >= 0:
            ious[i], index[i] = best, j
            iou[:, j] = -1
    return ious, index


def compare(ref, got) -> dict:
    """How two detectors' ``pred_instances`` on one image differ, for the
    check of ``tools/deploy.py`` (:func:`agrees`): numbers of detections,
    and over the detections of ``ref`` paired by :func:`match_detections`,
    the lowest box IoU (0 where one is unpaired), the largest score and
    box-corner differences and (with masks) the lowest mask IoU."""
    ious, index = match_detections(ref, got)
    paired = index >= 0
    out = dict(
        num_ref=len(ref),
        num_got=len(got),
        num_paired=int(paired.sum()),
        min_box_iou=float(ious.min()) if len(ious) else 1.0)
    i, j = paired.nonzero()[:, 0], index[paired]
    if len(i):
        out['max_score_diff'] = float(
            (ref.scores[i].double() - got.scores[j].double()).abs().max())
        out['max_box_diff'] = float(
            (ref.bboxes[i].double() - got.bboxes[j].double()).abs().max())
        if 'masks' in ref and 'masks' in got:
            a, b = ref.masks[i].bool(), got.masks[j].bool()
            inter = (a & b).flatten(1).sum(1).double()
            union = (a | b).flatten(1).sum(1).double().clamp(min=1)
            out['min_mask_iou'] = float((inter / union).min())
    return out


def compare_maps(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """How two label maps of one image (H x W; :func:`predict` of two
    segmentors) differ, for the check of ``tools/deploy.py``: the
    fraction of pixels with the same label, and over the labels found in
    either map, the lowest IoU of a label's pixels in the two maps."""
    if ref.shape != got.shape:
        raise ValueError(f'label maps of shapes {tuple(ref.shape)} and '
                         f'{tuple(got.shape)} cannot be compared')
    ref, got = ref.long().flatten(), got.long().flatten()
    labels = torch.unique(torch.cat([ref, got]))
    a, b = ref[None] == labels[:, None], got[None] == labels[:, None]
    ious = (a & b).sum(1).double() / (a | b).sum(1).double()
    return dict(
        num_pixels=len(ref),
        pixel_agreement=float((ref == got).double().mean()),
        num_labels=len(labels),
        min_label_iou=float(ious.min()))


def agrees(report: dict, min_iou: float = 0.9) -> bool:
    """Whether :func:`compare`'s ``report`` shows the same detections: each
    of the reference's paired with one of the same label at box IoU (and,
    with masks, mask IoU) of at least ``min_iou``, and none of the other's
    left over (an extra detection is a difference too); for
    :func:`compare_maps`' report, whether each label's pixels in the two
    maps have an IoU of at least ``min_iou``."""
    if not 0 <= min_iou <= 1:
        raise ValueError(f'an IoU bound lies in [0, 1], got {min_iou}')
    if 'pixel_agreement' in report:  # compare_maps'
        return report['min_label_iou'] >= min_iou
    return (report['num_paired'] == report['num_ref'] == report['num_got']
            and report['min_box_iou'] >= min_iou
            and report.get('min_mask_iou', 1.) >= min_iou)
