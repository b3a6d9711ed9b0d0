# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The backbones the sections build."""
import torch.nn as nn

from .settings import _REST_DROP_PATH, QUICK_REST_ARCH, QUICK_SWIN_ARCH


def build_rest(arch, v2: bool = False, **kwargs) -> nn.Module:
    """``mmrest.ResT`` (``'lite'``, ..., or an arch dict) or, for
    ``'v2_tiny'`` etc. (or ``v2=True``), ``mmrest.ResTV2``, initialised, in
    eval mode; ``arch=None`` with ``v2``: the narrow quick-mode arch."""
    import mmrest
    if v2 or (isinstance(arch, str) and arch.startswith('v2_')):
        if not hasattr(mmrest, 'ResTV2'):
            raise ImportError('mmrest has no ResTV2')
        arch = QUICK_REST_ARCH if arch is None else arch
        model = mmrest.ResTV2(
            arch=arch[3:] if isinstance(arch, str) else arch, **kwargs)
    else:
        model = mmrest.ResT(arch=arch, **kwargs)
    model.init_weights()
    return model.eval()


def build_backbone(name: str, quick: bool = False) -> nn.Module:
    """A backbone of the throughput table by name, in eval mode.

    ``rest_{arch}`` and ``rest_{arch}_literal`` (ResT with the drop-path
    rate of its detection config), ``restv2_tiny`` (ResT v2), ``swin_t``
    and ``resnet50`` (mmdet's, as in mmdet's Mask R-CNN configs, without
    pretrained weights).
    ``quick``: narrow versions (the same code at a fraction of the cost).
    """
    if name.startswith(('rest_', 'restv2_')):
        arch = name.split('_')[1]
        if name.startswith('restv2_'):
            model = build_rest(
                None if quick else 'v2_' + arch,
                v2=True,
                drop_path_rate=_REST_DROP_PATH[arch])
        else:
            model = build_rest(
                QUICK_REST_ARCH if quick else arch,
                drop_path_rate=_REST_DROP_PATH[arch])
        if name.endswith('_literal'):
            from mmrest.backbones import to_literal
            model = to_literal(model, copy_model=False)
        return model.eval()
    import mmrest  # noqa: F401  (registers mmrest in mmdet)
    if name == 'swin_t':
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
    elif name == 'resnet50':
        from mmdet.models.backbones import ResNet
        model = ResNet(
            depth=18 if quick else 50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            frozen_stages=1,
            norm_cfg=dict(type='BN', requires_grad=True),
            norm_eval=True,
            style='pytorch')
    else:
        raise KeyError(f'unknown backbone {name!r}')
    model.init_weights()
    model.eval()
    return model
