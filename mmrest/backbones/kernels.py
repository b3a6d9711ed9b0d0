# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The exact fast kernels of ResT and ResT v2, the switch that selects the
literal computation instead, and the rules that decide when a fast path
may run.

The rules (written once here, obeyed by every module of both families):

1. **Literal or fast.** A module computes literally, the authors' operators
   in the authors' order, when :func:`use_literal` says so for it: the
   process-wide switch :func:`literal` is on, or the model was made literal
   by :func:`to_literal` (a per-module attribute ``literal``, read on each
   call as timm reads ``fused_attn``). Otherwise it takes its fast path.
2. **No fast path in a recorded graph.** :func:`fast_paths_allowed` is
   False with the literal computation and while a graph is recorded
   (:func:`graph_capture`: tracing, scripting, ``torch.compile``,
   ``torch.export``): such graphs get the exact formulas as plain tensor
   operations, valid for every input size.
3. **The inference path.** :func:`is_inference` (eval mode, no autograd,
   fast paths allowed, no autocast), on any device and dtype: nothing is
   saved for a backward pass and no dtype is chosen per operator, so the
   modules may write buffers in place, reorder work and run the MLP over
   chunks of tokens. Which kernel then runs is the kernel's own choice by
   device and dtype (:func:`linear`'s oneDNN kernel and :func:`run_conv`'s
   NCHW copy only on the CPU in float32, :func:`cpu_float32`).
4. **Gradient checkpointing.** A block built with ``with_cp`` runs under
   :func:`checkpoint` wherever autograd records (``torch.is_grad_enabled()``
   and not the inference path), in train and eval mode alike
   (:class:`~mmrest.backbones.base.PreNormBlock`). Non-reentrant
   checkpointing needs no input that requires a gradient, so a block
   behind a frozen stage is checkpointed too (mmdet's ``x.requires_grad``
   gate dates from reentrant checkpointing, which does). The recomputation
   keeps the forward pass's setting of the switch.

The pieces:

* :func:`literal` / :func:`use_literal` / :func:`to_literal`: the switch,
  process-wide or per model. With it on, every module computes
  docs/network.md literally (N x M attention maps, the 1x1 conv over heads
  and the InstanceNorm, BatchNorms as module calls, NCHW maps between the
  stages); the tests and the benchmarks measure the fast paths against it;
* :func:`emsa_attention`: EMSA's attention core (``q k^T``, the 1x1 head
  mixing, softmax, InstanceNorm, ``@ v``) without N x M maps kept whole:
  query chunks, the InstanceNorm's mean known exactly (1/M), its variance
  accumulated chunk by chunk and its division applied after ``@ v``; the
  centred probabilities without cancellation (:func:`centred_softmax_`,
  with autograd :class:`CentredSoftmax`);
* :func:`linear`: oneDNN's fused linear (bias and GELU applied as the output
  is written) where nothing needs a gradient, on the CPU in float32, for up
  to ``ONEDNN_MAX_IN_FEATURES`` input features;
