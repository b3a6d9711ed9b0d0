# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""EMSA's multi-head core as fused Triton kernels (the ``'triton'`` core of
:func:`mmrest.backbones.kernels.use_emsa_core`), a candidate for CUDA.

The core is written as attention over all ``C = h d`` channels with mixed
queries (:func:`~mmrest.backbones.kernels.mixed_query_attention`): per
(batch, head) the logits are ``l = Q K^T`` (queries ``Q``, N x C; keys
``K``, M x C, shared by the heads) and ``P = softmax(l)`` by rows. The
InstanceNorm over ``P`` needs, besides ``P V`` (values centred over M, so
that ``P V = (P - 1/M) V``), only each row's centred second moment
``r_n = sum_m (P_nm - 1/M)^2``: the variance is ``sum_n r_n / (N M)``. One
pass over the keys gives both (:func:`softmax_moments`):

* the forward kernel keeps flash attention's running maximum, sum and
  ``P V`` product per query row, and beside them the running mean and
  sum of squared deviations of the row's exponentials (Chan's merge of
  the key blocks, rescaled with the running maximum), from which
  ``r_n = M2_n / sum_n^2``, without the cancellation of
  ``sum P^2 - 1/M`` when the attention is almost uniform;
* the backward kernels recompute ``P`` from the saved log-sum-exps, one
  over key blocks (gradients of the keys, per head, and of the values),
  one over query blocks (gradients of the queries). With upstream
  gradients ``dO`` of ``P V`` and ``dr`` of ``r``:
  ``dP_nm = dO_n . V_m + 2 dr_n (P_nm - 1/M)`` and
  ``dl_nm = P_nm (dP_nm - delta_n)``, ``delta_n = dO_n . O_n + 2 dr_n r_n``.

No N x M map is stored. Products run in the inputs' dtype (float16,
bfloat16: the autocast dtypes; float32 at IEEE precision, not TF32, since
the InstanceNorm amplifies rounding; float64 for the tests) and accumulate
in float32 (float64 for float64 inputs).

``triton`` is optional: it comes with PyTorch's CUDA wheels. The kernels
run on CUDA tensors; on the CPU only in Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which is how
the tests check them against float64.
"""
from typing import Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # where triton is absent
    triton = None
# The kernels use Triton 3's language (``tl.dot``'s ``input_precision``)
# and its interpreter; torch 2.1's CUDA wheels bring triton 2.1.
if triton is not None and int(triton.__version__.split('.')[0]) < 3:
    _FOUND = f'triton {triton.__version__}'
    triton = None
else:
    _FOUND = 'no triton' if triton is None else None


def available() -> bool:
    """Whether ``triton`` >= 3 is installed (the ``'triton'`` core needs
    it)."""
    return triton is not None


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (CPU tensors): the
    environment variable ``TRITON_INTERPRET=1`` was set when this module
    was imported."""
    return available() and type(_forward_kernel).__name__ == \
        'InterpretedFunction'


