# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""detectron2 checkpoints of the authors' ResT detectors, converted for mmdet.

The authors (`wofmanaf/ResT`, ``object_detection/``) trained RetinaNet and
Mask R-CNN with ResT / ResT v2 backbones in detectron2. This module turns
such a checkpoint into one that mmdet's ``RetinaNet`` / ``MaskRCNN`` with an
mmrest backbone loads strictly. What differs between the two frameworks:

* names: ``backbone.bottom_up.*`` -> ``backbone.*`` (mmrest's ResT and
  ResTV2 use the authors' module names; ResT v2's output norms
  ``norm_{i}.0`` (a LayerNorm in an ``nn.Sequential`` in the authors'
  detection code) -> ``norm_{i}``), FPN ``fpn_lateral{2..5}`` /
  ``fpn_output{2..5}`` -> ``neck.lateral_convs.{i}.conv`` /
  ``neck.fpn_convs.{i}.conv`` (``i`` counted from the first FPN input),
  RetinaNet's ``top_block.p6`` / ``p7`` -> the two extra ``fpn_convs``; RPN
  ``conv`` / ``objectness_logits`` / ``anchor_deltas`` -> ``rpn_conv`` /
  ``rpn_cls`` / ``rpn_reg``; box head ``fc1`` / ``fc2`` -> ``shared_fcs``,
  ``cls_score`` / ``bbox_pred`` -> ``fc_cls`` / ``fc_reg``; mask head
  ``mask_fcn{1..4}`` / ``deconv`` / ``predictor`` -> ``convs.{0..3}.conv`` /
  ``upsample`` / ``conv_logits``; RetinaNet ``cls_subnet`` / ``bbox_subnet``
  (convolutions at even indices of a Sequential with ReLUs) ->
  ``cls_convs.{j}.conv`` / ``reg_convs.{j}.conv``, ``cls_score`` /
  ``bbox_pred`` -> ``retina_cls`` / ``retina_reg``;
* the anchor order at each location: detectron2 lists the anchors of a
  location size by size, each size with every aspect ratio
  (``DefaultAnchorGenerator.generate_cell_anchors``); mmdet's
  ``AnchorGenerator`` ratio by ratio, each with every scale. RetinaNet has
  3 sizes x 3 ratios per location, so the A*K class-score channels and the
  A*4 box channels of its head are reordered (anchor ``s * 3 + r`` of
  detectron2 is anchor ``r * 3 + s`` of mmdet). The RPN of the Mask R-CNNs
  has one size per level: the orders agree;
* the same in both, checked in the two frameworks' code: the class-score
  layout (softmax over K + 1 with background last in the box predictor;
  sigmoid over K, channel ``a * K + k`` in RetinaNet), class-specific box
  deltas ``k * 4 + (dx, dy, dw, dh)``, the box coders (detectron2's
  ``BBOX_REG_WEIGHTS`` (10, 10, 5, 5) of the RoI head are mmdet's
  ``target_stds`` (0.1, 0.1, 0.2, 0.2), (1, 1, 1, 1) for the RPN and
  RetinaNet; both clamp dw, dh at log(1000 / 16)), anchor sizes and centres
  (offset 0), RoIAlign (aligned, adaptive sampling) and the FPN level of a
  RoI.

The other differences are settings of the mmdet config, not of the
weights (see ``docs/detectron2_checkpoints.md``): the input normalisation,
image decoding and resizing, RetinaNet's ReLU before P7 and its clipping,
and, for ResT v1, the authors' detectron2 backbone passing a returned
stage's normalised output on to the next stage
(``out_norms_feed_next_stage=True``).

