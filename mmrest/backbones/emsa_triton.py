# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""EMSA's multi-head core as fused Triton kernels (the ``'triton'`` core of
:func:`mmrest.backbones.kernels.use_emsa_core`), CUDA's default for
training under float16 / bfloat16 autocast.

The core is written as attention over all ``C = h d`` channels with mixed
queries (:func:`~mmrest.backbones.kernels.mixed_query_attention`): per
(batch, head) the logits are ``l = Q K^T`` (queries ``Q``, N x C; keys
``K``, M x C, shared by the heads; :func:`softmax_moments` forms ``Q``
from the per-head queries and the mixing weight, in the forward and again
in the backward, so that only the per-head queries are kept for it) and
``P = softmax(l)`` by rows. The InstanceNorm over ``P`` needs, besides
``(P - 1/M) V``, only each row's centred second moment
``r_n = sum_m (P_nm - 1/M)^2``: the variance is ``sum_n r_n / (N M)``. One
pass over the keys gives both (:func:`softmax_moments`):

* the forward kernel keeps flash attention's running maximum, sum and
  ``P V`` product per query row, and beside them the running mean and
  sum of squared deviations of the row's exponentials (Chan's merge of
  the key blocks, rescaled with the running maximum), from which
  ``r_n = M2_n / sum_n^2``, without the cancellation of
  ``sum P^2 - 1/M`` when the attention is almost uniform;
* the products with the values round only deviations to the inputs'
  dtype, never ``P`` itself: the InstanceNorm divides ``P - 1/M`` by its
  standard deviation, which is small where the attention is almost uniform
  (``M std(P)`` about 2e-3 in a ResT at its initialisation), so a rounding
  of ``P`` (relative 2**-11 in float16) would come out hundreds of times
  larger. The forward takes each key block's ``sum_m p_m V_m`` as
  ``sum_m (p_m - mean) V_m`` (the deviations from the block's mean
  rounded) plus ``mean sum_m V_m`` (the block's sums of the values, in
  float32, by the kernel); ``(P - 1/M) V = P V - mean_m V_m`` then in
  float32, as the kernel stores it. The
  backward's ``dV = (P - 1/M)^T dO`` rounds ``P - 1/M`` likewise. (On the
  H200 under autocast this took the core's float16 error from 15 times the
  literal path's to the literal path's, docs/precision_and_export.md.)
* the backward kernels recompute ``P`` from the saved log-sum-exps, one
  over key blocks (gradients of the keys, per head, and of the values;
  its query rows split where the key blocks are too few to fill the GPU,
  :func:`query_splits`), one over query blocks (gradients of the
  queries). With upstream
  gradients ``dO`` of ``(P - 1/M) V`` and ``dr`` of ``r``:
  ``dP_nm = dO_n . V_m + 2 dr_n (P_nm - 1/M)`` and
  ``dl_nm = P_nm (dP_nm - delta_n)``,
  ``delta_n = dO_n . (P V)_n + 2 dr_n r_n``.

:func:`attention_core` is the whole core around the kernels (the keys and
values centred, the mixed queries, the InstanceNorm's division) as one
autograd node with its backward written out: 13 operators besides the
kernels in the forward and 24 in the backward, where autograd recording
each operator ran 25 and 42 (both counts with autograd's copy of a leaf's
gradient, ``test_triton_core_is_one_autograd_node_of_few_operators``; on a
GPU each operator is a launch, and at a ResT's sizes the tensors around the
kernels are small).

No N x M map is stored. Products run in the inputs' dtype (float16,
bfloat16: the autocast dtypes; float32 at IEEE precision, not TF32, since
the InstanceNorm amplifies rounding; float64 for the tests) and accumulate
in float32 (float64 for float64 inputs).

