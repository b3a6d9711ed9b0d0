# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The GPU check: the bookkeeping of :class:`~.base.CheckRunner` and one
method per section, each from its own module."""
from .base import CheckRunner
from .equality import EqualitySection
from .maskrcnn import MaskRCNNSection
from .syncbn import SyncBNSection
from .throughput import ThroughputSection
from .torch_compile import CompileSection
from .variants import VariantsSection


class GpuCheck(CheckRunner, EqualitySection, SyncBNSection, ThroughputSection,
               MaskRCNNSection, VariantsSection, CompileSection):
    """Runs the sections and records their results (arguments: see
    :class:`~.base.CheckRunner`). Each section is a method, ``equality``,
    ``syncbn``, ``throughput``, ``maskrcnn``, ``variants`` and
    ``compile``, run through :meth:`~.base.CheckRunner.run_section`."""
