# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""A model that always computes literally: :func:`to_literal`.

The literal computation lives in the modules themselves and is selected by
the switch :func:`mmrest.backbones.kernels.literal`. Where a test or a
benchmark needs a separate model object that always computes literally (a
float64 copy, a backbone inside a detector), :func:`to_literal` gives one:
the same modules, parameters and state-dict keys, whose every call runs
under the switch. Never used by the model.
"""
import copy
from typing import List

import torch.nn as nn

from ..backbones import kernels

# The switches entered by the calls of literal models now running,
# innermost last.
_ENTERED: List = []


def _enter(module: nn.Module, args) -> None:
    """Forward pre-hook: the switch on for the call."""
    switch = kernels.literal()
    switch.__enter__()
    _ENTERED.append(switch)


def _leave(module: nn.Module, args, output) -> None:
    """Forward hook, also run when the call raises: the switch restored."""
    _ENTERED.pop().__exit__(None, None, None)


def is_literal(model: nn.Module) -> bool:
    """Whether ``model`` was made literal by :func:`to_literal`."""
    return _enter in model._forward_pre_hooks.values()


def to_literal(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """The same model (a copy by default) computed literally in every call.

    Each call of the returned model runs under
    :func:`mmrest.backbones.kernels.literal` (a forward pre-hook turns the
    switch on, a forward hook restores it, also when the call raises): it
    is ``model`` in every other respect (class, parameters, buffers,
    modes, state-dict keys, ``.double()``, ``.train()``). Gradient
    checkpointing recomputes under the switch too, so its backward pass
    may run anywhere. Nothing is swapped: to compute a model literally
    for a while, ``with kernels.literal():`` is enough.

    Args:
        model (nn.Module): A ResT, a ResT v2, a module of theirs, or a
            model that holds one (e.g. a detector).
        copy_model (bool): Whether to return a deep copy and leave
            ``model`` as it is; otherwise ``model`` itself becomes literal.
            Defaults to True.

    Returns:
        nn.Module: The literal model.
    """
    if copy_model:
        model = copy.deepcopy(model)
    if not is_literal(model):
        model.register_forward_pre_hook(_enter, prepend=True)
        model.register_forward_hook(_leave, always_call=True)
    return model
