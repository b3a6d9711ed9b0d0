# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmrest: the ResT backbone for OpenMMLab (mmdet and mmseg).

Importing this package registers ``ResT``, ``ResTV2`` and mmrest's hooks in
mmdet's and
(when it imports) mmseg's registries, so
``custom_imports=dict(imports=['mmrest'])`` is all a config needs. It
changes no torch or mmengine setting and no allow-list of ``torch.load``
(mmrest's own loads use a scoped one, see :mod:`mmrest.checkpoint`). The
exception, for two torch bugs that ResT's training graphs meet under
dynamic shapes (torch 2.13): once Inductor is imported, its stride
comparison and its ``convolution_backward`` lowering are patched, where
the bug is detected (:mod:`mmrest.utils.inductor_patches`;
``MMREST_NO_INDUCTOR_PATCH=1`` refuses both).

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
- :mod:`mmrest.utils`: ``torch_compat``, what differs between torch versions,
  and ``inductor_patches``;
- :mod:`mmrest.onnx_export`, :mod:`mmrest.deploy`: export to ONNX (a
  backbone) and to ONNX Runtime with mmdeploy (a whole detector);
- :mod:`mmrest.synthetic`: the generator of the synthetic shapes set
  (``mmrest.datasets`` is its former name, kept as an alias);

The programs of the repository (demo, benchmarks, launchers, GPU check) are
in the separate package :mod:`mmrest_tools`.
"""
from .backbones import ResT, ResTV2
from .registry import register_all
from .utils import inductor_patches
from .version import __version__

register_all()
# Inductor's training graphs of ResT under dynamic shapes fail, then
# recompile at every size on torch 2.13 without them (torch bugs; each
# applied when Inductor is imported, where the bug is detected)
inductor_patches.install()

__all__ = ['ResT', 'ResTV2', '__version__']
