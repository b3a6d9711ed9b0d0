# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""ONNX export of a config's backbone (and neck), checked with onnxruntime.

The graph has dynamic batch, height and width: ResT takes every size from
the convolutions, and while a graph is recorded its attention runs all
queries as one chunk, so nothing of the export size is baked in. The check
runs the exported file in onnxruntime at several sizes and compares it with
the eager PyTorch module on the same input.

Needs ``onnx`` and ``onnxruntime`` (``requirements/deploy.txt``), and
``onnxscript`` for the dynamo exporter. The dynamo exporter
(``torch.onnx.export(dynamo=True)``) needs torch >= 2.5; on an older torch
asking for it is an error that says so, and the TorchScript exporter (the
default, what mmdeploy uses) works on every supported torch.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .utils import torch_compat

#: The exporters :func:`export_onnx` knows: torch's TorchScript-based one
#: (what mmdeploy uses) and the ``torch.export``-based one.
EXPORTERS = ('torchscript', 'dynamo')


class FeatureExtractor(nn.Module):
    """The backbone, optionally followed by the neck, as one module whose
    output is a tuple of feature maps.

    Args:
        backbone (nn.Module): The backbone.
        neck (nn.Module, optional): A neck such as FPN.
    """

    def __init__(self, backbone: nn.Module, neck: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        return tuple(feats)


def build_feature_extractor(
        config: str,
        checkpoint: Optional[str] = None,
        with_neck: bool = False,
        cfg_options: Optional[dict] = None) -> FeatureExtractor:
    """The backbone (and neck) of a detector or segmentor config, in eval
    mode, with the weights of ``checkpoint`` (a whole-model checkpoint of
    that config) or, without one, from scratch (no pretrained file needed).
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file not found: {config!r}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS as registry
    else:
        from mmdet.registry import MODELS as registry
    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg['init_cfg'] = None
    backbone = registry.build(backbone_cfg)
    neck = None
    if with_neck:
        if cfg.model.get('neck') is None:
            raise ValueError(f'{config} has no neck to export')
        # a list of necks runs in sequence, as in mmdet's detectors
        neck = registry.build(cfg.model.neck)
    model = FeatureExtractor(backbone, neck)
    if checkpoint is not None:
        _load_whole_model_weights(model, checkpoint, config, with_neck)
    else:
        backbone.init_weights()
        if neck is not None:
            neck.init_weights()
    return model.eval()


def _load_whole_model_weights(model: FeatureExtractor, checkpoint: str,
                              config: str, with_neck: bool) -> None:
    """Load the backbone's (and neck's) weights of a whole-model checkpoint
    of ``config``; a checkpoint that lacks some, or holds more or other
    shapes (another variant), is a :class:`CheckpointError`."""
    from .checkpoint import (CheckpointError, extract_state_dict,
                             load_checkpoint_file)
    weights = extract_state_dict(
        load_checkpoint_file(checkpoint), source=repr(checkpoint))
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise CheckpointError(
            f'{checkpoint!r} is not a checkpoint of {config}: it lacks '
            f'{len(missing)} of the exported weights, e.g. {missing[:3]}')
    # A deeper variant holds all of a shallower one's keys: its extra
    # blocks, or other widths, mean another model.
    modules = ('backbone.', 'neck.') if with_neck else ('backbone.', )
    extra = [k for k in weights if k.startswith(modules) and k not in wanted]
    wrong = [
        f'{k} {tuple(weights[k].shape)} (expected '
        f'{tuple(v.shape)})' for k, v in wanted.items()
        if weights[k].shape != v.shape
    ]
    if extra or wrong:
        raise CheckpointError(
            f'{checkpoint!r} is not a checkpoint of {config}: ' + '; '.join(
                filter(None, [
                    extra and f'it holds {len(extra)} weights that model '
                    f'lacks, e.g. {extra[:3]}', wrong
                    and f'{len(wrong)} weights differ in shape, e.g. '
                    f'{wrong[:3]}'
                ])) + ' (a checkpoint of another variant?)')
    model.load_state_dict({k: weights[k] for k in model.state_dict()})


def export_onnx(model: nn.Module,
                out_file: str,
                shape: Sequence[int] = (640, 960),
                exporter: str = 'torchscript',
                opset_version: int = 17) -> List[str]:
    """Export ``model`` (image batch in, tuple of maps out) to ONNX with
    dynamic batch, height and width; returns the output names.

    Args:
        model (nn.Module): The module to export, in eval mode.
        out_file (str): The ``.onnx`` file to write.
        shape (Sequence[int]): Height and width of the example input.
        exporter (str): ``'torchscript'`` or ``'dynamo'`` (torch >= 2.5).
        opset_version (int): The ONNX opset.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got '
                         f'{exporter!r}')
    if exporter == 'dynamo' and not torch_compat.ONNX_EXPORT_HAS_DYNAMO:
        raise RuntimeError(
            f"exporter='dynamo' needs torch.onnx.export(dynamo=True), which "
            f'torch {torch.__version__} does not have (torch >= 2.5 does). '
            "Use exporter='torchscript' (--exporter torchscript), which "
            'works with this torch, or a newer torch.')
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f'shape must be (height, width), got {shape!r}')
    in_channels = getattr(_backbone_of(model), 'in_channels', 3)
    x = torch.randn(1, in_channels, *shape)
    with torch.no_grad():
        num_outputs = len(model(x))
    names = [f'out{i}' for i in range(num_outputs)]
    if exporter == 'torchscript':
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        for name in names:
            axes[name] = {0: 'batch', 2: f'{name}_h', 3: f'{name}_w'}
        # dynamo=False where torch has the choice: the default is the
        # dynamo exporter since torch 2.9
        choice = dict(dynamo=False) if torch_compat.ONNX_EXPORT_HAS_DYNAMO \
            else {}
        torch.onnx.export(
            model, (x, ),
            out_file,
            **choice,
            input_names=['input'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset_version)
    else:
        # torch.export specialises sizes 0 and 1 and the last stage's map
        # is 1 x 1 below 33 pixels: the dynamo graph takes 33 and more
        dim = torch.export.Dim
        dynamic = {
            'x': {
                0: dim('batch', min=1, max=64),
                2: dim('height', min=33, max=4096),
                3: dim('width', min=33, max=4096)
            }
        }
        program = torch.onnx.export(
            model, (x.expand(2, -1, -1, -1).contiguous(), ),
            dynamo=True,
            input_names=['input'],
            output_names=names,
            dynamic_shapes=dynamic,
            opset_version=max(opset_version, 18))
        program.save(out_file)
    return names


def _backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, 'backbone', model)


