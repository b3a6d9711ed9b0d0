"""Test and benchmark helpers. Nothing here is on the model's path."""
from .literal import LiteralEMSA, to_literal

__all__ = ['LiteralEMSA', 'to_literal']
