# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``variants``: each formulation of EMSA's multi-head core."""
import contextlib
import copy
import math
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..compared import build_backbone
from .measure import (_autocast, _dtype_name, _short_error, grad_error,
                      output_error, randomize_norms, set_cudnn_benchmark)
from .settings import AMP_FACTOR, AMP_FLOOR, FP32_FLOOR


def _passes(row: Dict, lit: Dict, amps) -> bool:
    """The equality criteria of a core's row against the literal row."""
    fp32 = (
        row['err_fp32'] <= 4 * lit['err_fp32'] + FP32_FLOOR
        and row['grad_err_fp32'] <= 4 * lit['grad_err_fp32'] + FP32_FLOOR)
    amp = all(row[f'err_{a}'] <= AMP_FACTOR * lit[f'err_{a}'] + AMP_FLOOR
              for a in map(_dtype_name, amps) if a != 'float32')
    return bool(fp32 and amp and row['grads_finite'])


def choose_core(sec: Dict,
                default: Optional[str] = None,
                default_inference: Optional[str] = None) -> Dict:
    """The EMSA cores for the rest of a run (``--emsa-core auto``), from
    the finished ``variants`` section, among ResT-Small's cores that pass
    the equality criteria: for calls with autograd, the fastest training
    step in the first autocast dtype (float32 in quick mode) whose peak
    memory is no more than the default core's; for inference, the least
    geometric mean of the two inference times (``small`` and ``large``)
    in fp16 autocast (float32 in quick mode). The default stays when none
    is faster or the default's row has no figures.

    Args:
        sec (dict): The ``variants`` section.
        default (str, optional): The device's default core with autograd
            (default: the CPU's, ``kernels.emsa_core()``).
        default_inference (str, optional): Its default for inference
            (default: the CPU's).

    Returns:
        dict: ``chosen`` (the core with autograd), ``by`` (the figure
        compared), ``default``, ``step_ms`` of each candidate and
        ``excluded`` (each other core and why; ``reason`` where the
        default's row has no figure); ``inference``: the same for
        inference, with ``ms`` (the geometric means) for ``step_ms``.
    """
    from mmrest.backbones import kernels
    settings = sec.get('settings', {})
    amps = settings.get('train_amp') or ['float32']
    dtype = next((a for a in amps if a != 'float32'), amps[0])
    key, mem = f'train_{dtype}_step_ms', f'train_{dtype}_step_peak_MiB'
    rows = {
        r['core']: r
        for r in sec.get('rows', []) if r.get('kind') == 'variant'
        and r.get('model') == 'rest_small' and r.get('core')
    }

    def step(r):
        return r.get(key)

    def memory(r, base):
        if r.get(mem) is not None and base.get(mem) is not None \
                and r[mem] > base[mem]:
            return f'peak memory {r[mem]:.0f} MiB > {base[mem]:.0f} MiB'

    out = _fastest(rows, default or kernels.emsa_core(), key, step, memory,
                   lambda r: r.get(f'train_{dtype}_error'))
    out['step_ms'] = out.pop('ms')
    amp = 'fp32' if dtype == 'float32' else 'fp16'  # as _variant_one
    names = (f'small_{amp}_ms', f'large_{amp}_ms')

    def inference(r):
        if all(r.get(n) is not None for n in names):
            return math.sqrt(r[names[0]] * r[names[1]])

    out['inference'] = _fastest(
        rows, default_inference or kernels.emsa_core(autograd=False),
        f'geometric mean of {names[0]} and {names[1]}', inference,
        lambda r, base: None,
        lambda r: r.get(f'small_{amp}_error') or r.get(f'large_{amp}_error'))
    return out


def _fastest(rows: Dict, default: str, by: str, figure, worse, error):
    """:func:`choose_core`'s choice for one mode: of the cores in ``rows``
    with a ``figure`` that pass (the default needs no pass) and that are
    not ``worse`` than the default (a reason, else None), the least figure;
    ``error`` gives a row's error for that figure."""
    out = dict(chosen=default, by=by, default=default, ms={}, excluded={})
    base = rows.get(default, {})
    if figure(base) is None:
        out['reason'] = f'the default {default!r} has no {by}: kept'
        return out
    for core, r in rows.items():
        if figure(r) is None:
            why = r.get('error') or r.get('skipped') or error(r) or \
                'no figure'
        elif core != default and r.get('pass') is not True:
            why = 'fails the equality criteria'
        else:
            why = worse(r, base)
        if why:
            out['excluded'][core] = str(why)[:200]
        else:
            out['ms'][core] = figure(r)
    out['chosen'] = min(out['ms'], key=out['ms'].get)
    return out