* :func:`add_residual_mlp_`: the MLP over chunks of tokens, added to them
  in place (the inference path of both families' blocks);
* :func:`conv_norm`: an eval-mode BatchNorm folded into its convolution;
  :func:`run_conv`: dense convolutions of channels-last maps on NCHW
  copies in inference (oneDNN's NCHW kernel is the more accurate);
* :func:`checkpoint`: gradient checkpointing whose recomputation keeps the
  forward pass's setting of the switch.

Every kernel computes the same formula as the literal computation (each
module's literal branch, which the tests compare against), grouped
otherwise.
"""
import contextlib
import copy
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils import torch_compat
from .mixed_heads import centred, mixed_queries

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


def use_literal(module: Optional[nn.Module] = None) -> bool:
    """Whether the literal computation of docs/network.md is selected: by
    the process-wide switch (:func:`literal`) or, for ``module``, by
    :func:`to_literal` (its attribute ``literal``)."""
    return _use_literal or getattr(module, 'literal', False) is True


@contextlib.contextmanager
def literal(enabled: bool = True):
    """Selects the literal computation of docs/network.md everywhere.

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
    on an exception; ``literal(False)`` turns it off within a block (a
    model made literal by :func:`to_literal` stays literal).
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


def to_literal(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """The same model (a copy by default) computed literally in every call.

    Every module of ``model`` gets the attribute ``literal = True``, which
    :func:`use_literal` reads on each call (as timm's attention modules read
    ``fused_attn``): the returned model is ``model`` in every other respect
    (class, parameters, buffers, modes, state-dict keys, ``.double()``,
    ``.train()``), and so is each of its modules called on its own. Its
    checkpointed blocks recompute literally too, wherever the backward
    pass runs. To compute a model literally for a while, ``with
    literal():`` is enough.

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
    for module in model.modules():
        module.literal = True
    return model


def is_literal(model: nn.Module) -> bool:
    """Whether ``model`` was made literal by :func:`to_literal`."""
    return getattr(model, 'literal', False) is True


def checkpoint(function, *args):
    """``function(*args)`` with non-reentrant gradient checkpointing; its
    recomputation in the backward pass runs under the settings of the
    forward pass, the literal switch (:func:`literal`) and the EMSA cores
    (:func:`use_emsa_core`), so that it repeats the same operators
    wherever the backward pass runs.

    Args:
        function (callable): The function to checkpoint.
        *args: Its arguments.
    """
    if graph_capture():  # a compiled graph is recorded once, as it runs
        return cp.checkpoint(function, *args, use_reentrant=False)
    enabled, cores = _use_literal, _emsa_core_names

    def run(*inputs):
        with literal(enabled), _selected_cores(cores):
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
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch_compat.is_compiling() or torch_compat.is_exporting())


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


def crop_to_tokens(x: torch.Tensor, hw_shape) -> torch.Tensor:
    """The top-left ``hw_shape`` crop of the map ``x`` (B, C, H', W'), as
    (B, H * W, C) tokens.

    Eagerly a reshape of the cropped channels-last view: no copy when the
    crop keeps the whole map and ``x`` is channels-last. Under
    ``torch.compile`` the rows and columns are gathered by index and copied
    into a new (B, H, W, C) tensor: with symbolic sizes, the reshape of the
    view asks whether it is contiguous, i.e. whether ``W == W'``, and
    Inductor slices the gradient of a slice again with ``min(W, W')``
    settled at the compiled size; either is a guard, so each input size
    that answers it otherwise would recompile (ResT v2's value branch,
    ``W' = s ceil(W / s)``). The gather and the copy ask nothing.

    Args:
        x (Tensor): The map, (B, C, H', W') with ``H' >= H``, ``W' >= W``.
        hw_shape (Sequence[int]): ``(H, W)``.
    """
    B, C = x.shape[:2]
    H, W = hw_shape
    if not is_compiling():
        return x.permute(0, 2, 3, 1)[:, :H, :W].reshape(B, H * W, C)
    # rows and columns gathered by index, not sliced: the gradient of a
    # slice is a slice-scatter, which Inductor's re-inplacing pass slices
    # again with its size min(W, W') settled by the compiled size's hint,
    # guarding W' == W where W was a multiple of s
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    crop = x.index_select(2, rows).index_select(3, cols)
    out = x.new_empty(B, H, W, C)
    out.copy_(crop.permute(0, 2, 3, 1))
    return out.view(B, H * W, C)


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing (not ``torch.export``: the
    exported graphs, ONNX's included, keep their operators)."""
    return torch_compat.is_compiling() and not torch_compat.is_exporting()


def fast_paths_allowed(module: Optional[nn.Module] = None) -> bool:
    """Whether a fast path may run at all (rules 1 and 2 of this module):
    the literal computation is not selected (:func:`use_literal`, for
    ``module`` where one is given) and no graph is being recorded
    (:func:`graph_capture`)."""
    return not (use_literal(module) or graph_capture())


def is_inference(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` takes its inference path on input ``x`` (rule 3):
    eval mode, no autograd, fast paths allowed (:func:`fast_paths_allowed`)
    and no autocast on ``x``'s device. Dropout is off, nothing is saved for
    a backward pass and every operator keeps its inputs' dtype, so buffers
    may be written in place and work reordered, on any device and dtype."""
    return not (module.training or torch.is_grad_enabled()) \
        and fast_paths_allowed(module) \
        and not torch_compat.is_autocast_enabled(x.device.type)


def cpu_float32(x: torch.Tensor) -> bool:
    """Float32 on the CPU outside autocast: where oneDNN's fused linear
    (:func:`linear`) and the NCHW convolutions (:func:`run_conv`) run."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch_compat.is_autocast_enabled('cpu'))


def sdpa(q: torch.Tensor,
         k: torch.Tensor,
         v: torch.Tensor,
         attn_mask: Optional[torch.Tensor] = None,
         dropout_p: float = 0.,
         scale: Optional[float] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; while exporting to ONNX with an
    explicit ``scale``, the same formula written out,
    ``softmax(q k^T scale + mask) @ v``, the operators the exporters make
    of SDPA anyway. Torch's SDPA would fail or mislead there: torch 2.1's
    TorchScript exporter fails on the explicit scale, every torch's before
    opset 14 (mmdeploy's ONNX Runtime configs export at opset 11), and
    mmdeploy 1.3's rewrite of SDPA for its exports divides the logits by
    ``scale`` instead of multiplying them (ResT v2's d**-0.5 became
    d**0.5)."""
    if scale is not None and torch.onnx.is_in_onnx_export():
        attn = (q * scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(dim=-1)
        if dropout_p > 0:
            attn = F.dropout(attn, dropout_p)
        return attn @ v
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


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
            ok = (
                torch.allclose(plain, F.linear(x, w, b), atol=1e-5)
                and torch.allclose(gelu, F.gelu(F.linear(x, w, b)), atol=1e-5))
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


# The longest input (reduction) of a linear run by oneDNN (see :func:`linear`).
ONEDNN_MAX_IN_FEATURES = 192


def linear(x: torch.Tensor,
           weight: torch.Tensor,
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

    Only for up to ``ONEDNN_MAX_IN_FEATURES`` input features: oneDNN
    accumulates each output over all of them in one chain, where MKL's
    ``F.linear`` blocks longer sums, and from 224 input features on
    oneDNN's float32 error against float64 was 1.4x (256, 384) to 1.5x
    (768) MKL's (below, the two are equal; AMD EPYC, torch 2.13). These are
    ResT's wide stages, whose few tokens and long products make the extra
    bias and GELU passes cheap.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    if (ONEDNN_LINEAR is not None and not needs_grad
            and x.shape[-1] <= ONEDNN_MAX_IN_FEATURES and fast_paths_allowed()
            and cpu_float32(x) and weight.dtype == torch.float32
            and torch.backends.mkldnn.enabled):
        if gelu:
            return ONEDNN_LINEAR(x, weight, bias, 'gelu', [], 'none')
        return ONEDNN_LINEAR(x, weight, bias, 'none', [], '')
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def add_drop_path(x: torch.Tensor, branch: torch.Tensor,
                  drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(branch)``, a residual block's sum, with mmcv's
    ``DropPath`` (stochastic depth) as one operator on the large tensors.

    ``DropPath`` draws ``u`` per sample and returns
    ``branch / keep * floor(keep + u)``, which the block adds to ``x``:
    three passes over the tokens (a division, a product, a sum) and, in the
    backward, a product and a division besides the sum's gradient. Here
    the same draws (the same random numbers, in ``branch``'s dtype, so
    that the literal path drops the same samples) make a per-sample factor
    ``floor(keep + u) / keep`` (0 or ``1 / keep``, in ``x``'s dtype), and
    ``torch.addcmul(x, branch, factor)`` is the sum, in ``x``'s dtype as
    ``x + branch`` is, the branch divided by ``keep`` without rounding to
    its own dtype first. Anything but a training ``DropPath`` with a rate
    is called as it is (``nn.Identity``, and ``DropPath`` in eval mode or
    with rate 0, return the branch).

    Args:
        x (Tensor): The residual, (B, ...).
        branch (Tensor): The block's branch, shaped as ``x``.
        drop_path (nn.Module): The block's ``drop_path``.

    Returns:
        Tensor: ``x + drop_path(branch)``.
    """
    if not (isinstance(drop_path, DropPath) and drop_path.training
            and drop_path.drop_prob > 0):
        return x + drop_path(branch)  # DropPath then draws nothing
    keep = 1 - drop_path.drop_prob
    shape = (branch.shape[0], ) + (1, ) * (branch.ndim - 1)
    kept = torch.rand(
        shape, dtype=branch.dtype, device=branch.device).add_(keep).floor_()
    factor = torch.div(kept, keep, out=x.new_empty(shape))
    with torch.autocast(x.device.type, enabled=False):  # no casts of branch
        return torch.addcmul(x, branch, factor)


def add_residual_mlp_(tokens: torch.Tensor, norm: nn.Module,
                      mlp: nn.Module) -> torch.Tensor:
    """``tokens += mlp(norm(tokens))`` in place, over chunks of tokens
    (eval-mode inference without autograd).

    The MLP (``fc1``, ``act``, ``fc2``) acts on each token alone, so it runs
    over chunks of ``MLP_CHUNK_ELEMENTS`` hidden activations per thread:
    they never exist whole, stay in cache and reuse memory; each chunk's
    LayerNorm reads its tokens before they are updated. ``fc1`` and the
    exact GELU are one :func:`linear`. ``fc2`` (bias included, as
    ``F.linear``) writes into a chunk-sized buffer that is then added to
    the tokens: accumulating the product into the tokens themselves
    (``addmm_``) adds each of MKL's partial sums over the 4C hidden
    channels to the large residual, one rounding at the residual's scale
    per block, and made ResT v2's stage 3 and 4 outputs 1.06x to 1.08x as
    far from float64 as the literal ``x + fc2(...)``.

    Args:
        tokens (Tensor): (B, N, C) tokens, contiguous; updated in place.
        norm (nn.Module): The LayerNorm before the MLP.
        mlp (nn.Module): A module with ``fc1``, ``act`` and ``fc2``.

    Returns:
        Tensor: ``tokens``.
    """
    fc1, fc2 = mlp.fc1, mlp.fc2
    flat = tokens.view(-1, tokens.shape[-1])
    rows = max(1, per_call(MLP_CHUNK_ELEMENTS) // fc1.out_features)
    gelu = is_exact_gelu(mlp.act)  # fused in the linear
    weight_t = fc2.weight.t()
    out = flat.new_empty(min(rows, flat.shape[0]), flat.shape[1])
    for chunk in flat.split(rows):
        hidden = linear(norm(chunk), fc1.weight, fc1.bias, gelu=gelu)
        if not gelu:
            hidden = mlp.act(hidden)
        part = out[:chunk.shape[0]]
        if fc2.bias is None:
            torch.mm(hidden, weight_t, out=part)
        else:
            torch.addmm(fc2.bias, hidden, weight_t, out=part)
        chunk.add_(part)
    return tokens


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
                torch.bmm(grad[i].transpose(0, 1), attn[i].permute(
                    1, 2, 0)).sum(0) for i in range(b))
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
    return torch.baddbmm(
        bias.view(1, h, 1), mix.expand(b, h, h),
        attn.reshape(b, h, n * m)).view(b, h, n, m)


def _attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mix: Optional[torch.Tensor], attn_drop: float,
                     training: bool):
    """One query chunk of :func:`emsa_attention` (with autograd).

    The head mixing's bias is left out: it is constant along each softmax
    row and cancels there, while added to the logits it would round away
    their low bits, which the InstanceNorm amplifies (the authors
    initialise it to zero, but a bias of 1 against logits of 1e-3 costs
    them 10 of their 24 bits).

    Returns the centred attention times the values and the chunk's sum of
    squared centred probabilities per (batch, head).
    """
    attn = q @ k.transpose(-2, -1)  # (B, h, n, M)
    if mix is not None:
        attn = mix_heads(attn, mix, mix.new_zeros(mix.shape[0]))
    # softmax minus its known mean 1 / M: the InstanceNorm's centring,
    # without cancellation where no graph is recorded (plain operators
    # there, which every exporter and compiler takes)
    if graph_capture():
        centred = attn.softmax(dim=-1) - 1.0 / attn.shape[-1]
    else:
        centred = CentredSoftmax.apply(attn)
    sq_sum = centred.square().sum(dim=(2, 3))
    if attn_drop > 0 and training:
        centred = F.dropout(centred, attn_drop, training=True)
    return centred @ v, sq_sum


def centred_softmax_(logits: torch.Tensor,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(logits, -1) - 1 / M`` in place, without cancellation.

    EMSA's InstanceNorm centres the probabilities of each row, which lie
    close to their mean ``1 / M`` when the attention is spread out, and
    divides by their small spread. Computed as ``softmax - 1 / M`` (or as
    the authors do, softmax then InstanceNorm), each probability's rounding
    error (a few units of float32 epsilon relative to ``1 / M``, from the
    ``exp`` and the division) survives the subtraction while the centred
    value is much smaller, and the division by the spread amplifies it:
    with the authors' initialisation this is nearly all of the float32
    error of a ResT (measured with ``tools/precision_report.py``).

    Here, with any shift ``c`` per row, ``e = exp(x - c)``, ``z = e - 1``
    and ``S = sum e = M + sum z``, the same value is::

        softmax(x) - 1 / M = (e - mean e) / S = (z - mean z) / S.

    ``z = expm1(x - c)`` is accurate relative to itself however small, and
    ``z - mean z`` cancels nothing of size ``1 / M``, so on a spread-out row
    the centred values keep float32 accuracy relative to themselves. ``c``
    is ``max(mean x, max x - log M)``: both are lower bounds of the log of
    the mean of ``exp(x)``, so ``M <= S`` (the ``- 1`` of a small ``e``
    costs no more than ``- 1 / M`` does) and ``e <= M`` (no overflow); on
    a spread-out row ``c`` is the mean. The same formula, no approximation;
    seven passes over the row (mean, max, subtract, expm1, sum, subtract,
    scale) against softmax's three and the subtraction.

    Args:
        logits (Tensor): (..., M) logits, overwritten unless ``out`` is
            given.
        out (Tensor, optional): Where to write the result instead (same
            shape and dtype; ``logits`` is then left as it is).

    Returns:
        Tensor: ``out`` (default ``logits``), holding the centred
        probabilities.
    """
    M = logits.shape[-1]
    shift = torch.maximum(
        logits.mean(dim=-1, keepdim=True),
        logits.amax(dim=-1, keepdim=True).sub_(math.log(M)))
    out = logits if out is None else out
    torch.expm1(torch.sub(logits, shift, out=out), out=out)  # z = e - 1
    excess = out.sum(dim=-1, keepdim=True)  # S - M
    inv_sum = (excess + M).reciprocal_()  # 1 / S
    # (z - excess / M) / S (two in-place passes: a broadcasting addcmul
    # is three times slower on the CPU)
    return out.sub_(excess.div_(M)).mul_(inv_sum)


class CentredSoftmax(torch.autograd.Function):
    """:func:`centred_softmax_` with autograd, out of place: the centring of
    the training core's chunks (:func:`_attention_chunk`).

    Its gradient is the softmax's, ``P * (g - sum(g * P))`` with
    ``P = centred + 1 / M`` (the constant's gradient is zero). Computed
    as ``softmax - 1 / M``, the forward's cancellation error (see
    :func:`centred_softmax_`) reached the gradients too, through the
    InstanceNorm's variance and the product with the values, which the
    backward pass recomputes from it: on torch 2.1.2's CPU kernels some
    parameters' gradients were up to 28 times the literal path's error
    (docs/testing.md, the oldest stack). Logits are not overwritten: they may
    be a view made inside another autograd function (:class:`MixHeads`),
    which autograd forbids to modify in place.
    """

    @staticmethod
    def forward(ctx, logits):
        centred = centred_softmax_(logits, out=torch.empty_like(logits))
        ctx.save_for_backward(centred)
        return centred

    @staticmethod
    def backward(ctx, grad):
        centred, = ctx.saved_tensors
        probs = centred + 1.0 / centred.shape[-1]
        # the softmax's own backward kernel (one fused pass; written out in
        # operators it took four times as long on the CPU)
        return torch._softmax_backward_data(grad, probs, -1, probs.dtype)


def _attention_no_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mix: torch.Tensor, eps: float,
                       chunk_elements: int) -> torch.Tensor:
    """The multi-head core of :func:`emsa_attention` without autograd.

    The computation of :func:`_attention_chunk` over query chunks, with as
    few operations per chunk as possible and no allocation: two buffers of
    one chunk's logits serve every chunk, in place. The head mixing's bias
    is left out (a softmax cannot see it), the centred probabilities come
    from :func:`centred_softmax_` (without the cancellation of
    ``softmax - 1 / M``), their sum of squares is kept per query row (norms
    over M, summed at the end) and each chunk's ``@ v`` is written straight
    into the output. With B == 1 the output is laid out as (B, N, h, d), so
    merging the heads back into tokens copies nothing.
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
        out_heads = out.transpose(0, 1)  # (h, N, d) view
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
        centred_softmax_(attn)
        torch.linalg.vector_norm(
            attn, dim=-1, out=row_norms[:, start:start + n])
        torch.bmm(attn, v, out=out_heads[:, start:start + n])
    var = row_norms.square_().sum(dim=-1).div_(N * M)  # biased, as IN
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

    The literal computation (docs/network.md, EMSA steps 4-6) is::

        A = Conv1x1(q @ k^T)            # mixes heads, with a bias
        A = InstanceNorm(softmax(A))    # per head over all N x M entries
        out = A @ v

    Three exact identities remove its cost:

    * the 1x1 conv is a matrix product over heads; its bias, constant along
      the softmax axis, changes nothing: it is left out of the logits
      (whose low bits it would round away) and enters as an exact zero, so
      that its gradient is exactly the true one, zero (the literal
      computation's is rounding noise);
    * every softmax row sums to 1, so the InstanceNorm mean is exactly
      ``1 / M`` and its variance is ``mean((P - 1/M)^2)``, a sum that can
      be accumulated query chunk by query chunk;
    * the InstanceNorm's division is one scalar per (batch, head), so it
      commutes with ``@ v`` and is applied to the small (N, d) result.

    Queries are processed in chunks whose logits stay in cache (on a GPU,
    chunks only bound the memory), and during training each chunk is
    recomputed in the backward pass instead of being stored, so no N x M
    matrix is ever kept; each chunk's probabilities are centred without
    cancellation (:class:`CentredSoftmax`). Without autograd (and without
    dropout) the chunks reuse two preallocated buffers in place (see
    :func:`_attention_no_grad`).
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
        return sdpa(
            q,
            k.contiguous(),
            v.contiguous(),
            dropout_p=attn_drop if attn_drop > 0 and training else 0.,
            scale=1.0)
    autograd = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, mix, mix_bias))
    # the selected or default core (see use_emsa_core), asked only where
    # one may run: not while a graph is recorded, not with dropout
    if fast_paths_allowed() and not (attn_drop > 0 and training):
        core_name = emsa_core(
            q.device,
            autograd,
            widths=(q.shape[1] * q.shape[3], q.shape[3]),
            dtype=q.dtype)
        if core_name != 'chunked':
            return _core_variant(core_name, q, k, v, mix, mix_bias, eps,
                                 chunk_elements)
    dtype = q.dtype
    # torch.promote_types(dtype, torch.float32) for floating dtypes,
    # without a call that torch 2.1's dynamo breaks its graph on
    core = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(core), k.to(core), v.to(core)
        if mix is not None:
            mix = mix.to(core)
            mix_bias = mix.new_zeros(mix.shape[0]) if mix_bias is None \
                else mix_bias.to(core)
        out = _emsa_core(q, k, v, mix, mix_bias, attn_drop, training, eps,
                         chunk_elements, autograd)
    return out.to(dtype)


def _emsa_core(q, k, v, mix, mix_bias, attn_drop, training, eps,
               chunk_elements, needs_grad):
    """:func:`emsa_attention` on tensors of one dtype, outside autocast;
    ``needs_grad``: whether autograd records the call (its test there)."""
    dropout = attn_drop > 0 and training
    B, h, N, _ = q.shape
    M = k.shape[2]
    if graph_capture():  # one chunk: no size is baked into the graph
        out, sq_sum = _attention_chunk(q, k, v, mix, attn_drop, training)
    else:
        if chunk_elements is None:
            chunk_elements = _chunk_elements(q.device)
        if not (needs_grad or dropout):
            return _attention_no_grad(q, k, v, mix, eps, chunk_elements)
        rows = max(1, chunk_elements // max(1, B * h * M))
        outs, sq_sum = [], 0.
        for q_chunk in q.split(rows, dim=2):
            if needs_grad:
                out, sq = cp.checkpoint(
                    _attention_chunk,
                    q_chunk,
                    k,
                    v,
                    mix,
                    attn_drop,
                    training,
                    use_reentrant=False)
            else:
                out, sq = _attention_chunk(q_chunk, k, v, mix, attn_drop,
                                           training)
            outs.append(out)
            sq_sum = sq_sum + sq
        out = torch.cat(outs, dim=2)
    # the InstanceNorm's biased variance; the mixing's bias, left out of the
    # logits (it cancels), enters as an exact zero: its gradient is exactly
    # zero, the true value (the literal computation's is rounding noise)
    inv_std = torch.rsqrt(sq_sum / (N * M) + eps) + mix_bias * 0
    return out * inv_std[:, :, None, None]


# Terms of a convolution's reduction (in_channels / groups x kernel taps)
# from which the CPU's float32 inference runs it on an NCHW input (see
# :func:`run_conv`).
NCHW_CONV_TERMS = 128


def _nchw_conv(conv: nn.Conv2d, x: torch.Tensor, *params) -> bool:
    """Whether :func:`run_conv` runs ``conv`` on an NCHW copy of ``x``."""
    terms = conv.in_channels // conv.groups * conv.kernel_size[0] * \
        conv.kernel_size[1]
    return (terms >= NCHW_CONV_TERMS and conv.groups == 1
            and fast_paths_allowed(conv) and cpu_float32(x)
            and _layout_of(x) == torch.channels_last
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, *params))))


def run_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, in CPU float32 inference (no autograd) of a dense
    convolution on a channels-last map computed on an NCHW copy of ``x``
    and returned channels-last (the same values, the layout of the maps).

    For a channels-last input oneDNN (3.x, in torch 2.13) picks its brgemm
    convolution, which accumulates each output over all of its
    ``in_channels x kh x kw`` terms in one chain; for NCHW it picks its
    blocked direct convolution. The first has 1.7x (48 input channels) to
    4.3x (384) the float32 error of the second against float64 on ResT's
    3x3 patch embeddings (AMD EPYC), which made the channels-last maps
    twice as far from float64 as the authors' NCHW computation at ResT
    v2's stage 4 (``tools/precision_report.py``). Depth-wise and 1x1
    convolutions, and reductions of fewer than ``NCHW_CONV_TERMS`` terms
    (the stems' first conv, 27), are as accurate in either layout and are
    left alone. The cost is two copies of maps per dense convolution
    (memory-bound passes, small beside the convolution's arithmetic).

    Args:
        conv (nn.Conv2d): The convolution (called as a module).
        x (Tensor): Its input map.
    """
    if _nchw_conv(conv, x, conv.weight, conv.bias):
        return conv(
            x.contiguous()).contiguous(memory_format=torch.channels_last)
    return conv(x)


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
            and norm.running_mean is not None and fast_paths_allowed(conv)
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
    nchw = _nchw_conv(conv, x, weight, bias)  # see :func:`run_conv`
    out = F.conv2d(x.contiguous() if nchw else x, weight, bias, conv.stride,
                   conv.padding, conv.dilation, conv.groups)
    return out.contiguous(memory_format=torch.channels_last) if nchw else out


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


# --------------------------------------------------------------------------
# Other formulations of EMSA's multi-head core, for the GPU
# --------------------------------------------------------------------------
# :func:`emsa_attention` runs its multi-head core with the formulation
# named here (see :func:`use_emsa_core`), else with its device type's
# default, one for calls that autograd records and one for calls it does
# not (inference). 'chunked' is the default on every device; the others are
# candidates for CUDA that the prepared GPU check (mmrest_tools/gpu_check.py,
# section ``variants``; ``--emsa-core auto``) times against it, the literal
# path and Swin-T. Each computes the same formula (the tests compare them
# with the literal computation in float64, outputs and gradients).
EMSA_CORES = ('chunked', 'sdpa', 'sdpa_padded', 'sdpa_lse_kernel', 'triton',
              'literal', 'maps', 'literal_compiled')
# The cores of each device type outside a use_emsa_core block, with and
# without autograd ('chunked' for a type not named); a default that cannot
# run there ('triton' without triton >= 3, or on a GPU older than compute
# capability 8.0, whose kernels are not checked) gives way to 'chunked'.
# CUDA's: the fastest cores that pass the accuracy criteria on an H200
# (tools/gpu_check.py --emsa-core auto, docs/results/
# gpu_h200_2026-12-04.md): 'triton' for the fp16 training step (61.9 ms
# against 'chunked' 88.9-113 ms, 2051 MiB against 2742); 'chunked' for
# inference ('triton' 51.5 ms in float32 at 800x1344, 'chunked' 12.8 ms).
# The 'triton' default applies to float16 / bfloat16 queries (autocast's)
# only: in float32 its IEEE-precision products made its forward 4 times
# slower than 'chunked' (that inference figure), so float32 training on
# CUDA keeps 'chunked'.
DEFAULT_EMSA_CORES = dict(
    cpu=dict(autograd='chunked', inference='chunked'),
    cuda=dict(autograd='triton', inference='chunked'))
_emsa_core_names = None  # use_emsa_core's choice: (autograd, inference)
# torch.compile backend of the 'literal_compiled' core (tests use a cheaper
# one on the CPU)
LITERAL_COMPILE_BACKEND = 'inductor'
_compiled_literal = {}


def emsa_core(device: Union[str, torch.device, None] = None,
              autograd: bool = True,
              widths: Optional[Tuple[int, int]] = None,
              dtype: Optional[torch.dtype] = None) -> str:
    """The formulation of EMSA's multi-head core that
    :func:`emsa_attention` uses for tensors on ``device``: the one
    :func:`use_emsa_core` selected, else the device type's default
    (``DEFAULT_EMSA_CORES``).

    Args:
        device (str | torch.device, optional): Where the tensors are
            (default: the CPU).
        autograd (bool): For calls that autograd records (the default), or
            for calls it does not (inference).
        widths (tuple[int, int], optional): The call's query / key channels
            C = h d and value channels d: a 'triton' default whose kernels
            do not take them (``emsa_triton.fits``) gives way to 'chunked'.
        dtype (torch.dtype, optional): The call's query dtype: on CUDA a
            'triton' default gives way to 'chunked' for dtypes wider than
            2 bytes (see ``DEFAULT_EMSA_CORES``).
    """
    if _emsa_core_names is not None:
        return _emsa_core_names[0 if autograd else 1]
    device = torch.device(device if device is not None else 'cpu')
    mode = 'autograd' if autograd else 'inference'
    name = DEFAULT_EMSA_CORES.get(device.type, {}).get(mode, 'chunked')
    if name == 'triton' and not _triton_runs_on(device, widths, dtype):
        return 'chunked'
    return name


def _triton_runs_on(device: torch.device,
                    widths: Optional[Tuple[int, int]] = None,
                    dtype: Optional[torch.dtype] = None) -> bool:
    """Whether the 'triton' core runs as a default on ``device``: triton
    >= 3 and an NVIDIA GPU of compute capability 8.0 or newer (the
    kernels' compilation is checked for NVIDIA's architectures; a ROCm
    build of torch also calls AMD GPUs 'cuda', with their own version
    numbers in place of a compute capability: 'chunked' there), for
    queries of ``dtype``, if given, no wider than 2 bytes (see
    ``DEFAULT_EMSA_CORES``), with a Triton that compiles for that GPU
    (``emsa_triton.compiles_for``: Blackwell's from Triton 3.3 on); on the
    CPU, Triton's interpreter; and kernels that take the channels
    ``widths``, if given."""
    from . import emsa_triton
    if widths is not None and not emsa_triton.fits(*widths):
        return False
    if device.type == 'cpu':  # only in Triton's interpreter (the tests)
        return emsa_triton.interpreted()
    if device.type != 'cuda' or not emsa_triton.available() or \
            not torch.cuda.is_available() or torch.version.hip:
        return False
    if dtype is not None and torch.empty((), dtype=dtype).element_size() > 2:
        return False
    capability = torch.cuda.get_device_capability(device)
    return capability >= (8, 0) and emsa_triton.compiles_for(capability)


@contextlib.contextmanager
def use_emsa_core(name: str, inference: Optional[str] = None):
    """Selects the formulation of EMSA's multi-head core (more than one
    head: ``q k^T``, the 1x1 head mixing, softmax, InstanceNorm, ``@ v``)
    within the block; process-wide, restored on exit.

    * ``'chunked'`` (the default, see ``DEFAULT_EMSA_CORES``):
      :func:`_emsa_core`, query chunks in at least float32, no N x M map
      kept;
    * ``'sdpa'``: :func:`mixed_query_attention`, the mixed heads as
      attention over all C channels (``F.scaled_dot_product_attention``, in
      the inputs' dtype), the InstanceNorm's variance from per-row
      log-sum-exps computed by chunks in float32;
    * ``'sdpa_padded'``: the same with the values zero-padded to C
      channels (queries, keys and values of one head size, as flash
      attention kernels require);
    * ``'sdpa_lse_kernel'``: ``'sdpa'`` whose forward takes the row
      log-sum-exps from a fused attention kernel (CUDA: memory-efficient
      attention; CPU: the flash kernel), the backward by chunks;
    * ``'triton'``: :func:`mmrest.backbones.emsa_triton.attention_core`,
      the same mixed-query form with the attention and the InstanceNorm's
      statistics from one fused Triton kernel (forward and backward; CUDA
      tensors, needs ``triton``);
    * ``'literal'``: :func:`literal_attention_core`, the N x M maps in the
      autocast dtypes, as the literal path computes them;
    * ``'maps'``: :func:`maps_attention_core`, whole N x M maps in the
      literal path's dtypes in few operators (the mixing folded into the
      keys, the InstanceNorm from its known mean): small maps, where
      kernel launches, not the maps, cost;
    * ``'literal_compiled'``: the same under ``torch.compile``
      (``dynamic=True``, backend ``LITERAL_COMPILE_BACKEND``).

    Attention dropout in training, a recorded graph and the literal switch
    keep the 'chunked' computation.

    Args:
        name (str): One of ``EMSA_CORES``, for the calls that autograd
            records.
        inference (str, optional): One of ``EMSA_CORES``, for the calls
            it does not record (no gradient needed); default: ``name``.
    """
    names = (name, name if inference is None else inference)
    for n in names:
        if n not in EMSA_CORES:
            raise ValueError(f'unknown EMSA core {n!r}; choose from '
                             f'{EMSA_CORES}')
    with _selected_cores(names):
        yield


@contextlib.contextmanager
def _selected_cores(names: Optional[tuple]):
    """``names`` (autograd, inference), or None (the defaults), as the
    selection of :func:`use_emsa_core` within the block."""
    global _emsa_core_names
    previous, _emsa_core_names = _emsa_core_names, names
    try:
        yield
    finally:
        _emsa_core_names = previous


def _core_variant(name, q, k, v, mix, mix_bias, eps, chunk_elements):
    """The core ``name``, not 'chunked' (see :func:`use_emsa_core`)."""
    if name == 'literal':
        return literal_attention_core(q, k, v, mix, mix_bias, eps)
    if name == 'triton':
        from . import emsa_triton  # imports triton: only when asked for
        return emsa_triton.attention_core(q, k, v, mix, mix_bias, eps)
    if name == 'maps':
        return maps_attention_core(q, k, v, mix, mix_bias, eps)
    if name == 'literal_compiled':
        fn = _compiled_literal.get(LITERAL_COMPILE_BACKEND)
        if fn is None:
            fn = torch.compile(
                literal_attention_core,
                dynamic=True,
                backend=LITERAL_COMPILE_BACKEND)
            _compiled_literal[LITERAL_COMPILE_BACKEND] = fn
        return fn(q, k, v, mix, mix_bias, eps)
    lse = 'kernel' if name == 'sdpa_lse_kernel' else 'chunks'
    return mixed_query_attention(
        q,
        k,
        v,
        mix,
        mix_bias,
        eps,
        pad_values=name == 'sdpa_padded',
        lse_source=lse,
        chunk_elements=chunk_elements)


def literal_attention_core(q: torch.Tensor,
                           k: torch.Tensor,
                           v: torch.Tensor,
                           mix: torch.Tensor,
                           mix_bias: Optional[torch.Tensor],
                           eps: float = 1e-5) -> torch.Tensor:
    """EMSA's multi-head core as written (docs/network.md, steps 4-6), in
    the dtypes autocast gives (as ``EMSA._literal_forward``): N x M logits,
    the head mixing (:func:`mix_heads`, one product; through
    :class:`MixHeads` on a GPU), softmax, ``F.instance_norm``, ``@ v``.

    Args:
        q (Tensor): Scaled queries, (B, h, N, d).
        k (Tensor): Keys, (B, h, M, d).
        v (Tensor): Values, (B, h, M, d).
        mix (Tensor): The (h, h) head-mixing weight.
        mix_bias (Tensor, optional): Its (h, ) bias.
        eps (float): The InstanceNorm epsilon.
    """
    attn = q @ k.transpose(-2, -1)
    if mix_bias is None:
        mix_bias = mix.new_zeros(mix.shape[0])
    attn = mix_heads(attn, mix.to(attn.dtype), mix_bias.to(attn.dtype))
    attn = F.instance_norm(attn.softmax(dim=-1), eps=eps)
    return attn @ v.to(attn.dtype)


def maps_attention_core(q: torch.Tensor,
                        k: torch.Tensor,
                        v: torch.Tensor,
                        mix: torch.Tensor,
                        mix_bias: Optional[torch.Tensor] = None,
                        eps: float = 1e-5) -> torch.Tensor:
    """EMSA's multi-head core with whole N x M maps in the literal path's
    dtypes, in few operators: for small maps (224x224 inference), where the
    GPU's time goes to kernel launches rather than to the maps.

    * the head mixing is folded into the keys: ``l_g = sum_j W[g, j] q_j
      k_j^T = q K_g^T`` with ``K_g = concat_j(W[g, j] k_j)`` (the mixed
      queries' form of :func:`~mmrest.backbones.mixed_heads.mixed_queries`
      on the M keys instead of the N queries, formed in float32 and
      rounded once) and ``q`` all heads'
      queries (N x C, the query projection's own layout); all heads' keys
      side by side (C x h M), the logits of all heads are one product, in
      the inputs' dtype (under autocast float16 / bfloat16, as the literal
      path's logits), laid out (B, N, h, M); the mixing's bias cancels in
      the softmax;
    * softmax in float32 or better (as autocast's);
    * the InstanceNorm's mean is exactly ``1/M``, its variance one norm of
      the centred probabilities;
    * the normalised map is rounded to the values' dtype for the product
      with them, as the literal path's InstanceNorm output is under
      autocast.

    Without autograd the centring works in place, and the mixed keys and
    the normalised map are each written in one pass (scaled, rounded and,
    for the map, laid out per head).

    Args:
        q (Tensor): Scaled queries, (B, h, N, d).
        k (Tensor): Keys, (B, h, M, d).
        v (Tensor): Values, (B, h, M, d).
        mix (Tensor): The (h, h) head-mixing weight.
        mix_bias (Tensor, optional): Its (h, ) bias (cancels; with autograd
            it enters as an exact zero, so that it has a gradient).
        eps (float): The InstanceNorm epsilon.

    Returns:
        Tensor: (B, h, N, d), in the dtype of ``v``.
    """
    B, h, N, d = q.shape
    M = k.shape[2]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, mix, mix_bias))
    core = torch.promote_types(q.dtype, torch.float32)
    # keys[b, (j, e), (g, m)] = W[g, j] k[b, j, m, e]: (B, C, h M)
    weight = mix.t().to(core).view(1, h, 1, h, 1)
    with torch.autocast(q.device.type, enabled=False):
        if needs_grad:
            keys = (weight * k.to(core).transpose(2, 3).unsqueeze(3)).to(
                k.dtype)
        else:
            keys = torch.mul(
                weight,
                k.transpose(2, 3).unsqueeze(3),
                out=k.new_empty(B, h, d, h, M))
    logits = torch.matmul(
        q.transpose(1, 2).reshape(B, N, h * d), keys.reshape(B, h * d, h * M))
    probs = torch.softmax(logits.view(B, N, h, M), -1, dtype=core)
    del logits
    centred = probs - 1.0 / M if needs_grad else probs.sub_(1.0 / M)
    norm = torch.linalg.vector_norm(centred, dim=(1, 3))
    inv_std = torch.rsqrt(norm.square() / (N * M) + eps)
    if needs_grad and mix_bias is not None:
        inv_std = inv_std + mix_bias.to(core) * 0
    scale = inv_std[:, None, :, None]
    if needs_grad:
        attn = (centred * scale).to(v.dtype).transpose(1, 2)
    else:  # scaled, rounded and laid out (B, h, N, M) in one pass
        attn = v.new_empty(B, h, N, M)
        torch.mul(centred.transpose(1, 2), scale.transpose(1, 2), out=attn)
    return attn @ v


def _row_lse_chunks(q, k, rows):
    """Per query row, the log-sum-exps of the logits ``q k^T`` and of the
    doubled logits, by query chunks, in at least float32."""
    core = torch.promote_types(q.dtype, torch.float32)
    k_t = k.to(core).transpose(-2, -1)
    s1, s2 = [], []
    for q_chunk in q.split(rows, dim=2):
        logits = q_chunk.to(core) @ k_t
        s1.append(torch.logsumexp(logits, dim=-1))
        s2.append(torch.logsumexp(logits * 2, dim=-1))
    return torch.cat(s1, dim=2), torch.cat(s2, dim=2)


def cpu_flash_attention_available() -> bool:
    """Whether this torch has the CPU flash attention kernel whose
    log-sum-exps the ``'sdpa_lse_kernel'`` core reads on the CPU (torch 2.1
    has none)."""
    return hasattr(torch.ops.aten,
                   '_scaled_dot_product_flash_attention_for_cpu')


def _row_lse_kernel(q, k):
    """:func:`_row_lse_chunks` from a fused attention kernel's log-sum-exp
    output: memory-efficient attention on CUDA, the flash kernel on the CPU.
    """
    B, H, N, C = q.shape
    if q.device.type == 'cpu' and not cpu_flash_attention_available():
        raise NotImplementedError(
            f'this torch ({torch.__version__}) has no CPU flash attention '
            'kernel (aten::_scaled_dot_product_flash_attention_for_cpu) for '
            "the EMSA core 'sdpa_lse_kernel'; use the 'sdpa' core")
    k = k.expand(B, H, *k.shape[2:]).contiguous()
    out = []
    for qq in (q.contiguous(), (q * 2).contiguous()):
        if q.device.type == 'cpu':
            lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qq, k, k, 0.0, False, scale=1.0)[1]
        else:
            # the values only occupy the kernel; 8 channels (alignment)
            dummy = k.new_zeros(B, H, k.shape[2], 8)
            lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                qq, k, dummy, None, True, 0.0, False, scale=1.0)[1]
        out.append(lse[..., :N].to(
            torch.promote_types(q.dtype, torch.float32)))
    return out[0], out[1]


class RowLseGap(torch.autograd.Function):
    """Per query row ``n`` of the logits ``l = q k^T``:
    ``gap_n = LSE_m(2 l_nm) - 2 LSE_m(l_nm) = log sum_m P_nm^2`` with
    ``P = softmax(l)``, and its gradient, without N x M maps kept.

    The gradient of ``gap_n`` by the logits is ``2 (softmax(2 l) - P)``; the
    backward recomputes both by query chunks (float32 or better) and
    multiplies them by the keys and the queries. Keys of one head
    (``k.shape[1] == 1``) are shared by all query heads.

    Args (of ``apply``):
        q (Tensor): (B, H, N, C).
        k (Tensor): (B, H or 1, M, C).
        rows (int): Query rows per chunk.
        source (str): ``'chunks'`` or ``'kernel'`` (the forward's
            log-sum-exps from a fused attention kernel).
    """

    @staticmethod
    def forward(ctx, q, k, rows, source):
        if source == 'kernel':
            s1, s2 = _row_lse_kernel(q, k)
        else:
            s1, s2 = _row_lse_chunks(q, k, rows)
        ctx.save_for_backward(q, k, s1, s2)
        ctx.rows = rows
        return s2 - 2 * s1

    @staticmethod
    def backward(ctx, grad):
        q, k, s1, s2 = ctx.saved_tensors
        core = torch.promote_types(q.dtype, torch.float32)
        kc = k.to(core)
        k_t = kc.transpose(-2, -1)
        grad_q, grad_k = [], torch.zeros_like(kc)
        rows = ctx.rows
        for start in range(0, q.shape[2], rows):
            sl = slice(start, start + rows)
            q_chunk = q[:, :, sl].to(core)
            logits = q_chunk @ k_t
            g = grad[:, :, sl, None].to(core)
            dl = (torch.exp(logits * 2 - s2[:, :, sl, None]) -
                  torch.exp(logits - s1[:, :, sl, None])) * (2 * g)
            grad_q.append(dl @ kc)
            dk = dl.transpose(-2, -1) @ q_chunk
            grad_k += dk.sum(dim=1, keepdim=True) if k.shape[1] == 1 else dk
        grad_q = torch.cat(grad_q, dim=2).to(q.dtype)
        return grad_q, grad_k.to(k.dtype), None, None


def mixed_query_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mix: torch.Tensor,
        mix_bias: Optional[torch.Tensor] = None,
        eps: float = 1e-5,
        pad_values: bool = False,
        lse_source: str = 'chunks',
        chunk_elements: Optional[int] = None) -> torch.Tensor:
    """EMSA's multi-head core as softmax attention over all C = h d channels
    with mixed queries: fused attention kernels apply.

    The mixed logits of head ``g`` are
    ``sum_j W[g, j] q_j k_j^T + b_g = Q_g K^T + b_g`` with
    ``Q_g = concat_j(W[g, j] q_j)`` (N x C) and ``K = concat_j k_j``
    (M x C): one attention per head over C channels, the keys shared. The
    bias ``b_g`` is constant along each softmax row and cancels (its
    gradient is exactly zero). With ``P_g = softmax(Q_g K^T)``:

    * the InstanceNorm's mean is exactly ``1 / M`` (rows sum to 1), so
      ``(P_g - 1/M) v_g = P_g (v_g - mean_m v_g)``: the values are centred
      and ``F.scaled_dot_product_attention`` gives the centred product;
    * its variance is ``sum_nm P^2 / (N M) - 1 / M^2``, and each row's
      ``sum_m P_nm^2 = exp(LSE(2 l_n) - 2 LSE(l_n))``
      (:class:`RowLseGap`); written ``(1 / (N M^2)) sum_n expm1(gap_n +
      log M)``, with the keys centred over M (each row of logits sums to
      0, a shift the softmax cannot see), so that the log-sum-exps are
      small numbers and their difference keeps its precision;
    * the division by the standard deviation, one scalar per (batch, head),
      is applied to the (N, d) result.

    The attention runs in the inputs' dtype (the autocast dtype); the
    log-sum-exps, the variance and the output's scaling in float32 or
    better. No N x M map is kept: the attention kernel fuses them, the
    log-sum-exps are computed by query chunks (or by a kernel, see
    ``lse_source``) and recomputed in the backward pass.

    Args:
        q (Tensor): Scaled queries, (B, h, N, d).
        k (Tensor): Keys, (B, h, M, d).
        v (Tensor): Values, (B, h, M, d).
        mix (Tensor): The (h, h) head-mixing weight.
        mix_bias (Tensor, optional): Its (h, ) bias: cancels; kept in the
            graph only so that its gradient is an exact zero, as in the
            literal computation.
        eps (float): The InstanceNorm epsilon.
        pad_values (bool): Zero-pad the values to C channels (one head
            size for queries, keys and values, as flash kernels need).
        lse_source (str): ``'chunks'`` or ``'kernel'`` (see
            :class:`RowLseGap`).
        chunk_elements (int, optional): Logit elements per query chunk of
            the log-sum-exps; defaults as in :func:`emsa_attention`.

    Returns:
        Tensor: (B, h, N, d), in the dtype of ``q``.
    """
    if lse_source not in ('chunks', 'kernel'):
        raise ValueError(f"lse_source must be 'chunks' or 'kernel', got "
                         f'{lse_source!r}')
    B, h, N, d = q.shape
    M = k.shape[2]
    C = h * d
    q_mix = mixed_queries(q, mix)
    keys, v_c = centred(k, q_mix.dtype, heads_last=True), \
        centred(v, q_mix.dtype)
    values = F.pad(v_c, (0, C - d)) if pad_values and C != d else v_c
    out = F.scaled_dot_product_attention(
        q_mix, keys[:, None].expand(B, h, M, C), values, scale=1.0)
    if values is not v_c:
        out = out[..., :d]
    if chunk_elements is None:
        chunk_elements = _chunk_elements(q.device)
    rows = max(1, chunk_elements // max(1, B * h * M))
    gap = RowLseGap.apply(q_mix, keys[:, None], rows, lse_source)  # (B,h,N)
    with torch.autocast(q.device.type, enabled=False):
        # sum_n expm1(gap_n + log M) / M = sum_nm (P - 1/M)^2
        row_dev = torch.expm1(gap + math.log(M)) / M
        return _instance_normalised(out, row_dev, M, mix_bias, eps, q.dtype)


def _instance_normalised(out, row_dev, M, mix_bias, eps, dtype):
    """``out / sqrt(var + eps)`` per (batch, head), with the InstanceNorm's
    biased variance ``var = sum_n row_dev_n / (N M)`` from each row's
    ``row_dev_n = sum_m (P_nm - 1/M)^2``; computed in float32 or better,
    returned in ``dtype``. ``mix_bias`` (it cancels) enters as an exact
    zero, so that its gradient is an exact zero as in the literal
    computation."""
    N = row_dev.shape[2]
    core = torch.promote_types(out.dtype, torch.float32)
    with torch.autocast(out.device.type, enabled=False):
        row_dev = row_dev.to(core)
        if mix_bias is not None:
            row_dev = row_dev + (mix_bias.to(core) * 0)[None, :, None]
        var = row_dev.sum(dim=-1) / (N * M)
        inv_std = torch.rsqrt(var + eps)[:, :, None, None]
        return (out.to(core) * inv_std).to(dtype)
