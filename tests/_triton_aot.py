"""Compiles the 'triton' EMSA core's kernels for a CUDA architecture on a
machine without a GPU (Triton's own ptxas), as launched
(``emsa_triton.launch_config``), and prints, per kernel, the registers,
the stack (spilled registers) and the shared memory a program uses, and
the tensor-core instructions its products compile to (``mma``: Hopper's
``wgmma`` or ``mma.sync``), as JSON. Run by tests/test_emsa_triton.py in a
process without TRITON_INTERPRET (the kernels compiled, not interpreted).

Usage: python tests/_triton_aot.py CC:DTYPE:C:D[:BLOCK:WARPS:STAGES[:SPLIT]]
[...] (e.g. 90:fp16:128:64; 90:fp16:256:64:32:4:3 with launch_config's
block, num_warps and num_stages overridden, ``-`` for its own choice;
SPLIT 1: only the keys / values kernel, compiled for split query rows as
``emsa_triton.query_splits`` may launch it; 0 or absent: all three, the
keys / values kernel unsplit). With ``--fit BYTES`` first: each kernel
with the launch ``emsa_triton.fitted_launch`` takes on a GPU with that much
shared memory a block and this Triton's register allocation (``fitted``).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import torch
import triton
import triton.language as tl
from _helpers import LoadedKernel
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler import compile as triton_compile

from mmrest.backbones import emsa_triton

DTYPES = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)
KERNELS = ('_forward_kernel', '_grad_queries_kernel',
           '_grad_keys_values_kernel')
# the pointer arguments that hold the inputs' dtype; the other pointers are
# float32 (outputs, gradients, statistics)
INPUTS = ('Q', 'K', 'V')
INTS = ('N', 'M', 'H', 'C', 'D', 'SPLIT_ROWS')


def _signature(fn, dtype: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in INTS:
            sig[name] = 'i32'
        elif name == 'inv_M':
            sig[name] = 'fp32'
        elif name.isupper() and name not in ('ACC', 'SPLIT') and \
                not name.startswith('BLOCK'):
            sig[name] = '*' + (dtype if name in INPUTS else 'fp32')
        else:
            sig[name] = 'constexpr'
    return sig


def _source(fn, dtype: str, constexprs: dict):
    """Triton's description of ``fn`` to compile: its arguments' types and
    the constexprs' values, by name (Triton 3.3 on), or by position without
    the constexprs and the values apart (Triton 3.0 to 3.2)."""
    signature = _signature(fn, dtype)
    try:
        return ASTSource(fn, signature, constexprs=constexprs)
    except TypeError:  # Triton 3.0 to 3.2
        pass
    key = (lambda name: name) if emsa_triton.triton_version() >= (3, 2) \
        else fn.arg_names.index  # 3.2 by name, 3.0 and 3.1 by position
    return ASTSource(
        fn, {
            key(name): kind
            for name, kind in signature.items() if kind != 'constexpr'
        },
        constants={
            key(name): value
            for name, value in constexprs.items()
        })


def compiled(cc: int,
             dtype: str,
             C: int,
             D: int,
             name: str,
             config: dict,
             split: bool = False) -> dict:
    """One kernel compiled with ``config`` (a launch_config): its row."""
    tool = os.path.join(
        os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin',
        'cuobjdump')
    fn = getattr(emsa_triton, name)
    config = dict(config)
    options = {
        k: config.pop(k)
        for k in ('num_warps', 'num_stages', 'enable_fp_fusion')
    }
    constexprs = dict(config, ACC=tl.float32)
    if name == '_grad_keys_values_kernel':
        constexprs['SPLIT'] = split
    row = dict(
        cc=cc,
        dtype=dtype,
        C=C,
        D=D,
        kernel=name,
        split=split,
        **config,
        **options)
    try:
        kernel = triton_compile(
            _source(fn, dtype, constexprs),
            target=GPUTarget('cuda', cc, 32),
            options=options)
        with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
            f.write(kernel.asm['cubin'])
            f.flush()
            usage = subprocess.run([tool, '-res-usage', f.name],
                                   capture_output=True,
                                   text=True,
                                   check=True).stdout
        found = re.search(r'REG:(\d+).*?STACK:(\d+)', usage)
        ptx = kernel.asm['ptx']
        row.update(
            registers=int(found.group(1)),
            stack=int(found.group(2)),
            shared=kernel.metadata.shared,
            mma=next(
                (kind
                 for kind in ('tcgen05', 'wgmma', 'mma.sync') if kind in ptx),
                None))
    except Exception as e:  # noqa: BLE001 (reported)
        row['error'] = f'{type(e).__name__}: {e}'[-2000:]
    return row


def _config(cc, dtype, C, D, name, **overrides):
    return emsa_triton.launch_config(
        C,
        D,
        DTYPES[dtype],
        forward=name == '_forward_kernel',
        capability=divmod(cc, 10),
        **overrides)


def report(cc: int,
           dtype: str,
           C: int,
           D: int,
           split: bool = False,
           **overrides) -> list:
    """Each kernel (with ``split`` the keys / values kernel alone, split)
    as launch_config chooses its launch."""
    return [
        compiled(cc, dtype, C, D, name,
                 _config(cc, dtype, C, D, name, **overrides), split)
        for name in (KERNELS[2:] if split else KERNELS)
    ]


def fitted(cc: int, dtype: str, C: int, D: int, limit: int) -> list:
    """Each kernel with the launch ``emsa_triton.fitted_launch`` takes on a
    GPU with ``limit`` bytes of shared memory a block, given this Triton's
    compilation: its loading refused where the kernel needs more shared
    memory (Triton's ``OutOfResources``), its spills ptxas's stack
    (``tried``: how many launches were compiled)."""
    rows = []
    for name in KERNELS:
        tried = {}  # the compiled rows, by launch

        def run(config, warmup=False):
            launch = tuple(sorted(config.items()))
            if launch not in tried:
                tried[launch] = compiled(cc, dtype, C, D, name, config)
            row = tried[launch]
            if not warmup:
                return row
            refusal = None
            # a row without shared memory (a compile error) refused as well
            if row.get('shared', limit + 1) > limit:
                refusal = emsa_triton.OutOfResources(
                    row.get('shared'), limit, 'shared memory')
            return LoadedKernel(row.get('stack', 0), refusal)

        emsa_triton._FITTED.clear()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                row = emsa_triton.fitted_launch(
                    name, _config(cc, dtype, C, D, name), {},
                    torch.zeros(1, dtype=DTYPES[dtype]), run)
            except emsa_triton.OutOfResources:  # nothing fits: the last
                row = list(tried.values())[-1]
        rows.append(dict(row, tried=len(tried)))
    return rows


if __name__ == '__main__':
    assert not emsa_triton.interpreted(), 'unset TRITON_INTERPRET'
    specs, limit = sys.argv[1:], None
    if specs[:1] == ['--fit']:
        limit, specs = int(specs[1]), specs[2:]
    out = []
    for spec in specs:
        cc, dtype, C, D, *launch = spec.split(':')
        if limit is not None:
            out += fitted(int(cc), dtype, int(C), int(D), limit)
            continue
        overrides = {
            key: int(value)
            for key, value in zip(('block', 'num_warps', 'num_stages',
                                   'split'), launch) if value != '-'
        }
        out += report(int(cc), dtype, int(C), int(D), **overrides)
    print(json.dumps(out))