# EMSA cores whose first calls compile kernels (Triton, Inductor)
COMPILING_CORES = ('triton', 'literal_compiled')


class VariantsSection:
    """The ``variants`` section of :class:`~.GpuCheck`."""

    def variants(self, sec: Dict, compile_backend: str):
        """ResT-Small with each formulation of EMSA's multi-head core
        (``kernels.use_emsa_core``), beside its literal path, ResT v2-Tiny
        and Swin-T, all with the same settings: the backbone training step
        at ``train`` (2x3x800x1344) under fp16 and bf16 autocast (median
        after warm-ups, peak memory), inference at ``small`` and
        ``large`` in float32 and fp16 autocast, and each core's errors
        (random norm parameters and statistics, as in ``equality``):
        float32 outputs and gradients (eval mode, autograd) against the
        literal path in float64, fp16 / bf16 outputs against the same
        model's float32 ones beside the literal path's (the autocast
        criterion). The next GPU session picks the fastest core that passes.
        """
        bench = set_cudnn_benchmark('variants')
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        amps = (None, ) if self.s.amp is None else (torch.float16,
                                                    torch.bfloat16)
        sec['settings'] = dict(
            cudnn_benchmark=bench,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            train='x'.join(map(str, self.s.train)),
            small='x'.join(map(str, self.s.small)),
            large='x'.join(map(str, self.s.large)),
            eq_input='x'.join(map(str, self.s.eq_shapes[-1])),
            train_amp=[_dtype_name(a) for a in amps],
            amp=self.s.amp_name,
            warmup=self.s.warmup,
            repeats=self.s.repeats,
            train_warmup=self.s.train_warmup,
            train_repeats=self.s.train_repeats,
            compile_backend=compile_backend,
            criteria=dict(
                fp32=f'err <= 4 * err_literal + {FP32_FLOOR:.2e}',
                amp=f'err <= {AMP_FACTOR} * err_literal + {AMP_FLOOR}'))
        state = dict(model=build_backbone('rest_small', self.s.quick))
        randomize_norms(state['model'])  # as the equality section
        state['weights'] = copy.deepcopy(state['model'].state_dict())
        # the cores that compile kernels first (Triton's, Inductor's) last:
        # their compilations may take the deadline
        cores = self.s.variant_cores
        rows = [('rest_small_literal', None)]
        rows += [('rest_small', c) for c in cores if c not in COMPILING_CORES]
        rows += [('restv2_tiny', None), ('swin_t', None)]
        rows += [('rest_small', c) for c in cores if c in COMPILING_CORES]
        self.log('  variants: which SDPA backends take the mixed queries')
        self._guarded_row(sec, dict(kind='sdpa_backends'), self._sdpa_backends)
        for name, core in rows:
            self.log(f'  variants {name} {core or ""}')
            base = dict(kind='variant', model=name, core=core)
            if core == 'literal_compiled' and compile_backend == 'off':
                self._row(sec, dict(base, skipped='--compile-backend off'))
                continue
            self._guarded_row(
                sec,
                base,
                lambda state=state: self._variant_one(name, core, amps, state,
                                                      compile_backend),
                need_s=60.0 if core in COMPILING_CORES else 10.0)
        del state
        self._free()

    def _sdpa_backends(self) -> Dict:
        """Which ``F.scaled_dot_product_attention`` backends run (forward
        and backward, in the autocast dtype) the mixed-query attention of
        ResT-Small's stages 2 to 4 (C = 128, 256, 512 channels; h = 2, 4,
        8 heads; keys shared by the heads, an expanded tensor), with values
        of one head (d = C / h channels, ``'sdpa'``) and zero-padded to C
        (``'sdpa_padded'``): 'ok' or the error."""
        import torch.nn.functional as F

        from mmrest.utils.torch_compat import sdpa_backend
        dev = self.device
        dtype = self.s.amp or torch.float32
        gen = torch.Generator().manual_seed(10)
        res = {}
        for C, h in ((128, 2), (256, 4), (512, 8)):
            for values in ('d', 'C'):
                for backend in ('FLASH_ATTENTION', 'EFFICIENT_ATTENTION',
                                'CUDNN_ATTENTION', 'MATH'):
                    key = f'C{C}_h{h}_v{values}_{backend.lower()}'
                    only = sdpa_backend(backend)
                    if only is None:
                        res[key] = 'no such backend in this torch'
                        continue
                    q = torch.randn(
                        1, h, 64, C, generator=gen).to(dev,
                                                       dtype).requires_grad_()
                    k = torch.randn(
                        1, 1, 48, C, generator=gen).to(dev,
                                                       dtype).requires_grad_()
                    v = torch.randn(
                        1,
                        h,
                        48,
                        C // h if values == 'd' else C,
                        generator=gen).to(dev, dtype)
                    v.requires_grad_()
                    try:
                        with only:
                            out = F.scaled_dot_product_attention(
                                q, k.expand(1, h, 48, C), v, scale=1.0)
                            out.float().sum().backward()
                        res[key] = 'ok'
                    except Exception as e:  # noqa: BLE001 (recorded)
                        res[key] = _short_error(e, 120)
        return dict(backends=res)

    def _variant_one(self, name: str, core: Optional[str], amps, state: Dict,
                     compile_backend: str) -> Dict:
        from mmrest.backbones import kernels
        dev = self.device
        model = build_backbone(name, self.s.quick)
        if name.startswith('rest_small'):
            model.load_state_dict(state['weights'])
        model.to(dev)
        row = dict(params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        ctx = contextlib.nullcontext()
        if core is not None:
            kernels.LITERAL_COMPILE_BACKEND = compile_backend
            ctx = kernels.use_emsa_core(core)
        with ctx:
            if name.startswith('rest_small'):
                row.update(self._variant_errors(model, state, amps))
                lit = state.get('literal_errors')
                if name.endswith('_literal'):
                    state['literal_errors'] = dict(row)
                elif lit:
                    row['pass'] = _passes(row, lit, amps)
            gen = torch.Generator().manual_seed(7)
            x = torch.rand(*self.s.train, generator=gen).to(dev)
            for amp in amps:
                tag = f'train_{_dtype_name(amp)}'
                try:
                    res = self._train_step_memory(model, x, amp)
                    row.update({f'{tag}_{k}': v for k, v in res.items()})
                except Exception as e:  # noqa: BLE001
                    row[f'{tag}_error'] = _short_error(e)
                    self._free()
            del x
            row.update(self._inference_times(model, gen))
        del model
        self._free()
        return row

    def _variant_errors(self, model: nn.Module, state: Dict, amps) -> Dict:
        """Errors of ``model`` (ResT-Small, the weights in ``state``), eval
        mode with autograd: float32 outputs and gradients against the
        literal path in float64 (computed once), each autocast dtype's
        outputs against the model's own float32 ones."""
        from mmrest.backbones import to_literal
        dev = self.device
        if 'x' not in state:
            gen = torch.Generator().manual_seed(8)
            state['x'] = torch.randn(
                *self.s.eq_shapes[-1], generator=gen,
                dtype=torch.float64).to(dev)
            ref = to_literal(state['model']).double().to(dev).eval()
            state['ref'] = self._outs_grads(ref, state['x'], None, state)
            del ref
        model.eval()
        x32 = state['x'].float()
        outs, grads = self._outs_grads(model, x32, None, state)
        ref_o, ref_g = state['ref']
        row = dict(
            err_fp32=output_error(outs, ref_o),
            grad_err_fp32=grad_error(grads, ref_g),
            grads_finite=True)
        for amp in amps:
            if amp is None:
                continue
            o, g = self._outs_grads(model, x32, amp, state)
            row[f'err_{_dtype_name(amp)}'] = output_error(o, outs)
            row['grads_finite'] = row['grads_finite'] and all(
                bool(torch.isfinite(t).all()) for t in g.values())
        return row

    @staticmethod
    def _outs_grads(model, x, amp, state):
        """Outputs (float64) and parameter gradients of a fixed random
        weighting of the outputs (``state['w']``, made on first use)."""
        model.zero_grad(set_to_none=True)
        with _autocast(x.device, amp):
            outs = [o.double() for o in model(x)]
        if 'w' not in state:
            gen = torch.Generator().manual_seed(9)
            state['w'] = [
                (torch.randn(o.shape, generator=gen, dtype=torch.float64) /
                 math.sqrt(o.numel())).to(x.device) for o in outs
            ]
        sum((o * w).sum() for o, w in zip(outs, state['w'])).backward()
        grads = {
            n: p.grad.detach().double().clone()
            for n, p in model.named_parameters() if p.grad is not None
        }
        model.zero_grad(set_to_none=True)
        return [o.detach() for o in outs], grads