``triton`` is optional: it comes with PyTorch's CUDA wheels. The kernels
run on CUDA tensors; on the CPU only in Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which is how
the tests check them against float64.
"""
import contextlib
import functools
import warnings
from typing import Optional, Tuple

import torch

from .mixed_heads import centred, mixed_queries

try:
    import triton
    import triton.language as tl
    # (defined there in triton 2, imported there from its errors since 3)
    from triton.runtime.autotuner import OutOfResources
except ImportError:  # where triton is absent
    triton = None
# The kernels use Triton 3's language (``tl.dot``'s ``input_precision``)
# and its interpreter; torch 2.1's CUDA wheels bring triton 2.1.
if triton is not None and int(triton.__version__.split('.')[0]) < 3:
    _FOUND = f'triton {triton.__version__}'
    triton = None
else:
    _FOUND = 'no triton' if triton is None else None


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[Tuple[int, int]]:
    """The installed Triton's (major, minor), None without triton >= 3
    (read once: every launch's tiles ask)."""
    if triton is None:
        return None
    return tuple(int(part) for part in triton.__version__.split('.')[:2])


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


# The deviations from the softmax's mean that the products round to the
# inputs' dtype are scaled by this power of two first (exactly), keeping
# float16's small ones clear of its subnormal range; |deviation| <= 1.
if triton is not None:
    _DEV_SCALE = tl.constexpr(1024.0)

    @triton.jit
    def _program(H, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_D: tl.constexpr):
        """This program's (batch x head) index, its batch, its block of
        rows (queries or keys) and the ranges of the channels."""
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        return bh, bh // H, rows, tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_D)

    @triton.jit
    def _tile(PTR, offset, rows, n_rows, cols, n_cols):
        """Rows ``rows`` and columns ``cols`` of the row-major
        ``(n_rows, n_cols)`` matrix at ``PTR + offset``, zeros outside."""
        return tl.load(
            PTR + offset + rows[:, None] * n_cols + cols[None, :],
            mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols),
            other=0.)

    @triton.jit
    def _store_tile(PTR, offset, rows, n_rows, cols, n_cols, value):
        """Stores a tile written as :func:`_tile` reads it."""
        tl.store(
            PTR + offset + rows[:, None] * n_cols + cols[None, :],
            value,
            mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))

    @triton.jit
    def _row_terms(LSE, DR, DELTA, offset, rows, n_rows):
        """Per query row: the log-sum-exp, ``2 dr`` and ``delta``."""
        ok = rows < n_rows
        return (tl.load(LSE + offset + rows, mask=ok, other=0.),
                2 * tl.load(DR + offset + rows, mask=ok, other=0.),
                tl.load(DELTA + offset + rows, mask=ok, other=0.))

    @triton.jit
    def _grad_logits(p, centred, dp, dr2, delta):
        """``dl = P (dP - delta)`` with ``dP = dO V^T + 2 dr (P - 1/M)``
        (``dp`` the first term, ``centred`` = P - 1/M; rows or columns
        broadcast by the caller's shapes)."""
        return p * (dp + dr2 * centred - delta)

    @triton.jit
    def _forward_kernel(Q, K, V, OUT, LSE, DEV, N, M, H, C, D,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_D: tl.constexpr):
        """One block of query rows of one (batch, head): ``(P - 1/M) V``
        (``P V - mean_m V_m``), the log-sum-exps of the logits and
        ``r = sum_m (P - 1/M)^2``."""
        bh, b, rn, rc, rd = _program(H, BLOCK_N, BLOCK_C, BLOCK_D)
        q = _tile(Q, bh * N * C, rn, N, rc, C)
        run_max = tl.full([BLOCK_N], float('-inf'), ACC)
        run_mean = tl.zeros([BLOCK_N], ACC)  # of exp(l - run_max)
        run_m2 = tl.zeros([BLOCK_N], ACC)  # their squared deviations
        seen = tl.zeros([BLOCK_N], ACC)  # keys so far
        acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        v_total = tl.zeros([BLOCK_D], ACC)  # sum_m V_m
        for start in range(0, M, BLOCK_M):
            rm = start + tl.arange(0, BLOCK_M)
            key_ok = rm < M
            k = _tile(K, b * M * C, rm, M, rc, C)
            v = _tile(V, bh * M * D, rm, M, rd, D)
            s = tl.dot(q, tl.trans(k), input_precision='ieee').to(ACC)
            s = tl.where(key_ok[None, :], s, float('-inf'))
            new_max = tl.maximum(run_max, tl.max(s, 1))
            alpha = tl.exp(run_max - new_max)
            p = tl.exp(s - new_max[:, None])
            count = tl.minimum(M - start, BLOCK_M).to(ACC)  # keys here
            block_mean = tl.sum(p, 1) / count
            dev = tl.where(key_ok[None, :], p - block_mean[:, None], 0.)
            step = block_mean - run_mean * alpha
            run_m2 = run_m2 * alpha * alpha + tl.sum(dev * dev, 1) + \
                step * step * seen * count / (seen + count)
            run_mean = run_mean * alpha + step * count / (seen + count)
            seen += count
            # _DEV_SCALE times sum_m p_m V_m of the block, as
            # sum_m (p_m - mean) V_m + mean sum_m V_m: only the deviations
            # are rounded to the inputs' dtype (see the module's docstring);
            # the block's sum of the values in ACC (zeros past M and D)
            v_sum = tl.sum(v.to(ACC), 0)
            v_total += v_sum
            acc = acc * alpha[:, None] + tl.dot(
                (dev * _DEV_SCALE).to(v.dtype), v,
                input_precision='ieee').to(ACC) + \
                (block_mean * _DEV_SCALE)[:, None] * v_sum[None, :]
            run_max = new_max
        total = run_mean * M  # sum_m exp(l - run_max)
        _store_tile(
            OUT, bh * N * D, rn, N, rd, D,
            acc / (total * _DEV_SCALE)[:, None] - (v_total / M)[None, :])
        tl.store(LSE + bh * N + rn, run_max + tl.log(total), mask=rn < N)
        tl.store(DEV + bh * N + rn, run_m2 / (total * total), mask=rn < N)

    @triton.jit
    def _grad_queries_kernel(Q, K, V, DO, LSE, DR, DELTA, DQ, N, M, H, C, D,
                             inv_M, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_D: tl.constexpr):
        """One block of query rows: ``dQ = dl K``."""
        bh, b, rn, rc, rd = _program(H, BLOCK_N, BLOCK_C, BLOCK_D)
        q = _tile(Q, bh * N * C, rn, N, rc, C)
        do = _tile(DO, bh * N * D, rn, N, rd, D).to(q.dtype)
        lse, dr2, delta = _row_terms(LSE, DR, DELTA, bh * N, rn, N)
        dq = tl.zeros([BLOCK_N, BLOCK_C], ACC)
        for start in range(0, M, BLOCK_M):
            rm = start + tl.arange(0, BLOCK_M)
            k = _tile(K, b * M * C, rm, M, rc, C)
            v = _tile(V, bh * M * D, rm, M, rd, D)
            s = tl.dot(q, tl.trans(k), input_precision='ieee').to(ACC)
            p = tl.where((rm < M)[None, :], tl.exp(s - lse[:, None]), 0.)
            dp = tl.dot(do, tl.trans(v), input_precision='ieee').to(ACC)
            dl = _grad_logits(p, p - inv_M, dp, dr2[:, None], delta[:, None])
            dq += tl.dot(dl.to(k.dtype), k, input_precision='ieee').to(ACC)
        _store_tile(DQ, bh * N * C, rn, N, rc, C, dq)

    @triton.jit
    def _grad_keys_values_kernel(Q, K, V, DO, LSE, DR, DELTA, DK, DV, N, M, H,
                                 C, D, inv_M, SPLIT_ROWS, SPLIT: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                 BLOCK_D: tl.constexpr):
        """One block of keys of one (batch, head): that head's share of
        ``dK = dl^T Q`` and ``dV = P^T dO``; with ``SPLIT``, over one split
        of the query rows (``SPLIT_ROWS`` of them, a multiple of
        ``BLOCK_N``, from the split's index times that), that split's share.
        (Without it the kernel compiles as before the splits, which take a
        few registers more: at C = 768 they spill, tests/_triton_aot.py.)"""
        bh, b, rm, rc, rd = _program(H, BLOCK_M, BLOCK_C, BLOCK_D)
        k = _tile(K, b * M * C, rm, M, rc, C)
        v = _tile(V, bh * M * D, rm, M, rd, D)
        dk = tl.zeros([BLOCK_M, BLOCK_C], ACC)
        dv = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        # this split's query rows: from row ``first``, ``rows`` of them
        if SPLIT:
            first = tl.program_id(2) * SPLIT_ROWS
            rows = tl.minimum(N - first, SPLIT_ROWS)
            part = bh * tl.num_programs(2) + tl.program_id(2)
        else:
            first = 0
            rows = N
            part = bh
        for start in range(0, rows, BLOCK_N):
            rn = start + tl.arange(0, BLOCK_N)
            q = _tile(Q, (bh * N + first) * C, rn, rows, rc, C)
            do = _tile(DO, (bh * N + first) * D, rn, rows, rd, D).to(v.dtype)
            lse, dr2, delta = _row_terms(LSE, DR, DELTA, bh * N + first, rn,
                                         rows)
            s_t = tl.dot(k, tl.trans(q), input_precision='ieee').to(ACC)
            p_t = tl.where((rn < rows)[None, :] & (rm < M)[:, None],
                           tl.exp(s_t - lse[None, :]), 0.)
            centred = p_t - inv_M
            dp_t = tl.dot(v, tl.trans(do), input_precision='ieee').to(ACC)
            dl_t = _grad_logits(p_t, centred, dp_t, dr2[None, :],
                                delta[None, :])
            dk += tl.dot(dl_t.to(q.dtype), q, input_precision='ieee').to(ACC)
            # dV = (P - 1/M)^T dO, only the deviations rounded (as in the
            # forward; columns past the split's rows meet zero rows of dO,
            # rows past M are not stored)
            dv += tl.dot(
                (centred * _DEV_SCALE).to(do.dtype),
                do,
                input_precision='ieee').to(ACC)
        _store_tile(DK, part * M * C, rm, M, rc, C, dk)
        _store_tile(DV, part * M * D, rm, M, rd, D, dv / _DEV_SCALE)


