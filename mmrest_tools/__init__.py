# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmrest_tools: the programs of this repository, built on the library
:mod:`mmrest`.

Demos, benchmarks, launchers and the GPU check: what ``tools/*.py`` and
``make demo`` / ``make bench`` run, one module per program. Nothing here is
needed to use ResT in a config (``custom_imports=dict(imports=['mmrest'])``
is all a config needs); the library never imports this package.

- :mod:`mmrest_tools.launch`: ``tools/train.py`` and ``tools/test.py``;
  :mod:`mmrest_tools.prerun_checks`, its checks of a config's files.
- :mod:`mmrest_tools.demo`: the shapes demo (``make demo``,
  ``tools/run_demo.py``, ``tools/demo.py``);
  :mod:`mmrest_tools.demo_step_time`, the training step of several demo
  configs timed side by side (``tools/demo_step_time.py``).
- :mod:`mmrest_tools.benchmark`: the backbone benchmark (``make bench``).
- :mod:`mmrest_tools.analysis`: FLOPs, parameters and CPU inference time of
  a detector (``tools/get_flops.py``, ``tools/benchmark_inference.py``).
- :mod:`mmrest_tools.gpu_check`: the prepared GPU check
  (``tools/gpu_check.py``), a package with one module per section, and
  :mod:`mmrest_tools.ops_shim`, its stand-ins for mmcv's compiled ops where
  only ``mmcv-lite`` is installed; :mod:`mmrest_tools.mmcv_source`, mmcv
  2.1.0's source made to compile against torch 2.14 and later
  (``tools/device/build_mmcv.sh``).
- :mod:`mmrest_tools.gpu_profile`, :mod:`mmrest_tools.gpu_variants`: GPU
  experiments beside the check (``tools/device/gpu_profile.py``,
  ``tools/device/gpu_variants.py``).
"""