Loading is weights-only; a file that is not a detectron2 checkpoint of a
ResT detector is refused with a message that says what it looks like.
"""
import io
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from .atomic_io import atomic_write
from .family import FAMILY_NAMES, checkpoint_family
from .files import CheckpointError, load_checkpoint_file

#: Anchors per location of the authors' detectors: (sizes, aspect ratios).
RETINANET_ANCHORS = (3, 3)
#: Entries of a detectron2 checkpoint besides ``model`` (training state).
TRAINING_STATE_KEYS = ('optimizer', 'scheduler', 'iteration', 'trainer',
                       'grad_scaler', '__author__', 'matching_heuristics')
#: Buffers older detectron2 versions saved with the weights; not weights
#: of mmdet's model (the normalisation is the config's data_preprocessor,
#: the anchors its anchor generator).
D2_BUFFERS = re.compile(r'^(pixel_mean|pixel_std|'
                        r'(proposal_generator\.)?anchor_generator\..*)$')


def _describe(keys: List[str]) -> str:
    shown = ', '.join(keys[:5])
    return shown + (f', ... ({len(keys)} in all)' if len(keys) > 5 else '')


def identify(checkpoint) -> str:
    """What a loaded checkpoint looks like, in words (for refusals)."""
    if not isinstance(checkpoint, dict):
        return f'a {type(checkpoint).__name__}, not a checkpoint dict'
    if isinstance(checkpoint.get('state_dict'), dict):
        keys = list(checkpoint['state_dict'])
        if any(k.startswith('decode_head.') for k in keys):
            return 'an mmseg (segmentor) checkpoint'
        if any(
                k.startswith(('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.'))
                for k in keys):
            return 'an mmdet checkpoint (already converted?)'
        if any(k.startswith(('backbone.', 'head.')) for k in keys):
            return 'an mmpretrain / mmengine classifier checkpoint'
        return f'an mmengine checkpoint with keys {_describe(keys)}'
    state = checkpoint.get('model', checkpoint)
    if not isinstance(state, dict):
        return f'a dict whose model entry is a {type(state).__name__}'
    keys = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    if not keys:
        return f'a dict without tensors (keys: {_describe(list(state))})'
    stripped = [
        k[len('module.'):] if k.startswith('module.') else k for k in keys
    ]
    family = checkpoint_family(stripped)
    if family is not None and any(k.startswith('head.') for k in stripped):
        return f'an ImageNet classifier state dict ({FAMILY_NAMES[family]})'
    if family is not None:
        return f'a bare {FAMILY_NAMES[family]} backbone state dict'
    if any(k.startswith('backbone.bottom_up.') for k in keys):
        inner = [
            k[len('backbone.bottom_up.'):] for k in keys
            if k.startswith('backbone.bottom_up.')
        ]
        return ('a detectron2 checkpoint whose backbone is not ResT or ResT '
                f'v2 (backbone keys: {_describe(inner)})')
    return f'an unknown state dict (keys: {_describe(keys)})'


def _variant(family: str, backbone: Dict[str, torch.Tensor]) -> Optional[str]:
    """The arch name (``ResT.arch_zoo`` / ``ResTV2.arch_zoo``) of a
    backbone state dict with that zoo entry's first width and depths, or
    None. (The authors' detection code gives v2-large depths 2, 3, 16, 3;
    mmrest's ``'large'`` is their classifier's 2, 3, 16, 2.)"""
    # Imported here: the backbones import this package.
    from ..backbones import ResT, ResTV2
    depths = []
    for stage in range(1, 5):
        blocks = {
            int(k.split('.')[1])
            for k in backbone if k.startswith(f'stage{stage}.')
        }
        depths.append(len(blocks))
    stem = 'stem.conv3.weight' if family == 'v1' else 'stem.proj.6.weight'
    width = backbone[stem].shape[0] if stem in backbone else None
    zoo = (ResT if family == 'v1' else ResTV2).arch_zoo
    for name, arch in zoo.items():
        if len(name) > 1 and arch['embed_dims'][0] == width and \
                list(arch['depths']) == depths:  # not the one-letter aliases
            return name
    return None


def anchor_permutation(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """Index of each mmdet anchor in detectron2's order at one location.

    mmdet anchor ``r * num_sizes + s`` (ratio-major) is detectron2 anchor
    ``s * num_ratios + r`` (size-major)."""
    return torch.tensor([
        s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)
    ])


def _reorder_anchor_channels(tensor: torch.Tensor, per_anchor: int,
                             sizes_ratios: Tuple[int, int]) -> torch.Tensor:
    """Reorder the output channels (dim 0) of a dense head's predictor,
    ``A`` blocks of ``per_anchor`` channels, from detectron2's anchor order
    to mmdet's."""
    num_anchors = sizes_ratios[0] * sizes_ratios[1]
    if tensor.shape[0] != num_anchors * per_anchor:
        raise CheckpointError(
            f'expected {num_anchors} anchors x {per_anchor} channels, got '
            f'{tensor.shape[0]} output channels')
    perm = anchor_permutation(*sizes_ratios)
    blocks = tensor.reshape(num_anchors, per_anchor, *tensor.shape[1:])
    return blocks[perm].reshape(tensor.shape).contiguous()