def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


# The widest padded channels whose compilation the tests check (ResT-Base
# and -Large at stage 4: C = 768 query / key channels, d = 96 value ones)
MAX_BLOCK_C = 1024
MAX_BLOCK_D = 128


def fits(C: int, D: int) -> bool:
    """Whether the kernels take ``C`` query / key channels and ``D`` value
    channels (padded to powers of two: at most ``MAX_BLOCK_C`` and
    ``MAX_BLOCK_D``)."""
    return _pow2(C) <= MAX_BLOCK_C and _pow2(D) <= MAX_BLOCK_D


def launch_device(t: torch.Tensor):
    """The context for the kernels' launches on ``t``: Triton launches on
    the current CUDA device, so ``t``'s device is made current (a tensor
    on ``cuda:1`` while ``cuda:0`` is current); nothing for CPU tensors
    (the interpreter)."""
    if t.device.type == 'cuda':
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def capability(t: torch.Tensor) -> Optional[Tuple[int, int]]:
    """The compute capability of the NVIDIA GPU ``t`` is on; None on the
    CPU and under ROCm (whose 'cuda' devices are AMD GPUs: their version
    numbers are not NVIDIA's, so the defaults' tiles apply)."""
    if t.device.type == 'cuda' and not torch.version.hip:
        return torch.cuda.get_device_capability(t.device)
    return None


# Rows per tile by the padded channels (BLOCK_C), for 2-byte inputs (the
# autocast dtypes) and wider ones; 8 warps. Chosen from ptxas's report
# (Triton 3.6, sm_90, ``cuobjdump -res-usage``): the largest tiles whose
# three kernels spill no registers (fp16 at C = 256 with 64 rows spills
# 168-400 bytes a thread, at C = 512 with 64 rows 552-1576).
_ROWS_2BYTE = ((128, 64), (512, 32))
_ROWS_WIDER = ((128, 32), )
# The forward kernel alone, 2-byte inputs, by the GPU's compute capability
# (major version): it holds no gradient accumulators, and from 64 rows on
# Triton gives its products the architecture's own tensor-core
# instructions (at 32 rows, mma.sync; tests/_triton_aot.py reports which).
# Hopper (9.x, wgmma): no spills at 64 rows up to C = 512 (252 registers,
# 136 KiB of shared memory at C = 512, fp16 and bf16). Blackwell's data
# centre GPUs (10.x: B200, B300; tcgen05): none up to C = 256; at C = 512
# (BLOCK_C) none with heads of 64 channels but 32 bytes a thread with 96
# (C = 384, ResT-Base / Large stage 3), so 32 rows there. On sm_80 64 rows
# spill from C = 256 on (1040 bytes a thread); RTX 50xx (12.x) compiles
# to mma.sync at any rows.
_FORWARD_ROWS_2BYTE = {9: ((512, 64), ), 10: ((256, 64), )}
# Triton 3.0 and 3.1 (torch 2.4, 2.5) abort the process (a failed assertion
# in their compiler: "mma -> mma layout conversion is only supported on
# Ampere") compiling the forward's two chained products as wgmma, i.e. at
# 64 rows for sm_90, at every C (the table's 64 rows at C <= 128 too); at
# 32 rows (mma.sync) it compiles. The rules above apply from Triton 3.2 on,
# before it the forward takes at most 32 rows on 9.x (tests/_triton_aot.py
# with each Triton, docs/benchmarks.md).
_WGMMA_FORWARD_SINCE = (3, 2)
_FORWARD_ROWS_MMA_SYNC = {9: ((512, 32), )}
# The backward kernels where their products compile to mma.sync (compute
# capability 8.x and 12.x: A100, RTX 30xx to 50xx, A10, L4, L40): at 64
# rows and C = 128 the keys / values kernel spills 568 bytes a thread on
# sm_80, 296 on sm_86, 456 on sm_120, and nothing at 32 rows; on 9.x
# (wgmma) and 10.x it spills nothing at 64.
_BACKWARD_ROWS_2BYTE_MMA_SYNC = ((512, 32), )
_NO_BACKWARD_SPILLS_AT_64 = (9, 10)
NUM_WARPS = 8


