# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The backbones mmrest's measurements compare, built by name with the
backbone settings of the detector each is trained in: ResT and ResT v2 as
mmrest's Mask R-CNN configs (``configs/mask_rcnn``) build them, Swin-T and
ResNet-50 as mmdet's Mask R-CNN configs, PVT-Small as mmdet's RetinaNet
config. One builder for the CPU benchmark (``make bench``), the GPU check
and the GPU experiments, so that their rows are the same networks.

Names: ``rest_{lite,small,base,large}``, ``restv2_{tiny,small,base}``
(``_literal`` appended: the same model computed literally,
:func:`mmrest.backbones.to_literal`), ``swin_t``, ``resnet50``,
``pvt_small``. ``quick``: narrow versions of ResT, ResT v2 and Swin-T
(``QUICK_REST_ARCH``, ``QUICK_SWIN_ARCH``) and ResNet-18 for ResNet-50: the
same code at a fraction of the cost.
"""
import torch.nn as nn

# ResT-Small's structure (1, 2, 4, 8 heads; sr 8, 4, 2, 1) at a fraction of
# its width and depth: every code path in seconds (quick mode)
QUICK_REST_ARCH = dict(
    embed_dims=[16, 32, 64, 128],
    depths=[1, 1, 2, 1],
    num_heads=[1, 2, 4, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[4, 4, 4, 4])
# Swin-T narrowed (32 channels, one block a stage, 1, 2, 4, 8 heads): the
# quick mode's Swin-T, as a throughput row and as Mask R-CNN's backbone
QUICK_SWIN_ARCH = dict(
    embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
# What mmrest's Mask R-CNN configs set for the backbone beside its arch
# (the rest are the classes' defaults): v1 feeds the returned stages' norms
# to the next stage (the authors' detection backbone); drop-path rates
REST_DETECTION = dict(out_norms_feed_next_stage=True)
REST_DROP_PATH = dict(lite=0.1, small=0.1, base=0.2, large=0.2)
RESTV2_DROP_PATH = dict(tiny=0.1, small=0.2, base=0.3)


def build_rest(arch, v2: bool = False, **kwargs) -> nn.Module:
    """``mmrest.ResT`` (``'lite'``, ..., or an arch dict) or, for
    ``'v2_tiny'`` etc. (or ``v2=True``), ``mmrest.ResTV2``, initialised, in
    eval mode; ``arch=None`` with ``v2``: the narrow quick-mode arch."""
    import mmrest
    if v2 or (isinstance(arch, str) and arch.startswith('v2_')):
        arch = QUICK_REST_ARCH if arch is None else arch
        model = mmrest.ResTV2(
            arch=arch[3:] if isinstance(arch, str) else arch, **kwargs)
    else:
        model = mmrest.ResT(arch=arch, **kwargs)
    model.init_weights()
    return model.eval()


def _build_rest_backbone(name: str, quick: bool) -> nn.Module:
    """``rest_{arch}[_literal]`` or ``restv2_{arch}[_literal]`` with the
    settings of its Mask R-CNN config."""
    arch = name.split('_')[1]
    if name.startswith('restv2_'):
        model = build_rest(
            None if quick else 'v2_' + arch,
            v2=True,
            drop_path_rate=RESTV2_DROP_PATH[arch])
    else:
        model = build_rest(
            QUICK_REST_ARCH if quick else arch,
            drop_path_rate=REST_DROP_PATH[arch],
            **REST_DETECTION)
    if name.endswith('_literal'):
        from mmrest.backbones import to_literal
        model = to_literal(model, copy_model=False)
    return model.eval()


def _build_mmdet_backbone(name: str, quick: bool) -> nn.Module:
    """Swin-T, ResNet-50 or PVT-Small as mmdet's configs build them."""
    import mmrest  # noqa: F401  (registers mmrest in mmdet)
    if name == 'swin_t':  # mmdet's Mask R-CNN Swin-T backbone
        from mmdet.models.backbones import SwinTransformer
        narrow = QUICK_SWIN_ARCH if quick else {}
        model = SwinTransformer(
            **{
                **dict(
                    embed_dims=96,
                    depths=[2, 2, 6, 2],
                    num_heads=[3, 6, 12, 24]),
                **narrow
            },
            window_size=7,
            mlp_ratio=4,
            qkv_bias=True,
            qk_scale=None,
            drop_rate=0.,
            attn_drop_rate=0.,
            drop_path_rate=0.2,
            patch_norm=True,
            out_indices=(0, 1, 2, 3),
            with_cp=False,
            convert_weights=False)
    elif name == 'resnet50':  # mmdet's Mask R-CNN R-50-FPN backbone
        from mmdet.models.backbones import ResNet
        model = ResNet(
            depth=18 if quick else 50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            frozen_stages=1,
            norm_cfg=dict(type='BN', requires_grad=True),
            norm_eval=True,
            style='pytorch')
    elif name == 'pvt_small':  # mmdet's RetinaNet PVT-Small backbone
        from mmdet.models.backbones import PyramidVisionTransformer
        model = PyramidVisionTransformer(num_layers=[3, 4, 6, 3])
    else:
        raise KeyError(f'unknown backbone {name!r}')
    model.init_weights()
    model.eval()  # not chained: mmdet's Swin's and ResNet's train() is None
    return model


def build_backbone(name: str, quick: bool = False) -> nn.Module:
    """A compared backbone by name (see the module's docstring), with its
    default (random) initialisation, in eval mode.

    Args:
        name (str): ``rest_small``, ``restv2_tiny_literal``, ``swin_t``, ...
        quick (bool): The narrow versions. Defaults to False.

    Raises:
        KeyError: For an unknown name or arch.
    """
    if name.startswith(('rest_', 'restv2_')):
        return _build_rest_backbone(name, quick)
    return _build_mmdet_backbone(name, quick)