def convert_state_dict(
    state: Dict[str, torch.Tensor],
    permute_anchors: bool = True
) -> Tuple['OrderedDict[str, torch.Tensor]', Dict]:
    """Map a detectron2 ResT detector's state dict to mmdet's names.

    Args:
        state (dict): The ``model`` entry of the detectron2 checkpoint.
        permute_anchors (bool): Reorder RetinaNet's anchor channels (see
            the module docstring). Only a test turns this off, to show
            that the reordering matters. Defaults to True.

    Returns:
        tuple: The mmdet state dict, and facts about the detector
        (``detector``, ``family``, ``variant``, ``num_classes``,
        ``fpn_inputs``, ``dropped``).

    Raises:
        CheckpointError: keys that no rule maps (another detector or head),
            or a backbone that is neither ResT nor ResT v2.
    """
    state = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    backbone = {
        k[len(_BACKBONE):]: v
        for k, v in state.items() if k.startswith(_BACKBONE)
    }
    family = checkpoint_family(backbone)
    if not backbone or family is None:
        raise CheckpointError(
            f'not a detectron2 checkpoint of a ResT detector: it is '
            f'{identify({"model": state})}')
    detector = _detector_type(state)
    fpn_levels = sorted({
        int(m.group(1))
        for k in state
        for m in [re.match(r'backbone\.fpn_lateral(\d)\.', k)] if m
    })
    out = OrderedDict()
    dropped, unknown = [], []
    for key, value in state.items():
        new = _mmdet_key(key, fpn_levels)
        if new is _DROPPED:
            dropped.append(key)
        elif new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(
            f'a detectron2 {detector} with a {FAMILY_NAMES[family]} backbone, '
            f'but {len(unknown)} keys map to nothing in mmdet\'s {detector} '
            f'(another head or option?): {_describe(unknown)}')
    if detector == 'RetinaNet':
        num_classes = _retinanet_classes(out, permute_anchors)
    else:
        num_classes = _rcnn_classes(out)
    info = dict(
        detector=detector,
        family=family,
        variant=_variant(family, backbone),
        num_classes=int(num_classes),
        fpn_inputs=[f'stage{level - 1}' for level in fpn_levels],
        dropped=dropped)
    return out, info


#: The backbone's keys in detectron2's detectors.
_BACKBONE = 'backbone.bottom_up.'
#: What :func:`_mmdet_key` returns for detectron2's buffers (dropped).
_DROPPED = object()


def _detector_type(state: Dict[str, torch.Tensor]) -> str:
    """``'RetinaNet'``, ``'MaskRCNN'`` or ``'FasterRCNN'``, from the heads'
    keys."""
    if any(k.startswith('head.cls_subnet.') for k in state):
        return 'RetinaNet'
    if any(k.startswith('proposal_generator.rpn_head.') for k in state):
        return 'MaskRCNN' if any(
            k.startswith('roi_heads.mask_head.') for k in state) \
            else 'FasterRCNN'
    raise CheckpointError(
        'a detectron2 checkpoint with a ResT backbone but neither a '
        'RetinaNet head (head.cls_subnet.*) nor an RPN '
        '(proposal_generator.rpn_head.*): keys '
        f'{_describe([k for k in state if not k.startswith(_BACKBONE)])}')


