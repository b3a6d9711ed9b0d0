# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The exact fast kernels of ResT and ResT v2, the switch that selects the
literal computation instead, and the one rule that decides when a fast path
may run.

* :func:`literal` / :func:`use_literal`: the switch. With it on, every
  module computes SPEC.md literally, the authors' operators in the
  authors' order (N x M attention maps, the 1x1 conv over heads and the
  InstanceNorm, BatchNorms as module calls, NCHW maps between the stages);
  the tests and the benchmarks measure the fast paths against it;
* :func:`fast_paths_allowed` / :func:`is_inference`: when a fast path may
  run (never with the switch on, never while a graph is recorded; the
  inference paths also need eval mode and no autograd);
* :func:`emsa_attention`: EMSA's attention core (``q k^T``, the 1x1 head
  mixing, softmax, InstanceNorm, ``@ v``) without N x M maps kept whole:
  query chunks, the InstanceNorm's mean known exactly (1/M), its variance
  accumulated chunk by chunk and its division applied after ``@ v``;
* :func:`linear`: oneDNN's fused linear (bias and GELU applied as the output
  is written) where nothing needs a gradient, on the CPU in float32;
* :func:`conv_norm`: an eval-mode BatchNorm folded into its convolution;
* :func:`checkpoint`: gradient checkpointing whose recomputation keeps the
  forward pass's setting of the switch.