def launch_config(C: int,
                  D: int,
                  dtype: torch.dtype,
                  block: Optional[int] = None,
                  num_warps: Optional[int] = None,
                  num_stages: Optional[int] = None,
                  forward: bool = False,
                  capability: Optional[Tuple[int, int]] = None) -> dict:
    """The kernels' tiles and launch options for ``C`` query / key channels
    and ``D`` value channels in ``dtype``: ``BLOCK_N`` query rows and
    ``BLOCK_M`` key rows per tile, the channels padded to powers of two
    (``BLOCK_C``, ``BLOCK_D``, at least 16), ``num_warps``,
    ``num_stages``.

    A program holds query (or key) tiles of ``rows x C`` and gradient
    accumulators of the same size, so the rows shrink as C grows: 2-byte
    inputs 64 rows up to C = 128, 32 up to 512, then 16; float32 (and
    float64) 32 up to C = 128, then 16. The forward kernel (``forward``),
    which holds no gradient accumulators, takes 64 rows of 2-byte inputs
    up to C = 512 on a GPU of compute capability 9.x and up to C = 256 on
    10.x (``capability``, as ``torch.cuda.get_device_capability`` gives
    it; None: the CPU's interpreter, the table above), with Triton 3.2 or
    newer (3.0 and 3.1 abort compiling it for sm_90 at 64 rows: at most 32
    there); the backward kernels take 32 rows of 2-byte inputs from
    C = 128 down on GPUs other than 9.x and 10.x, where at 64 the keys /
    values kernel spills. Inputs wider than 2 bytes are pipelined in 2
    stages instead of 3, which keeps float32 at C = 768 (ResT-Base /
    Large, stage 4) within an A100's 163 KiB of shared memory (137 KiB
    against 205 KiB). ``block`` (a power of two, at least 16) overrides
    the rows, e.g. for the tests, which need several blocks of small
    sizes; ``num_warps`` (1 to 16, a power of two) and ``num_stages`` (at
    least 1) override the launch options (the tuning sweep of
    ``tools/device/gpu_profile.py``). Products and sums contract
    to fused multiply-adds (``enable_fp_fusion``, as the kernels were
    checked on the GPU): Triton 3.9 warns that its default turns that off
    from 3.10 on.
    """
    BLOCK_C, BLOCK_D = _pow2(C), _pow2(D)
    two_byte = torch.empty((), dtype=dtype).element_size() <= 2
    if block is None:
        table = _ROWS_2BYTE if two_byte else _ROWS_WIDER
        if forward and two_byte and capability is not None:
            version = triton_version()  # None: no Triton to work around
            wgmma = version is None or version >= _WGMMA_FORWARD_SINCE
            rules = _FORWARD_ROWS_2BYTE if wgmma else _FORWARD_ROWS_MMA_SYNC
            table = rules.get(capability[0], ()) + table
        elif not forward and two_byte and capability is not None and \
                capability[0] not in _NO_BACKWARD_SPILLS_AT_64:
            table = _BACKWARD_ROWS_2BYTE_MMA_SYNC + table
        block = next((rows for top, rows in table if BLOCK_C <= top), 16)
    elif block < 16 or block & (block - 1):
        raise ValueError(f'block must be a power of two >= 16, got {block}')
    if num_warps is not None and num_warps not in (1, 2, 4, 8, 16):
        raise ValueError('num_warps must be a power of two from 1 to 16, got '
                         f'{num_warps}')
    if num_stages is not None and num_stages < 1:
        raise ValueError(f'num_stages must be at least 1, got {num_stages}')
    return dict(
        BLOCK_N=block,
        BLOCK_M=block,
        BLOCK_C=BLOCK_C,
        BLOCK_D=BLOCK_D,
        num_warps=num_warps or NUM_WARPS,
        num_stages=num_stages or (3 if two_byte else 2),
        enable_fp_fusion=True)


# The keys / values kernel splits the query rows (see query_splits) at
# most this many ways, each split at least this many query blocks.
MAX_QUERY_SPLITS = 16
MIN_SPLIT_BLOCKS = 4


