"""Test and benchmark helpers. Nothing here is on the model's path.

``to_literal`` lives in :mod:`mmrest.backbones.kernels` (a per-model form of
the literal switch); it is imported here for the programs that still take
it from this package.
"""
from ..backbones.kernels import to_literal

__all__ = ['to_literal']