Every kernel computes the same formula as the literal computation (each
module's literal branch, which the tests compare against), grouped
otherwise.
"""
import contextlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm

# Elements of one query chunk's attention logits (batch x heads x rows x M)
# per intra-op thread (up to 4) on the CPU. About 4 MB in float32 per
# thread: the chunk is mixed, normalised and multiplied by the values while
# it is in cache.
CHUNK_ELEMENTS = 1 << 20
# On a GPU the chunk only bounds memory (128 MB of float32 logits): at
# detection sizes most attentions are one chunk, a few large kernels.
GPU_CHUNK_ELEMENTS = 1 << 25
# Elements of one token chunk of the MLP's hidden activations per thread
# (CPU inference).
MLP_CHUNK_ELEMENTS = 1 << 20


def per_call(elements_per_thread: int) -> int:
    """A chunk size for all the intra-op threads that share the work: the
    same size per thread, and fewer, larger operations."""
    return elements_per_thread * min(4, max(1, torch.get_num_threads()))


def _chunk_elements(device: torch.device) -> int:
    """Logit elements per query chunk of the attention on ``device``."""
    if device.type == 'cpu':
        return per_call(CHUNK_ELEMENTS)
    return GPU_CHUNK_ELEMENTS


# The literal switch (see :func:`literal`). A module-level flag, as timm's
# ``use_fused_attn``: ``torch.compile`` guards on it, where it cannot trace
# a ``ContextVar`` and does not guard a ``threading.local``.
_use_literal = False


def use_literal() -> bool:
    """Whether the literal computation of SPEC.md is selected (see
    :func:`literal`)."""
    return _use_literal


@contextlib.contextmanager
def literal(enabled: bool = True):
    """Selects the literal computation of SPEC.md everywhere.

    Within the ``with`` block every ResT and ResT v2 module computes
    literally, the authors' operators in the authors' order: EMSA builds
    its N x M attention maps, mixes them with the 1x1 conv and
    instance-normalises them; ResT v2's attention builds
    ``softmax(q k^T) @ v`` explicitly; BatchNorms, linears and MLPs are
    plain module calls on all tokens at once; the maps between the stages
    are contiguous NCHW tensors, flattened to tokens and reshaped back.
    No fast path runs (:func:`fast_paths_allowed` is False): no oneDNN
    linear, no BatchNorm folding, no chunked attention, no one-head
    folding, no MLP chunking, no in-place update. Parameters, state-dict
    keys and outputs (up to float32 rounding) are those of the fast model:
    the tests and the benchmarks measure the fast paths against this
    computation.

    The switch is process-wide (not per thread) and restored on exit, also
    on an exception; ``literal(False)`` turns it off within a block.
    Gradient checkpointing recomputes each block under the setting of its
    forward pass (see :func:`checkpoint`), so a backward pass may run
    outside the block.

    Args:
        enabled (bool): Whether to select the literal computation within
            the block. Defaults to True.

    Example:
        >>> import torch
        >>> from mmrest import ResT
        >>> from mmrest.backbones import kernels
        >>> model = ResT(arch='lite').eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad(), kernels.literal():
        ...     literal_outs = model(x)
        >>> kernels.use_literal()
        False
    """
    global _use_literal
    previous = _use_literal
    _use_literal = bool(enabled)
    try:
        yield
    finally:
        _use_literal = previous


def checkpoint(function, *args):
    """``function(*args)`` with non-reentrant gradient checkpointing; its
    recomputation in the backward pass runs under the setting of the
    literal switch of the forward pass (:func:`literal`), so that it
    repeats the same operators wherever the backward pass runs.

    Args:
        function (callable): The function to checkpoint.
        *args: Its arguments.
    """
    if graph_capture():  # a compiled graph is recorded once, as it runs
        return cp.checkpoint(function, *args, use_reentrant=False)
    enabled = _use_literal

    def run(*inputs):
        with literal(enabled):
            return function(*inputs)

    return cp.checkpoint(run, *args, use_reentrant=False)


def graph_capture() -> bool:
    """Whether the forward is being recorded as a graph: ``torch.jit``
    tracing or scripting (ONNX export with TorchScript, mmengine's FLOP
    counter), ``torch.compile`` or ``torch.export`` (the dynamo ONNX
    exporter).

    A recorded graph must hold for every input size, so it gets no
    Python-level chunk loop, no buffer reuse and no CPU-only kernel: it
    gets the same exact formulas as plain tensor operations
    (:func:`_attention_chunk` over all queries at once).
    """
    compiler = getattr(torch, 'compiler', None)
    return bool(
        torch.jit.is_tracing() or torch.jit.is_scripting()
        or (compiler is not None and (
            compiler.is_compiling() or getattr(
                compiler, 'is_exporting', lambda: False)())))


def token_map(x: torch.Tensor, hw_shape) -> torch.Tensor:
    """Tokens (B, H * W, C) as the channels-last (B, C, H, W) map of
    ``hw_shape``: a view, no copy.

    Under ``torch.compile`` the map is a contiguous (NCHW) copy, the same
    values: Inductor cannot order the strides of a view that it keeps for
    the backward pass when the sizes are symbolic (automatic dynamic
    shapes after a second input size; torch 2.13 fails with ``cannot
    determine truth value of Relational``), and it drops a copy in the
    view's own layout.

    Args:
        x (Tensor): Tokens, (B, H * W, C).
        hw_shape (Sequence[int]): ``(H, W)``.
    """
    B, _, C = x.shape
    out = x.reshape(B, *hw_shape, C).permute(0, 3, 1, 2)
    if is_compiling():
        return out.contiguous()
    return out


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing (not ``torch.export``: the
    exported graphs, ONNX's included, keep their operators)."""
    compiler = getattr(torch, 'compiler', None)
    return compiler is not None and compiler.is_compiling() and not getattr(
        compiler, 'is_exporting', lambda: False)()


def fast_paths_allowed() -> bool:
    """Whether a fast path may run at all: the literal switch is off (see
    :func:`literal`) and no graph is being recorded (see
    :func:`graph_capture`).

    The one rule every fast path obeys; the inference paths add eval mode
    and no autograd (:func:`is_inference`).
    """
    return not (_use_literal or graph_capture())


def is_inference(module: nn.Module) -> bool:
    """Eval mode and no autograd, in eager mode: dropout is off and
    nothing is saved for a backward pass, so buffers may be reused and work
    may be reordered (only where :func:`fast_paths_allowed`)."""
    return not (module.training or torch.is_grad_enabled()) \
        and fast_paths_allowed()


def cpu_float32(x: torch.Tensor) -> bool:
    """Float32 on the CPU outside autocast: where the cache-sized chunks of
    the MLP and oneDNN's fused linear pay off."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu'))


def checked_linear_op(op):
    """``op`` if it computes, with the arguments :func:`linear` passes
    (input, weight, bias, post-op, its scalars, its algorithm), ``F.linear``
    and ``gelu(F.linear)`` on a small probe; otherwise None."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((3, 8), (5, 8), (5, )))
    try:
        with torch.no_grad():
            plain = op(x, w, b, 'none', [], '')
            gelu = op(x, w, b, 'gelu', [], 'none')
            ok = (torch.allclose(plain, F.linear(x, w, b), atol=1e-5)
                  and torch.allclose(gelu, F.gelu(F.linear(x, w, b)),
                                     atol=1e-5))
    except (RuntimeError, TypeError, ValueError):
        return None
    return op if ok else None


def _onednn_linear_op():
    """oneDNN's linear kernel, or None.

    ``torch.ops.mkldnn._linear_pointwise`` is a private operator, called by
    position: it is used only if it exists and passes
    :func:`checked_linear_op`, so a torch that renames it or changes its
    signature gets ``F.linear`` instead.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return checked_linear_op(op)


ONEDNN_LINEAR = _onednn_linear_op()


def is_exact_gelu(act: nn.Module) -> bool:
    """Whether ``act`` is the exact (erf) GELU that :func:`linear` can fuse
    (``gelu=True``); any other activation is applied as its module."""
    return type(act) is nn.GELU and act.approximate == 'none'


def linear(x: torch.Tensor, weight: torch.Tensor,
            bias: Optional[torch.Tensor] = None,
            gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then the exact, erf GELU when ``gelu``).

    When nothing needs a gradient, on the CPU in float32, this calls
    oneDNN's linear kernel, which adds the bias and applies the GELU while
    it writes the output. ``F.linear`` first fills the output with the bias
    and then accumulates the product into it, and the GELU is another pass:
    on ResT's many-token, few-channel linears those passes cost as much as
    the product itself. Same formula, no approximation. The kernel has no
    autograd, knows no autocast, and a recorded graph must see the literal
    operators (see :func:`graph_capture`), so otherwise (and with the
    literal switch on, see :func:`fast_paths_allowed`) it is ``F.linear``.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    if (ONEDNN_LINEAR is not None and not needs_grad
            and fast_paths_allowed() and cpu_float32(x)
            and weight.dtype == torch.float32
            and torch.backends.mkldnn.enabled):
        if gelu:
            return ONEDNN_LINEAR(x, weight, bias, 'gelu', [], 'none')
        return ONEDNN_LINEAR(x, weight, bias, 'none', [], '')
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


class MixHeads(torch.autograd.Function):
    """EMSA's 1x1 convolution over heads on logits ``attn`` (B, h, n, M):
    ``out[b, i] = sum_j mix[i, j] attn[b, j] + bias[i]``, one matrix
    product, with a backward whose shapes suit every BLAS.

    As autograd derives it from ``baddbmm``, the gradient of ``mix`` is an
    (h, n M) by (n M, h) product: a long reduction into a tiny (h, h)
    result, which cuBLAS runs as a batched matrix-vector kernel with no
    parallelism along the reduction (on an H200, 72% of ResT-Small's
    training step at 800x1344, docs/results/gpu_profile_h200_before.json).
    Here it is one (h, M) by (M, h) product per query row, batched over the
    rows, and summed: the same sum, grouped otherwise.
    """

    @staticmethod
    def forward(ctx, attn, mix, bias):
        ctx.save_for_backward(attn, mix)
        return mix_heads_baddbmm(attn, mix, bias)

    @staticmethod
    def backward(ctx, grad):
        attn, mix = ctx.saved_tensors
        b, h, n, m = attn.shape
        grad = grad.contiguous()
        grad_attn = grad_mix = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_attn = torch.matmul(mix.t(), grad.view(b, h, n * m))
            grad_attn = grad_attn.view(b, h, n, m)
        if ctx.needs_input_grad[1]:
            # per batch item: (n, h, M) @ (n, M, h), strided views, no copy
            grad_mix = sum(
                torch.bmm(grad[i].transpose(0, 1),
                          attn[i].permute(1, 2, 0)).sum(0) for i in range(b))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_attn, grad_mix, grad_bias


def mix_heads(attn: torch.Tensor, mix: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
    """The 1x1 convolution over heads of logits (B, h, n, M), as one
    ``baddbmm`` (its bias added inside the product, so that it keeps its
    exact, zero, gradient through the softmax).

    On a GPU, outside a recorded graph, through :class:`MixHeads`, whose
    backward cuBLAS runs fast; on the CPU MKL runs autograd's own backward
    of ``baddbmm`` faster (measured at the CPU's chunk sizes).
    """
    if attn.device.type != 'cpu' and not graph_capture():
        return MixHeads.apply(attn, mix, bias)
    if is_compiling():
        return mix_heads_pointwise(attn, mix, bias)
    return mix_heads_baddbmm(attn, mix, bias)


def mix_heads_pointwise(attn: torch.Tensor, mix: torch.Tensor,
                        bias: torch.Tensor) -> torch.Tensor:
    """:func:`mix_heads` as ``bias[i] + sum_j mix[i, j] attn[:, j]``, one
    multiply-add per head (2 to 8), for ``torch.compile``: Inductor fuses
    them with the softmax around them, and no view of a product is kept
    for the backward pass (with symbolic sizes, torch 2.13's Inductor
    cannot order the strides of one, see :func:`token_map`)."""
    h = attn.shape[1]
    out = bias.view(1, h, 1, 1)
    for j in range(h):
        out = out + mix[:, j].view(1, h, 1, 1) * attn[:, j:j + 1]
    return out


def mix_heads_baddbmm(attn: torch.Tensor, mix: torch.Tensor,
                      bias: torch.Tensor) -> torch.Tensor:
    """:func:`mix_heads` as one ``baddbmm``, with autograd's own backward
    (the forward of :class:`MixHeads` too)."""
    b, h, n, m = attn.shape
    return torch.baddbmm(bias.view(1, h, 1), mix.expand(b, h, h),
                         attn.reshape(b, h, n * m)).view(b, h, n, m)


def _attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mix: Optional[torch.Tensor],
                     mix_bias: Optional[torch.Tensor], attn_drop: float,
                     training: bool):
    """One query chunk of :func:`emsa_attention` (with autograd).

    Returns the centred attention times the values and the chunk's sum of
    squared centred probabilities per (batch, head).
    """
    attn = q @ k.transpose(-2, -1)                        # (B, h, n, M)
    if mix is not None:
        attn = mix_heads(attn, mix, mix_bias)
    # softmax minus its known mean 1 / M: the InstanceNorm's centring.
    centred = attn.softmax(dim=-1) - 1.0 / attn.shape[-1]
    sq_sum = centred.square().sum(dim=(2, 3))
    if attn_drop > 0 and training:
        centred = F.dropout(centred, attn_drop, training=True)
    return centred @ v, sq_sum


def _attention_no_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mix: torch.Tensor, eps: float,
                       chunk_elements: int) -> torch.Tensor:
    """The multi-head core of :func:`emsa_attention` without autograd.

    The computation of :func:`_attention_chunk` over query chunks, with as
    few operations per chunk as possible and no allocation: two buffers of
    one chunk's logits serve every chunk, in place. The head mixing's bias
    is left out (a softmax cannot see it), the centred probabilities' sum
    of squares is kept per query row (norms over M, summed at the end) and
    each chunk's ``@ v`` is written straight into the output. With B == 1
    the output is laid out as (B, N, h, d), so merging the heads back into
    tokens copies nothing.
    """
    B, h, N, d = q.shape
    M = k.shape[2]
    bh = B * h
    q = q.reshape(bh, N, d)  # a view when B == 1
    k_t = k.reshape(bh, M, d).transpose(1, 2)
    v = v.reshape(bh, M, d)
    mix = mix.expand(B, h, h)
    rows = max(1, min(N, chunk_elements // max(1, bh * M)))
    logits = q.new_empty(bh * rows * M)
    probs = q.new_empty(bh * rows * M)
    row_norms = q.new_empty(bh, N)
    if B == 1:
        out = q.new_empty(N, h, d)
        out_heads = out.transpose(0, 1)                   # (h, N, d) view
    else:
        out_heads = q.new_empty(bh, N, d)
    for start in range(0, N, rows):
        n = min(rows, N - start)
        size = bh * n * M
        attn = torch.bmm(
            q[:, start:start + n], k_t, out=logits[:size].view(bh, n, M))
        attn = torch.bmm(
            mix, attn.view(B, h, n * M),
            out=probs[:size].view(B, h, n * M)).view(bh, n, M)
        torch.softmax(attn, dim=-1, out=attn)
        attn.sub_(1.0 / M)
        torch.linalg.vector_norm(
            attn, dim=-1, out=row_norms[:, start:start + n])
        torch.bmm(attn, v, out=out_heads[:, start:start + n])
    var = row_norms.square_().sum(dim=-1).div_(N * M)    # biased, as IN
    inv_std = var.add_(eps).rsqrt_()
    out_heads.mul_(inv_std.view(bh, 1, 1))
    if B == 1:
        return out_heads.unsqueeze(0)
    return out_heads.view(B, h, N, d)


def emsa_attention(q: torch.Tensor,
                   k: torch.Tensor,
                   v: torch.Tensor,
                   mix: Optional[torch.Tensor] = None,
                   mix_bias: Optional[torch.Tensor] = None,
                   attn_drop: float = 0.,
                   training: bool = False,
                   eps: float = 1e-5,
                   chunk_elements: Optional[int] = None) -> torch.Tensor:
    """EMSA's attention core, computed exactly without N x M intermediates.

    The literal computation (SPEC, EMSA steps 4-6) is::

        A = Conv1x1(q @ k^T)            # mixes heads, with a bias
        A = InstanceNorm(softmax(A))    # per head over all N x M entries
        out = A @ v

    Three exact identities remove its cost:

    * the 1x1 conv is a matrix product over heads (its bias, constant along
      the softmax axis, changes nothing, and is added inside that product
      for free so that it keeps its exact, zero, gradient);
    * every softmax row sums to 1, so the InstanceNorm mean is exactly
      ``1 / M`` and its variance is ``mean((P - 1/M)^2)``, a sum that can
      be accumulated query chunk by query chunk;
    * the InstanceNorm's division is one scalar per (batch, head), so it
      commutes with ``@ v`` and is applied to the small (N, d) result.

    Queries are processed in chunks whose logits stay in cache (on a GPU,
    chunks only bound the memory), and during training each chunk is
    recomputed in the backward pass instead of being stored, so no N x M
    matrix is ever kept. Without autograd (and without dropout) the chunks
    reuse two preallocated buffers in place and the mixing bias is left out
    altogether (see :func:`_attention_no_grad`).
    While a graph is recorded (tracing, ONNX export, ``torch.compile``)
    all queries form one chunk, so the graph holds for any input size.

    The multi-head core always runs in at least float32, also under
    autocast: the InstanceNorm divides by the small spread of the
    probabilities and so amplifies any rounding of the logits. The inputs
    keep their dtype (the projections around the core run in the autocast
    dtype) and the output is returned in the dtype of ``q``. With one head
    there is no transform and no InstanceNorm: the core is plain softmax
    attention, one fused kernel in the inputs' dtype (its products
    accumulate in float32; in float16 on a GPU, a flash-attention kernel).

    Args:
        q (Tensor): Queries already multiplied by the scale, (B, h, N, d).
        k (Tensor): Keys, (B, h, M, d).
        v (Tensor): Values, (B, h, M, d).
        mix (Tensor, optional): The (h, h) weight of the head-mixing 1x1
            convolution; None for the one-head form (softmax only).
        mix_bias (Tensor, optional): The (h, ) bias of that convolution.
        attn_drop (float): Dropout on the normalised attention.
        training (bool): Whether dropout is active.
        eps (float): The InstanceNorm epsilon.
        chunk_elements (int, optional): Logit elements per query chunk.
            Defaults to ``CHUNK_ELEMENTS`` per intra-op thread on the CPU
            and ``GPU_CHUNK_ELEMENTS`` elsewhere.

    Returns:
        Tensor: The attention output, (B, h, N, d), in the dtype of ``q``.
    """
    if mix is None:  # one head: plain softmax attention, in the inputs' dtype
        return F.scaled_dot_product_attention(
            q, k.contiguous(), v.contiguous(),
            dropout_p=attn_drop if attn_drop > 0 and training else 0.,
            scale=1.0)
    dtype = q.dtype
    core = torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(core), k.to(core), v.to(core)
        if mix is not None:
            mix = mix.to(core)
            mix_bias = mix.new_zeros(mix.shape[0]) if mix_bias is None \
                else mix_bias.to(core)
        out = _emsa_core(q, k, v, mix, mix_bias, attn_drop, training, eps,
                         chunk_elements)
    return out.to(dtype)


def _emsa_core(q, k, v, mix, mix_bias, attn_drop, training, eps,
               chunk_elements):
    """:func:`emsa_attention` on tensors of one dtype, outside autocast."""
    dropout = attn_drop > 0 and training
    B, h, N, _ = q.shape
    M = k.shape[2]
    if graph_capture():  # one chunk: no size is baked into the graph
        out, sq_sum = _attention_chunk(q, k, v, mix, mix_bias, attn_drop,
                                       training)
        inv_std = torch.rsqrt(sq_sum / (N * M) + eps)
        return out * inv_std[:, :, None, None]

    if chunk_elements is None:
        chunk_elements = _chunk_elements(q.device)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, mix, mix_bias))
    if not (needs_grad or dropout):
        return _attention_no_grad(q, k, v, mix, eps, chunk_elements)

    rows = max(1, chunk_elements // max(1, B * h * M))
    outs, sq_sum = [], 0.
    for q_chunk in q.split(rows, dim=2):
        if needs_grad:
            out, sq = cp.checkpoint(
                _attention_chunk, q_chunk, k, v, mix, mix_bias, attn_drop,
                training, use_reentrant=False)
        else:
            out, sq = _attention_chunk(q_chunk, k, v, mix, mix_bias,
                                       attn_drop, training)
        outs.append(out)
        sq_sum = sq_sum + sq
    var = sq_sum / (N * M)                                 # biased, as IN
    inv_std = torch.rsqrt(var + eps)[:, :, None, None]
    return torch.cat(outs, dim=2) * inv_std


def conv_norm(conv: nn.Conv2d, norm: nn.Module,
               x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``; an eval-mode BatchNorm is folded into the conv.

    A BatchNorm that uses its running statistics is an affine map per
    channel, so it is folded into the convolution's weight and bias (the
    same function, one pass over the feature map fewer). Gradients flow
    through the folding to the conv and norm parameters alike. Only where
    :func:`fast_paths_allowed`: tools that count FLOPs on a trace see the
    literal sequence of operators. The folded conv is ``F.conv2d`` with the
    module's own arguments (zero padding only).
    """
    if not (isinstance(norm, _BatchNorm) and not norm.training
            and norm.running_mean is not None and fast_paths_allowed()
            and conv.padding_mode == 'zeros'):
        return norm(conv(x))
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding,
                    conv.dilation, conv.groups)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is dense in (NCHW where it is both or none)."""
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def batch_norm_call(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, the module call of the literal computation, its
    gradient laid out as ``x`` is.

    Works around a bug of PyTorch's CPU ``native_batch_norm_backward`` (seen
    in torch 2.13): its fast path runs when input and gradient are each
    dense in some format and ``suggest_memory_format()`` names the same one
    for both, then reads both buffers in that format. For a batch of one, a
    channels-last gradient whose batch stride is not ``C * H * W`` (legal
    for a dimension of size one; what reaches a patch embedding from the
    tokens of the literal NCHW layout) is suggested NCHW: it is read in the
    wrong order, and the input, weight and bias gradients are wrong (eval
    and train modes) while the output is right. A gradient dense in the
    input's own layout avoids this; the forward computation is untouched.

    Args:
        norm (nn.Module): The BatchNorm.
        x (Tensor): Its input.
    """
    out = norm(x)
    if out.requires_grad:
        layout = _layout_of(x)
        out.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return out
