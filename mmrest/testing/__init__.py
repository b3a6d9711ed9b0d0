"""Test and benchmark helpers. Nothing here is on the model's path."""
from .literal import to_literal

__all__ = ['to_literal']
