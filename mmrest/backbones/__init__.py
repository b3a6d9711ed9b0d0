from .rest import EMSA, ResT, emsa_attention

__all__ = ['ResT', 'EMSA', 'emsa_attention']
