# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""How many operators one training step of a backbone runs, on the CPU.

    python tools/op_census.py                      # 2x3x224x224, fp16
    python tools/op_census.py --models rest_small --core chunked
    python tools/op_census.py --size 800 1344 --autocast bf16

On a GPU nearly every ATen operator that is not a view or an allocation is
a kernel launch, and where a step's tensors are small, launches rather than
bytes set its time. This counts them without a GPU: one training step
(forward and backward of the sum of the outputs' means, under CPU autocast,
batch 2) recorded with a ``TorchDispatchMode``, per model:

* ``operators``: the ATen operators besides views and allocations
  (``NO_KERNEL``), autograd's backward included;
* ``mbytes``: the bytes of their tensors (inputs and outputs, each time
  an operator touches them), in MiB;
* ``gflop``: matrix products and convolutions by input dtype (PyTorch's
  FLOP formulas, torch >= 2.2), so that float32 products under autocast
  show; the 'triton' core's kernels by :func:`kernel_flop` (any torch);
* ``top``: the most frequent operators.

ResT's multi-head core is the one ``--core`` names (default ``triton``,
CUDA's default under fp16 / bf16 autocast). The 'triton' core's kernels
run only on CUDA or in Triton's interpreter; here their launches are
paused (:func:`paused_triton_launches`: counted under their own names,
not run, their outputs left as allocated, so the step's numbers mean
nothing), which counts the operators around them exactly, and their
matrix products' FLOPs from their arguments' shapes.
"""
import argparse
import collections
import contextlib
from typing import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmrest_tools.gpu_check.measure import backbone_step

try:  # PyTorch's FLOP formulas by operator (torch >= 2.2)
    from torch.utils.flop_counter import flop_registry as FLOP_FORMULAS
except ImportError:  # then no FLOPs are counted
    FLOP_FORMULAS = {}

# ATen operators that launch no kernel on a GPU: views and allocations
NO_KERNEL = frozenset(
    ('view', '_unsafe_view', 'transpose', 't', 'permute', 'expand',
     'unsqueeze', 'squeeze', 'select', 'slice', 'as_strided', 'alias',
     'detach', 'split', 'split_with_sizes', 'unbind', '_reshape_alias',
     'empty', 'new_empty', 'empty_like', 'empty_strided', 'new_empty_strided',
     'promote_types', 'lift_fresh', 'is_same_size', 'sym_size', 'sym_stride',
     'sym_numel'))
# The matrix products of each Triton kernel per (batch, head, query, key),
# as multiples of (C, D): the forward's logits and P V; the queries'
# gradient: the logits again, dO V^T and dl K; the keys' and values':
# the logits again, dO V^T, (P - 1/M)^T dO and dl^T Q.
KERNEL_PRODUCTS = {
    '_forward_kernel': (1, 1),
    '_grad_queries_kernel': (2, 1),
    '_grad_keys_values_kernel': (2, 2),
}
KERNELS = tuple(KERNEL_PRODUCTS)
AUTOCAST = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=None)


class Census(TorchDispatchMode):
    """A ``with`` block that counts the operators run inside it (see the
    module's docstring): ``count``, ``nbytes`` and ``flop`` by name
    (``flop`` by (name, input dtypes))."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()
        self.nbytes = collections.Counter()
        self.flop = collections.Counter()
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in NO_KERNEL:
            return out
        self.record(name)
        tensors = [
            t for t in tree_flatten((args, kwargs, out))[0]
            if isinstance(t, torch.Tensor)
        ]
        self.nbytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        if func.overloadpacket in FLOP_FORMULAS:
            self.add_flop(
                name, [t for t in args if isinstance(t, torch.Tensor)],
                FLOP_FORMULAS[func.overloadpacket](
                    *args, **kwargs, out_val=out))
        return out

    def record(self, name: str):
        self.count[name] += 1

    def add_flop(self, name: str, inputs: list, flop: int):
        """``flop`` FLOPs of ``name``, keyed by the dtypes of its first two
        tensor ``inputs``."""
        dtypes = tuple(str(t.dtype).replace('torch.', '') for t in inputs[:2])
        self.flop[(name, ) + dtypes] += flop

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)