if triton is not None:

    @triton.jit
    def _forward_kernel(Q, K, V, OUT, LSE, DEV, N, M, H, C, D,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_D: tl.constexpr):
        """One block of query rows of one (batch, head): ``O = P V``, the
        log-sum-exps of the logits and ``r = sum_m (P - 1/M)^2``."""
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rc = tl.arange(0, BLOCK_C)
        rd = tl.arange(0, BLOCK_D)
        row_ok = rn < N
        q = tl.load(
            Q + bh * N * C + rn[:, None] * C + rc[None, :],
            mask=row_ok[:, None] & (rc[None, :] < C),
            other=0.)
        run_max = tl.full([BLOCK_N], float('-inf'), ACC)
        run_mean = tl.zeros([BLOCK_N], ACC)  # of exp(l - run_max)
        run_m2 = tl.zeros([BLOCK_N], ACC)  # their squared deviations
        seen = tl.zeros([BLOCK_N], ACC)  # keys so far
        acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        for start in range(0, M, BLOCK_M):
            rm = start + tl.arange(0, BLOCK_M)
            key_ok = rm < M
            k = tl.load(
                K + b * M * C + rm[:, None] * C + rc[None, :],
                mask=key_ok[:, None] & (rc[None, :] < C),
                other=0.)
            v = tl.load(
                V + bh * M * D + rm[:, None] * D + rd[None, :],
                mask=key_ok[:, None] & (rd[None, :] < D),
                other=0.)
            s = tl.dot(q, tl.trans(k), input_precision='ieee').to(ACC)
            s = tl.where(key_ok[None, :], s, float('-inf'))
            new_max = tl.maximum(run_max, tl.max(s, 1))
            alpha = tl.exp(run_max - new_max)
            p = tl.exp(s - new_max[:, None])
            count = tl.sum(key_ok.to(ACC), 0)
            block_mean = tl.sum(p, 1) / count
            dev = tl.where(key_ok[None, :], p - block_mean[:, None], 0.)
            step = block_mean - run_mean * alpha
            run_m2 = run_m2 * alpha * alpha + tl.sum(dev * dev, 1) + \
                step * step * seen * count / (seen + count)
            run_mean = run_mean * alpha + step * count / (seen + count)
            seen += count
            acc = acc * alpha[:, None] + tl.dot(
                p.to(v.dtype), v, input_precision='ieee').to(ACC)
            run_max = new_max
        total = run_mean * M  # sum_m exp(l - run_max)
        tl.store(
            OUT + bh * N * D + rn[:, None] * D + rd[None, :],
            acc / total[:, None],
            mask=row_ok[:, None] & (rd[None, :] < D))
        tl.store(LSE + bh * N + rn, run_max + tl.log(total), mask=row_ok)
        tl.store(DEV + bh * N + rn, run_m2 / (total * total), mask=row_ok)

    @triton.jit
    def _grad_queries_kernel(Q, K, V, DO, LSE, DR, DELTA, DQ, N, M, H, C, D,
                             inv_M, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_D: tl.constexpr):
        """One block of query rows: ``dQ = dl K``."""
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rc = tl.arange(0, BLOCK_C)
        rd = tl.arange(0, BLOCK_D)
        row_ok = rn < N
        q = tl.load(
            Q + bh * N * C + rn[:, None] * C + rc[None, :],
            mask=row_ok[:, None] & (rc[None, :] < C),
            other=0.)
        do = tl.load(
            DO + bh * N * D + rn[:, None] * D + rd[None, :],
            mask=row_ok[:, None] & (rd[None, :] < D),
            other=0.).to(q.dtype)
        lse = tl.load(LSE + bh * N + rn, mask=row_ok, other=0.)
        dr2 = 2 * tl.load(DR + bh * N + rn, mask=row_ok, other=0.)
        delta = tl.load(DELTA + bh * N + rn, mask=row_ok, other=0.)
        dq = tl.zeros([BLOCK_N, BLOCK_C], ACC)
        for start in range(0, M, BLOCK_M):
            rm = start + tl.arange(0, BLOCK_M)
            key_ok = rm < M
            k = tl.load(
                K + b * M * C + rm[:, None] * C + rc[None, :],
                mask=key_ok[:, None] & (rc[None, :] < C),
                other=0.)
            v = tl.load(
                V + bh * M * D + rm[:, None] * D + rd[None, :],
                mask=key_ok[:, None] & (rd[None, :] < D),
                other=0.)
            s = tl.dot(q, tl.trans(k), input_precision='ieee').to(ACC)
            p = tl.where(key_ok[None, :], tl.exp(s - lse[:, None]), 0.)
            dp = tl.dot(do, tl.trans(v), input_precision='ieee').to(ACC)
            dp = dp + dr2[:, None] * (p - inv_M)
            dl = p * (dp - delta[:, None])
            dq += tl.dot(dl.to(k.dtype), k, input_precision='ieee').to(ACC)
        tl.store(
            DQ + bh * N * C + rn[:, None] * C + rc[None, :],
            dq,
            mask=row_ok[:, None] & (rc[None, :] < C))

    @triton.jit
    def _grad_keys_values_kernel(Q, K, V, DO, LSE, DR, DELTA, DK, DV, N, M, H,
                                 C, D, inv_M, ACC: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
        """One block of keys of one (batch, head): that head's share of
        ``dK = dl^T Q`` and ``dV = P^T dO``."""
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rc = tl.arange(0, BLOCK_C)
        rd = tl.arange(0, BLOCK_D)
        key_ok = rm < M
        k = tl.load(
            K + b * M * C + rm[:, None] * C + rc[None, :],
            mask=key_ok[:, None] & (rc[None, :] < C),
            other=0.)
        v = tl.load(
            V + bh * M * D + rm[:, None] * D + rd[None, :],
            mask=key_ok[:, None] & (rd[None, :] < D),
            other=0.)
        dk = tl.zeros([BLOCK_M, BLOCK_C], ACC)
        dv = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start in range(0, N, BLOCK_N):
            rn = start + tl.arange(0, BLOCK_N)
            row_ok = rn < N
            q = tl.load(
                Q + bh * N * C + rn[:, None] * C + rc[None, :],
                mask=row_ok[:, None] & (rc[None, :] < C),
                other=0.)
            do = tl.load(
                DO + bh * N * D + rn[:, None] * D + rd[None, :],
                mask=row_ok[:, None] & (rd[None, :] < D),
                other=0.).to(v.dtype)
            lse = tl.load(LSE + bh * N + rn, mask=row_ok, other=0.)
            dr2 = 2 * tl.load(DR + bh * N + rn, mask=row_ok, other=0.)
            delta = tl.load(DELTA + bh * N + rn, mask=row_ok, other=0.)
            s_t = tl.dot(k, tl.trans(q), input_precision='ieee').to(ACC)
            p_t = tl.where(row_ok[None, :] & key_ok[:, None],
                           tl.exp(s_t - lse[None, :]), 0.)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision='ieee').to(ACC)
            dp_t = tl.dot(v, tl.trans(do), input_precision='ieee').to(ACC)
            dp_t = dp_t + dr2[None, :] * (p_t - inv_M)
            dl_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(dl_t.to(q.dtype), q, input_precision='ieee').to(ACC)
        tl.store(
            DK + bh * M * C + rm[:, None] * C + rc[None, :],
            dk,
            mask=key_ok[:, None] & (rc[None, :] < C))
        tl.store(
            DV + bh * M * D + rm[:, None] * D + rd[None, :],
            dv,
            mask=key_ok[:, None] & (rd[None, :] < D))