def _mmdet_key(key: str, fpn_levels: List[int]):
    """mmdet's name of a detectron2 key: the backbone's and the neck's,
    then the heads' (:func:`_mmdet_head_key`); :data:`_DROPPED` for
    detectron2's buffers, None for a key no rule maps."""
    if key.startswith(_BACKBONE):
        new = 'backbone.' + key[len(_BACKBONE):]
        # ResT v2's dense output norms: nn.Sequential(LayerNorm) in the
        # authors' detection code, a LayerNorm in mmrest (and in their
        # segmentation code)
        return re.sub(r'^backbone\.norm_(\d)\.0\.', r'backbone.norm_\1.', new)
    if m := re.match(r'backbone\.fpn_(lateral|output)(\d)\.(.+)$', key):
        kind, level, rest = m.groups()
        i = fpn_levels.index(int(level))
        convs = 'lateral_convs' if kind == 'lateral' else 'fpn_convs'
        return f'neck.{convs}.{i}.conv.{rest}'
    if m := re.match(r'backbone\.top_block\.p([67])\.(.+)$', key):
        i = len(fpn_levels) + int(m.group(1)) - 6
        return f'neck.fpn_convs.{i}.conv.{m.group(2)}'
    new = _mmdet_head_key(key)
    if new is None and D2_BUFFERS.match(key):
        return _DROPPED
    return new


def _mmdet_head_key(key: str) -> Optional[str]:
    """mmdet's name of a key of the RPN, the RoI heads or RetinaNet's head
    (None for others, and for the subnets' ReLUs, which have no weights).
    """
    if m := re.match(
            r'proposal_generator\.rpn_head\.'
            r'(conv|objectness_logits|anchor_deltas)\.(.+)$', key):
        name = dict(
            conv='rpn_conv',
            objectness_logits='rpn_cls',
            anchor_deltas='rpn_reg')[m.group(1)]
        return f'rpn_head.{name}.{m.group(2)}'
    if m := re.match(r'roi_heads\.box_head\.fc(\d)\.(.+)$', key):
        return f'roi_head.bbox_head.shared_fcs.{int(m.group(1)) - 1}.' \
               f'{m.group(2)}'
    if m := re.match(
            r'roi_heads\.box_predictor\.(cls_score|bbox_pred)'
            r'\.(.+)$', key):
        name = 'fc_cls' if m.group(1) == 'cls_score' else 'fc_reg'
        return f'roi_head.bbox_head.{name}.{m.group(2)}'
    if m := re.match(r'roi_heads\.mask_head\.mask_fcn(\d)\.(.+)$', key):
        return f'roi_head.mask_head.convs.{int(m.group(1)) - 1}.conv.' \
               f'{m.group(2)}'
    if m := re.match(r'roi_heads\.mask_head\.(deconv|predictor)\.(.+)$', key):
        name = 'upsample' if m.group(1) == 'deconv' else 'conv_logits'
        return f'roi_head.mask_head.{name}.{m.group(2)}'
    if m := re.match(r'head\.(cls|bbox)_subnet\.(\d+)\.(.+)$', key):
        index = int(m.group(2))
        if index % 2:
            return None  # the subnets' ReLUs have no weights
        convs = 'cls_convs' if m.group(1) == 'cls' else 'reg_convs'
        return f'bbox_head.{convs}.{index // 2}.conv.{m.group(3)}'
    if m := re.match(r'head\.(cls_score|bbox_pred)\.(.+)$', key):
        if m.group(1) == 'cls_score':
            return f'bbox_head.retina_cls.{m.group(2)}'
        return f'bbox_head.retina_reg.{m.group(2)}'
    return None


def _retinanet_classes(out: Dict[str, torch.Tensor],
                       permute_anchors: bool) -> int:
    """The number of classes of RetinaNet's head (which must have the
    authors' 9 anchors a location); its anchor channels reordered in
    ``out`` with ``permute_anchors``."""
    num_anchors = RETINANET_ANCHORS[0] * RETINANET_ANCHORS[1]
    cls_channels = out['bbox_head.retina_cls.weight'].shape[0]
    if cls_channels % num_anchors or \
            out['bbox_head.retina_reg.weight'].shape[0] != num_anchors * 4:
        raise CheckpointError(
            f'RetinaNet head with {cls_channels} class channels and '
            f'{out["bbox_head.retina_reg.weight"].shape[0]} box channels:'
            f' not {num_anchors} anchors per location (3 sizes x 3 '
            'aspect ratios) as in the authors\' configs')
    num_classes = cls_channels // num_anchors
    if permute_anchors:
        for name, per_anchor in (('retina_cls', num_classes), ('retina_reg',
                                                               4)):
            for part in ('weight', 'bias'):
                key = f'bbox_head.{name}.{part}'
                out[key] = _reorder_anchor_channels(out[key], per_anchor,
                                                    RETINANET_ANCHORS)
    return num_classes