def kernel_flop(name: str, queries: Sequence[int], keys: Sequence[int],
                values: Sequence[int]) -> int:
    """The FLOPs of one launch of the Triton kernel ``name`` (a multiply
    and an add counted as 2, as PyTorch's formulas) from the shapes of its
    ``queries`` (B, H, N, C), ``keys`` (B, M, C) and ``values``
    (B, H, M, D); the tiles' padding to powers of two not counted."""
    B, H, N, C = queries
    M, D = keys[1], values[3]
    per_c, per_d = KERNEL_PRODUCTS[name]
    return 2 * B * H * N * M * (per_c * C + per_d * D)


class _PausedLaunch:
    """A Triton kernel whose launches do nothing but count in each of the
    censuses that is recording, with their FLOPs (:func:`kernel_flop`)."""

    def __init__(self, name: str, censuses: list):
        self.name, self.censuses = name, censuses

    def __getitem__(self, grid):

        def launch(queries, keys, values, *args, **kwargs):
            for census in self.censuses:
                if census.active:
                    census.record(self.name)
                    census.add_flop(
                        self.name, [queries, keys],
                        kernel_flop(self.name, queries.shape, keys.shape,
                                    values.shape))

        return launch

    def warmup(self, *args, grid, **kwargs):
        """Compiles nothing, as Triton's interpreter (no spills known)."""
        return None


@contextlib.contextmanager
def paused_triton_launches(*censuses: Census):
    """Within the block the 'triton' core's kernels launch nothing (CPU
    tensors pass its device check as in Triton's interpreter); each launch
    is recorded under the kernel's name in those of ``censuses`` that are
    recording."""
    from mmrest.backbones import emsa_triton
    saved = {name: getattr(emsa_triton, name) for name in KERNELS}
    saved_interpreted = emsa_triton.interpreted
    try:
        for name in KERNELS:
            setattr(emsa_triton, name, _PausedLaunch(name, list(censuses)))
        emsa_triton.interpreted = lambda: True
        yield
    finally:
        for name, kernel in saved.items():
            setattr(emsa_triton, name, kernel)
        emsa_triton.interpreted = saved_interpreted


def step_census(model: torch.nn.Module,
                size=(224, 224),
                autocast=torch.float16,
                core: str = 'triton') -> Census:
    """The census of one training step of ``model`` (a backbone returning
    a tuple of maps) on a 2x3x``size`` batch under CPU ``autocast`` (a
    dtype, or None for float32), ResT's multi-head core ``core``, after one
    uncounted step (lazy initialisations)."""
    from mmrest.backbones import emsa_triton, kernels
    model.train()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    census = Census()
    paused = paused_triton_launches(census) if core == 'triton' \
        and emsa_triton.available() else contextlib.nullcontext()
    with paused, kernels.use_emsa_core(core):
        for counted in (False, True):
            with census if counted else contextlib.nullcontext():
                backbone_step(model, x, autocast)
            model.zero_grad(set_to_none=True)
    return census


def summary(name: str, census: Census, top: int = 12) -> dict:
    """One model's row (see the module's docstring)."""
    return dict(
        model=name,
        operators=sum(census.count.values()),
        mbytes=round(sum(census.nbytes.values()) / 2**20),
        gflop={
            ' '.join(key): round(value / 1e9, 2)
            for key, value in census.flop.most_common()
        },
        top=dict(census.count.most_common(top)))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Operators of one training step, per backbone (CPU).')
    parser.add_argument(
        '--models', nargs='+', default=['rest_small', 'swin_t', 'restv2_tiny'])
    parser.add_argument('--size', nargs=2, type=int, default=[224, 224])
    parser.add_argument('--autocast', choices=AUTOCAST, default='fp16')
    parser.add_argument('--core', default='triton')
    args = parser.parse_args(argv)
    from mmrest_tools.compared import build_backbone
    for name in args.models:
        torch.manual_seed(0)
        row = summary(
            name,
            step_census(
                build_backbone(name), args.size, AUTOCAST[args.autocast],
                args.core))
        print(f"{name}: {row['operators']} operators, {row['mbytes']} MiB; "
              f"GFLOP {row['gflop']}")
        print('  ' + ', '.join(f'{k} {v}' for k, v in row['top'].items()))


if __name__ == '__main__':
    main()
