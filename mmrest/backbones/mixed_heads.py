# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The inputs of EMSA's multi-head core in its mixed-query form, shared by
the cores that compute it (``kernels.mixed_query_attention`` on PyTorch's
attention kernels, ``emsa_triton.attention_core`` on fused ones).

The mixed logits of head ``g`` are ``sum_j W[g, j] q_j k_j^T =
Q_g K^T``, with ``Q_g = concat_j(W[g, j] q_j)`` (:func:`mixed_queries`)
and ``K = concat_j k_j`` the keys of all heads side by side. Keys and
values enter centred over the M keys (:func:`centred`): a shift of the
keys the softmax cannot see, and ``(P - 1/M) v = P (v - mean_m v)``.
"""
import torch


def centred(x: torch.Tensor,
            dtype: torch.dtype,
            heads_last: bool = False) -> torch.Tensor:
    """``x`` (B, h, M, d) centred over M in float32 or better and rounded
    once to ``dtype`` (differentiable; autocast does not apply).

    Args:
        x (Tensor): Keys or values, (B, h, M, d).
        dtype (torch.dtype): The dtype of the result.
        heads_last (bool): Lay the heads' channels side by side,
            (B, M, h d): the keys, shared by the mixed heads.

    Returns:
        Tensor: (B, h, M, d) contiguous whatever ``x``'s layout, or
        (B, M, h d) with ``heads_last``.
    """
    B, h, M, d = x.shape
    core = torch.promote_types(dtype, torch.float32)
    centred_x = x - x.mean(2, keepdim=True, dtype=core)
    if not heads_last:
        return x.new_empty(B, h, M, d, dtype=dtype).copy_(centred_x)
    out = x.new_empty(B, M, h, d, dtype=dtype)
    out.copy_(centred_x.transpose(1, 2))
    return out.view(B, M, h * d)


def mixed_queries(q: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """The mixed queries ``Q_g = concat_j(W[g, j] q_j)``, by one product in
    ``q``'s dtype: written straight into the result's layout where no
    gradient is recorded (as in a fused core's forward), through autograd
    where one is.

    Args:
        q (Tensor): Per-head queries, (B, h, N, d).
        mix (Tensor): The (h, h) head-mixing weight ``W``.

    Returns:
        Tensor: (B, h, N, h d).
    """
    B, h, N, d = q.shape
    if mix.shape != (h, h):
        raise ValueError(f'mix must be ({h}, {h}) for queries of {h} heads, '
                         f'got {tuple(mix.shape)}')
    weight = mix.to(q.dtype).view(1, h, 1, h, 1)
    per_head = q.transpose(1, 2).unsqueeze(1)
    if torch.is_grad_enabled() and (q.requires_grad or mix.requires_grad):
        return (weight * per_head).reshape(B, h, N, h * d)  # autograd's
    out = q.new_empty(B, h, N, h, d)  # (b, g, n, j, :) = W[g, j] q[b, j, n]
    return torch.mul(weight, per_head, out=out).view(B, h, N, h * d)