def _rcnn_classes(out: Dict[str, torch.Tensor]) -> int:
    """The number of classes of a Faster / Mask R-CNN (whose RPN must have
    the authors' 3 anchors a location)."""
    num_classes = out['roi_head.bbox_head.fc_cls.weight'].shape[0] - 1
    rpn_anchors = out['rpn_head.rpn_cls.weight'].shape[0]
    if rpn_anchors != 3:
        raise CheckpointError(
            f'RPN with {rpn_anchors} anchors per location; the authors\''
            ' detectors (and this converter) have 3 (one size per FPN '
            'level, 3 aspect ratios)')
    return num_classes


class _NoGlobals(pickle.Unpickler):
    """Reads pickled plain values only: any class or function named in
    the data is refused before it is imported."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f'{module}.{name}')


def _is_torch_file(path: str, head: bytes) -> bool:
    """Whether ``path`` was written by ``torch.save``: a zip archive (torch
    >= 1.6) or the legacy format, whose first pickled value is torch's
    magic number (read without importing anything the file names)."""
    if head == b'PK\x03\x04':
        return True
    if head[:1] != b'\x80':
        return False
    with open(path, 'rb') as f:
        try:
            first = _NoGlobals(f).load()
        except Exception:  # a global, bad data: not torch's legacy format
            return False
    return type(first) is int and first == torch.serialization.MAGIC_NUMBER


def load_detectron2_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2 checkpoint, loaded
    weights-only, or a :class:`CheckpointError` saying what the file is."""
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'No such file: {path!r}')
    with open(path, 'rb') as f:
        head = f.read(4)
    if not _is_torch_file(path, head) and (path.endswith('.pkl')
                                           or head[:1] == b'\x80'):
        raise CheckpointError(
            f'{path!r} is a plain pickle (detectron2\'s .pkl format, as in '
            'its model zoo), not a torch checkpoint. Unpickling runs code '
            'the file names, so mmrest does not read it. In detectron2, load '
            'it (DetectionCheckpointer(model).load(path)) and save a .pth '
            '(DetectionCheckpointer(model, save_dir).save(name)), then '
            'convert that.')
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or \
            not isinstance(checkpoint.get('model'), dict) or not any(
                k.startswith('backbone.bottom_up.')
                for k in checkpoint['model']):
        raise CheckpointError(
            f'{path!r} is not a detectron2 checkpoint of a ResT detector '
            f'(a dict with the weights under "model", keys '
            f'"backbone.bottom_up.*"): it is {identify(checkpoint)}')
    return checkpoint['model']


def convert_detectron2_checkpoint(src: str,
                                  dst: str,
                                  config=None,
                                  permute_anchors: bool = True) -> Dict:
    """Convert the detectron2 checkpoint ``src`` into an mmdet one at
    ``dst`` (``state_dict`` and ``meta``), written atomically.

    Args:
        src (str): The detectron2 checkpoint (``.pth``).
        dst (str): Where to write the mmdet checkpoint. Nothing is written
            (and an existing file is left as it is) when anything fails.
        config (str | mmengine.Config, optional): An mmdet config of the
            matching detector: the converted weights must then load into
            its model strictly (same keys, same shapes), or nothing is
            written and the differences are listed. Defaults to None.
        permute_anchors (bool): See :func:`convert_state_dict`.

    Returns:
        dict: The ``meta`` written (what was converted).
    """
    state = load_detectron2_checkpoint(src)
    converted, info = convert_state_dict(state, permute_anchors)
    if config is not None:
        info['config_check'] = check_against_config(converted, info, config)
    meta = dict(
        converted_from=osp.basename(os.fspath(src)),
        converter='mmrest.checkpoint.detectron2',
        **info)
    buffer = io.BytesIO()
    torch.save(dict(state_dict=converted, meta=meta), buffer)
    atomic_write(dst, buffer.getvalue())
    return meta