def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


# Rows per tile by the padded channels (BLOCK_C), for 2-byte inputs (the
# autocast dtypes) and wider ones; 8 warps. Chosen from ptxas's report
# (Triton 3.6, sm_90, ``cuobjdump -res-usage``): the largest tiles whose
# three kernels spill no registers (fp16 at C = 256 with 64 rows spills
# 168-400 bytes a thread, at C = 512 with 64 rows 552-1576).
_ROWS_2BYTE = ((128, 64), (512, 32))
_ROWS_WIDER = ((128, 32), )
NUM_WARPS = 8


def launch_config(C: int,
                  D: int,
                  dtype: torch.dtype,
                  block: Optional[int] = None) -> dict:
    """The kernels' tiles and launch options for ``C`` query / key channels
    and ``D`` value channels in ``dtype``: ``BLOCK_N`` query rows and
    ``BLOCK_M`` key rows per tile, the channels padded to powers of two
    (``BLOCK_C``, ``BLOCK_D``, at least 16), ``num_warps``,
    ``num_stages``.

    A program holds query (or key) tiles of ``rows x C`` and gradient
    accumulators of the same size, so the rows shrink as C grows: 2-byte
    inputs 64 rows up to C = 128, 32 up to 512, then 16; float32 (and
    float64) 32 up to C = 128, then 16. Inputs wider than 2 bytes are
    pipelined in 2 stages instead of 3, which keeps float32 at C = 768
    (ResT-Base / Large, stage 4) within an A100's 163 KiB of shared memory
    (137 KiB against 205 KiB). ``block`` (a power of two, at least 16)
    overrides the rows, e.g. for the tests, which need several blocks of
    small sizes.
    """
    BLOCK_C, BLOCK_D = _pow2(C), _pow2(D)
    two_byte = torch.empty((), dtype=dtype).element_size() <= 2
    if block is None:
        block = next(
            (rows for top, rows in (_ROWS_2BYTE if two_byte else _ROWS_WIDER)
             if BLOCK_C <= top), 16)
    elif block < 16 or block & (block - 1):
        raise ValueError(f'block must be a power of two >= 16, got {block}')
    return dict(
        BLOCK_N=block,
        BLOCK_M=block,
        BLOCK_C=BLOCK_C,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
        num_stages=3 if two_byte else 2)


