# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmrest: the ResT backbone for OpenMMLab (mmdet and mmseg).

Importing this package registers ``ResT``, ``ResTV2`` and mmrest's hooks in
mmdet's and
(when it imports) mmseg's registries, so
``custom_imports=dict(imports=['mmrest'])`` is all a config needs. It
changes no torch or mmengine setting and no allow-list of ``torch.load``
(mmrest's own loads use a scoped one, see :mod:`mmrest.checkpoint`). One
exception, for a torch bug: where Inductor's stride comparison fails on
ResT's dynamic-shape training graphs (torch 2.13), that one function is
patched to answer "unknown" (``torch_compat.patch_inductor_stride_check``;
``MMREST_NO_INDUCTOR_PATCH=1`` refuses it).

The library, by concern:

- :mod:`mmrest.backbones`: the models (ResT, ResTV2), their attention
  kernels and the switch to the authors' literal computation
  (``literal``, ``to_literal``);
- :mod:`mmrest.checkpoint`: checkpoint loading, checkpoint families, the
  authors' pretrained weights, atomic checkpoint files;
- :mod:`mmrest.engine`: the training hooks and the layer-decay optimizer
  constructor;
- :mod:`mmrest.registry`: their registration in mmdet's / mmseg's
  registries;
- :mod:`mmrest.models`: ``Detectron2RetinaHead``, detectron2's RetinaNet
  post-processing for the authors' converted detectors (registered when
  imported, see ``docs/detectron2_checkpoints.md``);
- :mod:`mmrest.utils`: ``torch_compat``, what differs between torch versions;
- :mod:`mmrest.onnx_export`, :mod:`mmrest.deploy`: export to ONNX (a
  backbone) and to ONNX Runtime with mmdeploy (a whole detector);
- :mod:`mmrest.synthetic`: the generator of the synthetic shapes set
  (``mmrest.datasets`` is its former name, kept as an alias);

The programs of the repository (demo, benchmarks, launchers, GPU check) are
in the separate package :mod:`mmrest_tools`.
"""
from .backbones import ResT, ResTV2
from .registry import register_all
from .utils import torch_compat
from .version import __version__

register_all()
# Inductor's training graphs of ResT under dynamic shapes fail on torch 2.13
# without it (a torch bug; no-op where torch does not have it)
torch_compat.patch_inductor_stride_check()

__all__ = ['ResT', 'ResTV2', '__version__']