def check_onnx(onnx_file: str,
               model: nn.Module,
               sizes: Sequence[Sequence[int]],
               batch: int = 1) -> Dict[str, List[Tuple[float, float]]]:
    """Run ``onnx_file`` in onnxruntime at each (height, width) of
    ``sizes`` and measure it against the model in float64.

    Returns:
        dict: ``'HxW'`` -> for each output, ``(err_onnx, err_eager)``: the
        relative errors ``||y - y64|| / ||y64||`` of onnxruntime's output
        and of the eager model's literal (authors') float32 computation
        (:func:`mmrest.backbones.kernels.literal`), both against the eager
        model run in float64 (the exact result). ONNX Runtime computes the
        same formulas in another order, so its error should be of the size
        of the authors' float32 error (:func:`onnx_matches`); the eager
        fast path's inference kernels are more accurate than both.
    """
    import copy

    import numpy as np
    import onnxruntime as ort

    from .backbones import kernels

    session = ort.InferenceSession(
        onnx_file, providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name
    in_channels = getattr(_backbone_of(model), 'in_channels', 3)
    exact = copy.deepcopy(model).double()
    errors = {}
    for height, width in sizes:
        x = torch.randn(batch, in_channels, height, width)
        with torch.no_grad():
            with kernels.literal():
                eager = model(x)
            reference = exact(x.double())
        actual = session.run(None, {input_name: x.numpy()})
        if len(actual) != len(reference):
            raise RuntimeError(
                f'{onnx_file} gives {len(actual)} outputs at {height}x'
                f'{width}, the model {len(reference)}')
        errs = []
        for got, mine, ref in zip(actual, eager, reference):
            if tuple(got.shape) != tuple(ref.shape):
                raise RuntimeError(
                    f'{onnx_file} at {height}x{width}: output shape '
                    f'{tuple(got.shape)}, the model gives {tuple(ref.shape)}')
            got = torch.from_numpy(np.asarray(got, dtype=np.float64))
            norm = ref.norm()
            errs.append((((got - ref).norm() / norm).item(),
                         ((mine.double() - ref).norm() / norm).item()))
        errors[f'{height}x{width}'] = errs
    return errors


#: ``onnx_matches``: how much larger than the eager float32 error the ONNX
#: error may be (another order of the same sums), and a floor of about 80
#: float32 epsilons below which any float32 result is as good as it gets.
ERROR_FACTOR = 4.0
ERROR_FLOOR = 1e-5


def onnx_matches(err_onnx: float,
                 err_eager: float,
                 factor: float = ERROR_FACTOR,
                 floor: float = ERROR_FLOOR) -> bool:
    """Whether an ONNX output is as accurate as the eager float32 one."""
    return err_onnx <= factor * err_eager + floor
