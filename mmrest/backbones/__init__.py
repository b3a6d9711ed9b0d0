from .kernels import emsa_attention, literal, to_literal
from .rest import EMSA, ResT
from .rest_v2 import ResTV2

__all__ = ['ResT', 'ResTV2', 'EMSA', 'emsa_attention', 'literal', 'to_literal']