def query_splits(programs: int, query_blocks: int,
                 multiprocessors: Optional[int]) -> int:
    """Into how many splits the keys / values kernel divides the query
    rows, by default: each of its ``programs`` (a block of keys of one
    (batch, head)) loops over all ``query_blocks``, and where the keys are
    few the grid is smaller than the GPU (ResT-Small's stage 2 at
    800 x 1344, batch 2: 1050 keys, 17 blocks of 64 times 4 = 68 programs
    for an H200's 132 multiprocessors, where at 255 registers a thread
    (8 warps, tests/_triton_aot.py) each holds one program). With the
    queries split S ways (partial sums of the gradients, added after) the
    kernel takes ``ceil(programs S / multiprocessors) / S`` of the
    unsplit program's time, if each multiprocessor runs one program at a
    time; this is the smallest S (from 1 to ``MAX_QUERY_SPLITS``, each
    split at least ``MIN_SPLIT_BLOCKS`` query blocks) within 10% of the
    best of them: 7 there, 1 where the grid already fills the GPU in whole
    waves. ``multiprocessors`` None (the CPU's interpreter): 1.
    """
    if not multiprocessors:
        return 1
    top = max(1, min(MAX_QUERY_SPLITS, query_blocks // MIN_SPLIT_BLOCKS))
    cost = [-(-programs * s // multiprocessors) / s for s in range(1, top + 1)]
    best = min(cost)
    return next(s for s, c in enumerate(cost, 1) if c <= 1.1 * best)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(t: torch.Tensor) -> Optional[int]:
    """The number of multiprocessors of the GPU ``t`` is on (a CUDA
    tensor's device has its index); None on the CPU."""
    if t.device.type == 'cuda':
        return _multiprocessors(t.device.index)
    return None


# The first Triton whose compiler knows Blackwell's compute capabilities
# (10.x: B200 / B300, 12.x: RTX 50xx); Triton 3.2 aborts the process
# compiling for sm_100 or sm_120 ("computeCapability not supported").
BLACKWELL_SINCE = (3, 3)


def compiles_for(capability: Optional[Tuple[int, int]]) -> bool:
    """Whether the installed Triton compiles the kernels for a GPU of
    compute ``capability`` (None: the interpreter's) rather than abort
    the process: Blackwell's (10.x, 12.x) from ``BLACKWELL_SINCE`` on."""
    return capability is None or capability[0] < 10 or \
        (triton_version() or (0, 0)) >= BLACKWELL_SINCE


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
    if not compiles_for(capability(q)):
        raise RuntimeError(
            f"the 'triton' EMSA core needs triton >= "
            f"{'.'.join(map(str, BLACKWELL_SINCE))} on a GPU of compute "
            f'capability {capability(q)} (found triton {triton.__version__}, '
            'whose compiler would abort the process); use another core')
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
    if not fits(C, values.shape[3]):
        raise ValueError(
            f"the 'triton' EMSA core takes at most {MAX_BLOCK_C} query / key "
            f'channels and {MAX_BLOCK_D} value channels (padded to powers of '
            f'two), got {C} and {values.shape[3]}; use another core')


def smaller_launches(config: dict):
    """The launches :func:`fitted_launch` tries after ``config`` (a
    :func:`launch_config`), in order: for the rows per tile and then each
    half of them down to 16, the pipeline stages from ``config``'s down to
    1 (``config`` itself first)."""
    rows = config['BLOCK_N']
    while rows >= 16:
        for stages in range(config['num_stages'], 0, -1):
            yield dict(config, BLOCK_N=rows, BLOCK_M=rows, num_stages=stages)
        rows //= 2


# The launch that fitted, by (kernel, device, dtype, launch_config's choice)
_FITTED = {}
# What spilled_bytes found of each launch fitted_launch compiled, by
# (kernel, device, dtype, BLOCK_C, BLOCK_D, rows, stages): bytes a thread,
# None where unknown (read by tools/device/gpu_profile.py)
SPILLED = {}
# A kernel compiled to keep more than this many bytes a thread in local
# memory (spilled registers) steps down like a refused launch (see
# fitted_launch). The tiles were chosen with Triton 3.6 to spill nothing
# (56 bytes at most, at C = 768 with heads of 96 and the smallest tiles);
# other Tritons allocate registers otherwise (tests/_triton_aot.py with
# each, docs/benchmarks.md): at C = 128 with 64 rows, where the keys /
# values kernel's products are Hopper's wgmma, Triton 3.5, 3.7 and 3.8
# spill 64 to 80 bytes a thread there (kept: 32 rows would give up wgmma
# for a few registers), 3.0 to 3.4 and 3.9 144 to 416 (stepped down); 3.0
# to 3.4 and 3.9 spill up to 4816 bytes elsewhere.
SPILL_LIMIT = 128


def spilled_bytes(run, config: dict, t: torch.Tensor) -> Optional[int]:
    """How many bytes a thread the kernel of ``run`` compiled with
    ``config`` keeps in local memory (its spilled registers: CUDA's
    LOCAL_SIZE_BYTES of the kernel loaded on ``t``'s GPU, which Triton's
    loader gives as ``n_spills`` in 4-byte words). ``run(config,
    warmup=True)`` compiles the launch without running it (Triton's
    ``warmup``; the launch then finds it, loaded, in Triton's cache). None
    where that is unknown: Triton's interpreter (whose warmup compiles
    nothing) or a Triton without these interfaces (Triton 3.0 to 3.9 have
    them). Triton's ``OutOfResources`` (a kernel the GPU cannot load, as
    its launch would raise) propagates."""
    try:
        kernel = run(config, warmup=True)
        if kernel is None:  # the interpreter
            return None
        if hasattr(kernel, 'result'):  # compiled asynchronously
            kernel = kernel.result()
        with launch_device(t):  # loaded where it will run: reads n_spills
            kernel._init_handles()
        return 4 * int(kernel.n_spills)
    except OutOfResources:
        raise
    except Exception:  # noqa: BLE001 (unknown: the launch decides)
        return None


def fitted_launch(name: str, config: dict, launch: dict, t: torch.Tensor, run):
    """``run(config)``: one kernel's launch, as ``launch_config`` chose it
    for the GPU it was tuned on (sm_90 with Triton 3.6), stepped down
    (:func:`smaller_launches`) where it does not suit this GPU and Triton:

    * where Triton refuses the launch (``OutOfResources``: the shared
      memory exceeds what the GPU has, 99 KiB a block on compute capability
      8.6, 8.9 and 12.x: RTX 30xx / 40xx / 50xx, A10, L4, L40; 163 KiB on
      8.0, 227 KiB on 9.0), the next launch;
    * where the compiled kernel spills more than ``SPILL_LIMIT`` bytes a
      thread (:func:`spilled_bytes`, from ``run(config, warmup=True)``,
      which compiles without launching; another Triton's or GPU's register
      allocation), half the rows (fewer stages hold no fewer registers).
      Where every smaller launch spills or is refused, the one that
      spilled least runs.

    A warning names the launch taken when it is not ``config``; that launch
    is remembered for the kernel, ``t``'s device and dtype and ``config``,
    so the next call runs it directly. Rows or stages given in ``launch``
    (a tuning sweep) are run as given."""
    if launch.get('block') or launch.get('num_stages'):
        return run(config)
    key = (name, t.device, t.dtype, tuple(sorted(config.items())))
    if key in _FITTED:
        return run(_FITTED[key])
    refused = None  # the first refused (launch, refusal)
    spilling = []  # (launch, bytes) that loaded but spilled, fewer rows on
    for candidate in smaller_launches(config):
        if spilling and candidate['BLOCK_N'] >= spilling[-1][0]['BLOCK_N']:
            continue
        try:
            spilled = spilled_bytes(run, candidate, t)
            SPILLED[(name, str(t.device), str(t.dtype)) +
                    tuple(candidate[k]
                          for k in ('BLOCK_C', 'BLOCK_D', 'BLOCK_N',
                                    'num_stages'))] = spilled
            if spilled is not None and spilled > SPILL_LIMIT:
                spilling.append((candidate, spilled))
                continue
            out = run(candidate)
        except OutOfResources as e:
            refused, last = refused or (candidate, e), e
            continue
        spills = None
        break
    else:
        if not spilling:
            raise last
        # the one that spilled least (of equals, the larger tiles)
        candidate, spills = min(spilling, key=lambda launch: launch[1])
        out = run(candidate)
    _FITTED[key] = candidate
    if candidate != config:

        def rows(launch):
            return (f"with {launch['BLOCK_N']} rows in "
                    f"{launch['num_stages']} stages")

        reasons = []
        if refused is not None:
            e = refused[1]
            reasons.append(f'ran out of {e.name} (required {e.required}, '
                           f'limit {e.limit}) {rows(refused[0])}')
        if spilling:
            reasons.append(f'spilled {spilling[0][1]} bytes a thread (limit '
                           f'{SPILL_LIMIT}) {rows(spilling[0][0])}')
        fewest = '' if spills is None else \
            f', spilling {spills} bytes a thread, the fewest'
        warnings.warn(f'{name} on {t.device} {" and ".join(reasons)}; it '
                      f"runs {candidate['BLOCK_N']} rows in "
                      f"{candidate['num_stages']} stages{fewest}")
    return out


def _launch(kernel, grid, warmup: bool, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``; with ``warmup``, Triton's
    compilation of that launch, not run (see :func:`spilled_bytes`)."""
    if warmup:
        return kernel.warmup(*args, grid=grid, **kwargs)
    return kernel[grid](*args, **kwargs)


def _acc_dtype(dtype: torch.dtype):
    return (torch.float64,
            tl.float64) if dtype == torch.float64 else (torch.float32,
                                                        tl.float32)


def _launch_forward(queries, keys, values, launch):
    """The forward kernel on contiguous ``queries`` (B, H, N, C), ``keys``
    (B, M, C) and ``values`` (B, H, M, D): ``(P - 1/M) V``, the rows'
    log-sum-exps and ``r``, in the accumulators' dtype."""
    B, H, N, C = queries.shape
    M, D = keys.shape[1], values.shape[3]
    acc, acc_tl = _acc_dtype(queries.dtype)
    out = queries.new_empty(B, H, N, D, dtype=acc)
    lse = queries.new_empty(B, H, N, dtype=acc)
    dev = queries.new_empty(B, H, N, dtype=acc)
    config = launch_config(
        C,
        D,
        queries.dtype,
        forward=True,
        capability=capability(queries),
        **_tiles(launch))
    args = (queries, keys, values, out, lse, dev, N, M, H, C, D)

    def run(config, warmup=False):
        grid = (triton.cdiv(N, config['BLOCK_N']), B * H)
        with launch_device(queries):
            return _launch(
                _forward_kernel, grid, warmup, *args, ACC=acc_tl, **config)

    fitted_launch('_forward_kernel', config, launch, queries, run)
    return out, lse, dev


def _launch_backward(queries, keys, values, out, lse, dev, d_out, d_dev,
                     launch):
    """The backward kernels, given the forward's ``out``, ``lse``, ``dev``
    and the upstream gradients ``d_out`` (B, H, N, D) and ``d_dev``
    (B, H, N), contiguous, in the accumulators' dtype: the gradients of
    the queries (B, H, N, C), of the keys as shares to be summed over
    dimension 1 (B, H S, M, C: per head and split of the queries, see
    :func:`query_splits`) and of the values, in that dtype."""
    B, H, N, C = queries.shape
    M, D = keys.shape[1], values.shape[3]
    acc, acc_tl = _acc_dtype(queries.dtype)
    # delta_n = dO_n . (P V)_n + 2 dr_n r_n, P V = out + mean_m V_m
    v_mean = values.mean(2, keepdim=True, dtype=acc)
    delta = (d_out * (out + v_mean)).sum(-1).addcmul_(d_dev, dev, value=2)
    config = launch_config(
        C, D, queries.dtype, capability=capability(queries), **_tiles(launch))
    args = (N, M, H, C, D, 1.0 / M)
    dq = torch.empty_like(queries, dtype=acc)
    # what both kernels read
    inputs = (queries, keys, values, d_out, lse, d_dev, delta)

    def grad_queries(config, warmup=False):
        grid = (triton.cdiv(N, config['BLOCK_N']), B * H)
        with launch_device(queries):
            return _launch(
                _grad_queries_kernel,
                grid,
                warmup,
                *inputs,
                dq,
                *args,
                ACC=acc_tl,
                **config)

    def grad_keys_values(config, warmup=False):
        query_blocks = triton.cdiv(N, config['BLOCK_N'])
        key_blocks = triton.cdiv(M, config['BLOCK_M'])
        splits = launch.get('splits') or query_splits(
            key_blocks * B * H, query_blocks, multiprocessors(queries))
        # whole query blocks a split; no split left empty
        split_blocks = triton.cdiv(query_blocks, min(splits, query_blocks))
        splits = triton.cdiv(query_blocks, split_blocks)
        dk = queries.new_empty(B, H * splits, M, C, dtype=acc)
        dv = queries.new_empty(B, H, splits, M, D, dtype=acc)
        with launch_device(queries):
            compiled = _launch(
                _grad_keys_values_kernel, (key_blocks, B * H, splits),
                warmup,
                *inputs,
                dk,
                dv,
                *args,
                split_blocks * config['BLOCK_N'],
                SPLIT=splits > 1,
                ACC=acc_tl,
                **config)
        if warmup:
            return compiled
        return dk, dv.squeeze(2) if splits == 1 else dv.sum(2)

    fitted_launch('_grad_queries_kernel', config, launch, queries,
                  grad_queries)
    dk, dv = fitted_launch('_grad_keys_values_kernel', config, launch, queries,
                           grad_keys_values)
    return dq, dk, dv


def _query_grads(dq, q, mix):
    """The gradients of ``q`` (in its dtype) and of ``mix`` from the
    kernels' queries' gradient ``dq`` (B, H, N, C)."""
    if mix is None:
        return dq.to(q.dtype), None
    B, H, N, d = q.shape
    dq, d_mix = _unmix_grad(dq.view(B, H, N, H, d), q, mix)
    return dq.to(q.dtype), d_mix.to(mix.dtype)


class SoftmaxMoments(torch.autograd.Function):
    """``((P - 1/M) V, sum_m (P - 1/M)^2)`` with ``P = softmax(Q K^T)`` by
    rows, from the fused kernels; see :func:`softmax_moments`."""

    @staticmethod
    def forward(ctx, q, keys, values, launch, mix):
        queries = _queries(q, mix)
        _check(queries, keys, values)
        keys, values = keys.contiguous(), values.contiguous()
        out, lse, dev = _launch_forward(queries, keys, values, launch)
        # with ``mix``, q rather than the H times larger mixed queries
        ctx.save_for_backward(q, mix, keys, values, out, lse, dev)
        ctx.launch = launch
        return out, dev

    @staticmethod
    def backward(ctx, d_out, d_dev):
        q, mix, keys, values, out, lse, dev = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else \
            d_out.to(out.dtype).contiguous()
        d_dev = torch.zeros_like(dev) if d_dev is None else \
            d_dev.to(dev.dtype).contiguous()
        dq, dk, dv = _launch_backward(
            _queries(q, mix), keys, values, out, lse, dev, d_out, d_dev,
            ctx.launch)
        dq, d_mix = _query_grads(dq, q, mix)
        return dq, dk.sum(1).to(keys.dtype), dv.to(values.dtype), None, d_mix


class EMSACore(torch.autograd.Function):
    """EMSA's multi-head core around the fused kernels, forward and
    backward written out (so that autograd records one node, not one per
    operator around the kernels); see :func:`attention_core`."""

    @staticmethod
    def forward(ctx, q, k, v, mix, mix_bias, eps, launch):
        B, h, N, d = q.shape
        M = k.shape[2]
        keys, values = centred(k, q.dtype, heads_last=True), \
            centred(v, q.dtype)
        queries = _queries(q, mix)
        _check(queries, keys, values)
        out, lse, dev = _launch_forward(queries, keys, values, launch)
        # the InstanceNorm's biased variance, sum_n r_n / (N M)
        inv_std = dev.sum(-1, keepdim=True).div_(N * M).add_(eps).rsqrt_()
        inv_std = inv_std.unsqueeze(-1)  # (B, h, 1, 1)
        ctx.save_for_backward(q, mix, keys, values, out, lse, dev, inv_std)
        ctx.launch = launch
        ctx.bias_grad = mix_bias is not None and ctx.needs_input_grad[4]
        ctx.dtypes = (k.dtype, v.dtype,
                      None if mix_bias is None else mix_bias.dtype)
        # rounded to q's dtype as it is written, in the (B, N, h, d) layout
        # in which EMSA's output projection reads it (a transposed view)
        y = q.new_empty(B, N, h, d).transpose(1, 2)
        return torch.mul(out, inv_std, out=y)

    @staticmethod
    def backward(ctx, grad):
        q, mix, keys, values, out, lse, dev, inv_std = ctx.saved_tensors
        B, h, N, d = q.shape
        M = keys.shape[1]
        # y = out s, s = (sum_n r_n / (N M) + eps)^(-1/2): dO = dy s, and
        # dr_n is the same for every row, -s^3 / (2 N M) sum(dy * out)
        # (products in out's dtype: dy, in q's, converts exactly)
        d_out = torch.mul(grad, inv_std, out=torch.empty_like(out))
        d_dev = (grad * out).sum(
            (2, 3), keepdim=True).mul_(inv_std.pow(3)).mul_(-0.5 / (N * M))
        dq, dk, dv = _launch_backward(
            _queries(q, mix), keys, values, out, lse, dev, d_out,
            d_dev.view(B, h, 1).expand(B, h, N).contiguous(), ctx.launch)
        dq, d_mix = _query_grads(dq, q, mix)
        # the centring over M needs no step back: the kernels' key and
        # value gradients already sum to zero over M, as the rows of dl
        # (dK = dl^T Q) and of P - 1/M (dV = (P - 1/M)^T dO) do
        dk = dk.sum(1).view(B, M, h, d).transpose(1, 2).to(ctx.dtypes[0])
        # the mixing bias cancels in the softmax: an exact zero, as in the
        # literal computation
        d_bias = mix.new_zeros(h, dtype=ctx.dtypes[2]) if ctx.bias_grad \
            else None
        return dq, dk, dv.to(ctx.dtypes[1]), d_mix, d_bias, None, None


def _unmix_grad(d_queries: torch.Tensor, q: torch.Tensor,
                mix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The gradients of the per-head queries ``q`` (B, H, N, d) and of the
    mixing weight ``W`` (H, H) from those of the mixed queries
    ``Q_g = concat_j(W[g, j] q_j)``, given as ``d_queries`` (B, g, N, j, d).

    Elementwise products and sums: as an einsum, the weight's gradient is a
    batched matrix-vector product that reduces all B N d products into
    each (g, j) entry, a kernel without parallelism along that reduction
    on CUDA (the pattern of :class:`~mmrest.backbones.kernels.MixHeads`).
    The queries' gradient comes out (B, N, H, d)-contiguous, the layout of
    the projection that made ``q``.
    """
    H = mix.shape[0]
    d_mix = (d_queries * q.transpose(1, 2).unsqueeze(1)).sum((0, 2, 4))
    dq = (d_queries * mix.view(1, H, 1, H, 1)).sum(1)
    return dq.transpose(1, 2), d_mix


def _queries(q, mix):
    """The kernels' (B, H, N, C) queries: ``q``, or with ``mix`` the mixed
    queries (:func:`~mmrest.backbones.mixed_heads.mixed_queries`)."""
    return q.contiguous() if mix is None else mixed_queries(q, mix)


def _launch_options(launch: Optional[dict], block: Optional[int]) -> dict:
    launch = dict(launch or {})
    unknown = set(launch) - {'num_warps', 'num_stages', 'splits'}
    if unknown:
        raise ValueError(f'unknown launch options {sorted(unknown)}; known: '
                         'num_warps, num_stages, splits (rows per tile: '
                         'block)')
    splits = launch.get('splits')
    if splits is not None and (not isinstance(splits, int) or splits < 1):
        raise ValueError(
            f'splits must be a positive integer or None, got {splits!r}')
    return dict(launch, block=block)


def _tiles(launch: dict) -> dict:
    """:func:`launch_config`'s options among the launch options."""
    return {key: value for key, value in launch.items() if key != 'splits'}


def attention_core(q: torch.Tensor,
                   k: torch.Tensor,
                   v: torch.Tensor,
                   mix: torch.Tensor,
                   mix_bias: Optional[torch.Tensor] = None,
                   eps: float = 1e-5,
                   block: Optional[int] = None,
                   launch: Optional[dict] = None) -> torch.Tensor:
    """EMSA's multi-head core (the ``'triton'`` core of
    :func:`mmrest.backbones.kernels.use_emsa_core`): the keys and values
    centred over M (float32, rounded once to ``q``'s dtype), the mixed
    queries, :func:`softmax_moments`' kernels, and the InstanceNorm's
    division by ``sqrt(sum_n r_n / (N M) + eps)`` per (batch, head); one
    autograd node, its backward written out.

    Args:
        q (Tensor): Scaled per-head queries, (B, h, N, d).
        k (Tensor): Keys, (B, h, M, d).
        v (Tensor): Values, (B, h, M, d).
        mix (Tensor): The (h, h) head-mixing weight.
        mix_bias (Tensor, optional): Its (h, ) bias; cancels in the
            softmax, its gradient an exact zero.
        eps (float): The InstanceNorm epsilon.
        block (int, optional): Rows per tile (see :func:`launch_config`).
        launch (dict, optional): ``num_warps``, ``num_stages`` (see
            :func:`launch_config`), ``splits`` (of the query rows in the
            keys / values gradient kernel; default :func:`query_splits`).

    Returns:
        Tensor: (B, h, N, d), in the dtype of ``q``.
    """
    launch = _launch_options(launch, block)
    with torch.autocast(q.device.type, enabled=False):
        return EMSACore.apply(q, k, v, mix, mix_bias, eps, launch)


def softmax_moments(
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        block: Optional[int] = None,
        mix: Optional[torch.Tensor] = None,
        launch: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention with shared keys and each row's centred second moment, in
    one fused pass (differentiable in all inputs).

    With ``P = softmax(Q k^T)`` per (batch, head) and row (no scale):
    returns ``(P - 1/M) @ values`` and ``sum_m (P_nm - 1/M)^2`` per row,
    both in float32 (float64 for float64 inputs). Centred keys (each row of
    logits then has mean 0) keep the products' roundings small.

    Args:
        q (Tensor): The queries ``Q``, (B, H, N, C); with ``mix``, per-head
            queries, (B, H, N, d) with C = H d.
        keys (Tensor): Keys shared by the H heads, (B, M, C).
        values (Tensor): Values, (B, H, M, D).
        block (int, optional): Rows per tile (see :func:`launch_config`).
        mix (Tensor, optional): An (H, H) head-mixing weight ``W``: the
            queries are then ``Q_g = concat_j(W[g, j] q_j)``
            (:func:`~mmrest.backbones.kernels.mixed_queries`), formed
            here and again in the backward, so that the H times larger
            mixed queries are not kept for it.
        launch (dict, optional): The other launch options: ``num_warps``,
            ``num_stages`` (:func:`launch_config`), ``splits`` (see
            :func:`attention_core`).

    Returns:
        tuple[Tensor, Tensor]: (B, H, N, D) and (B, H, N).
    """
    return SoftmaxMoments.apply(q, keys, values,
                                _launch_options(launch, block), mix)