def _check(q, keys, values):
    if triton is None:
        raise ImportError(
            f"the 'triton' EMSA core needs triton >= 3 (found {_FOUND}; it "
            "comes with PyTorch's CUDA wheels); use another core")
    for name, t in (('queries', q), ('keys', keys), ('values', values)):
        if t.device.type != 'cuda' and not (t.device.type == 'cpu'
                                            and interpreted()):
            raise RuntimeError(
                f"the 'triton' EMSA core runs on CUDA tensors (on the CPU "
                f'only in Triton\'s interpreter, TRITON_INTERPRET=1); got '
                f'{name} on {t.device}')
    if not (q.dtype == keys.dtype == values.dtype):
        raise TypeError('queries, keys and values must share a dtype, got '
                        f'{q.dtype}, {keys.dtype}, {values.dtype}')
    B, H, N, C = q.shape
    if keys.shape != (B, keys.shape[1],
                      C) or values.shape[:3] != (B, H, keys.shape[1]):
        raise ValueError(
            f'shapes do not fit: queries {tuple(q.shape)} (B, H, N, C), keys '
            f'{tuple(keys.shape)} (B, M, C), values {tuple(values.shape)} '
            '(B, H, M, D)')


def _acc_dtype(dtype: torch.dtype):
    return (torch.float64,
            tl.float64) if dtype == torch.float64 else (torch.float32,
                                                        tl.float32)


class SoftmaxMoments(torch.autograd.Function):
    """``(P V, sum_m (P - 1/M)^2)`` with ``P = softmax(Q K^T)`` by rows, from
    the fused kernels; see :func:`softmax_moments`."""

    @staticmethod
    def forward(ctx, q, keys, values, block):
        _check(q, keys, values)
        q, keys, values = q.contiguous(), keys.contiguous(), \
            values.contiguous()
        B, H, N, C = q.shape
        M, D = keys.shape[1], values.shape[3]
        acc, acc_tl = _acc_dtype(q.dtype)
        out = q.new_empty(B, H, N, D, dtype=acc)
        lse = q.new_empty(B, H, N, dtype=acc)
        dev = q.new_empty(B, H, N, dtype=acc)
        config = launch_config(C, D, q.dtype, block)
        grid = (triton.cdiv(N, config['BLOCK_N']), B * H)
        _forward_kernel[grid](
            q,
            keys,
            values,
            out,
            lse,
            dev,
            N,
            M,
            H,
            C,
            D,
            ACC=acc_tl,
            **config)
        ctx.save_for_backward(q, keys, values, out, lse, dev)
        ctx.block = block
        return out, dev

    @staticmethod
    def backward(ctx, d_out, d_dev):
        q, keys, values, out, lse, dev = ctx.saved_tensors
        B, H, N, C = q.shape
        M, D = keys.shape[1], values.shape[3]
        acc, acc_tl = _acc_dtype(q.dtype)
        d_out = torch.zeros_like(out) if d_out is None else \
            d_out.to(acc).contiguous()
        d_dev = torch.zeros_like(dev) if d_dev is None else \
            d_dev.to(acc).contiguous()
        delta = (d_out * out).sum(-1) + 2 * d_dev * dev
        dq = torch.empty_like(q, dtype=acc)
        dk = q.new_empty(B, H, M, C, dtype=acc)
        dv = torch.empty_like(values, dtype=acc)
        config = launch_config(C, D, q.dtype, ctx.block)
        args = (N, M, H, C, D, 1.0 / M)
        kw = dict(config, ACC=acc_tl)
        rows = (triton.cdiv(N, config['BLOCK_N']), B * H)
        _grad_queries_kernel[rows](q, keys, values, d_out, lse, d_dev, delta,
                                   dq, *args, **kw)
        cols = (triton.cdiv(M, config['BLOCK_M']), B * H)
        _grad_keys_values_kernel[cols](q, keys, values, d_out, lse, d_dev,
                                       delta, dk, dv, *args, **kw)
        return (dq.to(q.dtype), dk.sum(1).to(keys.dtype), dv.to(values.dtype),
                None)


def softmax_moments(
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        block: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention with shared keys and each row's centred second moment, in
    one fused pass (differentiable in all three inputs).

    With ``P = softmax(q k^T)`` per (batch, head) and row (no scale):
    returns ``P @ values`` and ``sum_m (P_nm - 1/M)^2`` per row, both in
    float32 (float64 for float64 inputs).

    Args:
        q (Tensor): Queries, (B, H, N, C).
        keys (Tensor): Keys shared by the H heads, (B, M, C).
        values (Tensor): Values, (B, H, M, D).
        block (int, optional): Rows per tile (see :func:`launch_config`).

    Returns:
        tuple[Tensor, Tensor]: (B, H, N, D) and (B, H, N).
    """
    return SoftmaxMoments.apply(q, keys, values, block)