def check_against_config(state_dict: Dict[str, torch.Tensor], info: Dict,
                         config) -> List[str]:
    """Check converted weights against an mmdet config's model.

    Builds the model (on the CPU, without loading any pretrained weights)
    and compares keys and shapes; raises :class:`CheckpointError` listing
    the differences. Settings that the weights do not show but detectron2's
    test-time behaviour needs are returned as warnings (RetinaNet's ReLU
    before P7, the input normalisation of the checkpoint's ResT family,
    ResT v1's ``out_norms_feed_next_stage``).

    Returns:
        list[str]: Warnings (empty when the config matches detectron2's
        test time as the authors ran it).
    """
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmrest.models  # noqa: F401  (registers ResT, ResTV2 and heads)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    model_cfg = cfg.model.copy()
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None  # build only; no weights to read
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(model_cfg)
    _check_fit(model.state_dict(), state_dict, info)
    if type(model).__name__ != info['detector']:
        raise CheckpointError(
            f'the checkpoint is a {info["detector"]}, the config builds a '
            f'{type(model).__name__}')
    return _test_time_warnings(cfg, info)


def _check_fit(own: Dict[str, torch.Tensor],
               state_dict: Dict[str, torch.Tensor], info: Dict) -> None:
    """Raise :class:`CheckpointError` listing the keys missing on either
    side and those of other shapes."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    lines = []
    if missing:
        lines.append(f'missing from the checkpoint: {_describe(missing)}')
    if unexpected:
        lines.append(f'not in the model: {_describe(unexpected)}')
    if shapes:
        lines.append('other shapes: ' + '; '.join(shapes[:5]) + (
            f' ... ({len(shapes)} in all)' if len(shapes) > 5 else ''))
    variant = info.get('variant') or 'of non-standard widths or depths'
    raise CheckpointError(
        f'The converted {info["detector"]} ({FAMILY_NAMES[info["family"]]}'
        f' {variant}, {info["num_classes"]} classes) does not fit the '
        f'model of the config:\n  ' + '\n  '.join(lines) +
        '\nUse the config of the same detector and variant (see '
        'docs/detectron2_checkpoints.md).')


def _test_time_warnings(cfg, info: Dict) -> List[str]:
    """What the config sets otherwise than detectron2's test time as the
    authors ran it (see :func:`check_against_config`)."""
    warnings = []
    if info['family'] == 'v1' and \
            not cfg.model.backbone.get('out_norms_feed_next_stage', False):
        warnings.append(
            'backbone.out_norms_feed_next_stage is False: in the authors\' '
            'detectron2 ResT a returned stage\'s output norm also feeds the '
            'next stage, and their v1 detectors were trained so; set it to '
            'True')
    if info['detector'] == 'RetinaNet' and \
            not cfg.model.neck.get('relu_before_extra_convs', False):
        warnings.append(
            'neck.relu_before_extra_convs is False: detectron2 applies a '
            'ReLU between P6 and P7 (LastLevelP6P7); set it to True')
    pre = cfg.model.get('data_preprocessor', {})
    mean, std = list(pre.get('mean', [])), list(pre.get('std', []))
    bgr_to_rgb = bool(pre.get('bgr_to_rgb', False))
    if info['family'] == 'v1':
        expected = ([103.53, 116.28, 123.675], [1.0, 1.0, 1.0], False,
                    "detectron2's default BGR input, mean "
                    '[103.53, 116.28, 123.675], std 1 (bgr_to_rgb=False)')
    else:
        expected = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], True,
                    'RGB input, mean [123.675, 116.28, 103.53], std '
                    '[58.395, 57.12, 57.375] (bgr_to_rgb=True)')
    if not (_close(mean, expected[0]) and _close(std, expected[1])
            and bgr_to_rgb == expected[2]):
        warnings.append(
            f'data_preprocessor has mean {mean}, std {std}, bgr_to_rgb='
            f'{bgr_to_rgb}; the authors trained this '
            f'{FAMILY_NAMES[info["family"]]} detector on {expected[3]}')
    return warnings


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))
