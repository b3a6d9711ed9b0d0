# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``equality``: the fast and the literal path against the literal
path in float64, under float32, fp16 and bf16, and fp16 GradScaler steps."""
import copy
import functools
import math
from typing import Dict

import torch

from ..compared import build_rest
from .measure import (_autocast, _short_error, grad_error, output_error,
                      randomize_norms)
from .settings import AMP_FACTOR, AMP_FLOOR, FP32_FLOOR


class EqualitySection:
    """The ``equality`` section of :class:`~.GpuCheck`."""

    def equality(self, sec: Dict):
        from mmrest.backbones import to_literal
        sec['criteria'] = dict(
            fp32=f'err_fast <= 4 * err_literal + {FP32_FLOOR:.2e} '
            '(100 float32 eps), both against the literal path in float64',
            amp=f'err_fast <= {AMP_FACTOR} * err_literal + {AMP_FLOOR} '
            '(outputs, each path against its own float32 result) and '
            'finite gradients')
        archs = [self.s.eq_arch]
        if self.s.quick:
            sec['note'] = 'quick mode: ResT-Small narrowed, no ResT v2'
        else:
            archs.append('v2_tiny')
        tf32 = (torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        sec['tf32'] = 'off (matmul and cuDNN) in this section'
        try:
            for arch in archs:
                name = ('restv2_tiny' if arch == 'v2_tiny' else 'rest_small'
                        if arch == 'small' else 'rest_small_narrow_quick')
                # the weights from a fixed seed: the float32 errors the
                # criteria bound depend on them, and the global RNG's state
                # here differed from run to run
                torch.manual_seed(0)
                base = build_rest(arch)
                randomize_norms(base)
                state = copy.deepcopy(base.state_dict())
                for shape in self.s.eq_shapes:
                    for mode in self.s.eq_modes:
                        self.log(f'  equality {name} {shape} {mode}')
                        self._equality_case(sec, name, arch, state, shape,
                                            mode, to_literal)
                for path in ('fast', 'literal'):
                    self.log(f'  fp16 GradScaler steps {name} {path}')
                    self._guarded_row(
                        sec,
                        dict(
                            kind='amp_steps',
                            model=name,
                            path=path,
                            input='x'.join(map(str, self.s.amp_steps_shape))),
                        lambda: self._amp_steps(arch, state, path, to_literal))
        finally:
            (torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32) = tf32

    def _equality_case(self, sec, name, arch, state, shape, mode, to_literal):
        """The rows of one model, input and mode: float32, then each
        autocast dtype against the float32 result (:class:`EqualityCase`).
        """
        case = EqualityCase(self.device, arch, state, shape, mode, to_literal)
        base = dict(kind='equality', model=name, input=case.shape_s, mode=mode)
        self._guarded_row(sec, dict(base, dtype='float32'), case.fp32_row)
        for amp in self.s.eq_amp:
            dname = str(amp).replace('torch.', '')
            self._guarded_row(sec, dict(base, dtype=dname),
                              functools.partial(case.amp_row, amp))
        case.built.clear()
        self._free()

    def _amp_steps(self, arch, state, path, to_literal) -> Dict:
        """Three fp16 autocast training steps with a GradScaler, as
        mmengine's ``AmpOptimWrapper(loss_scale='dynamic')``."""
        dev = self.device
        model = build_rest(arch)
        model.load_state_dict(state)
        if path == 'literal':
            model = to_literal(model, copy_model=False)
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        from mmrest.utils.torch_compat import grad_scaler
        scaler = grad_scaler(dev.type)
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(*self.s.amp_steps_shape, generator=gen).to(dev)
        steps = []
        for _ in range(self.s.amp_steps):
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, torch.float16):
                outs = model(x)
                loss = sum((o.float()**2).mean() for o in outs)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nonfinite = [
                n for n, p in model.named_parameters() if p.grad is not None
                and not bool(torch.isfinite(p.grad).all())
            ]
            before = float(scaler.get_scale())
            scaler.step(opt)
            scaler.update()
            after = float(scaler.get_scale())
            steps.append(
                dict(
                    loss=float(loss.detach()),
                    scale_before=before,
                    scale_after=after,
                    skipped=after < before,
                    nonfinite_grads=len(nonfinite),
                    nonfinite_examples=nonfinite[:3]))
        skipped = sum(s['skipped'] for s in steps)
        nonfinite = sum(s['nonfinite_grads'] for s in steps)
        ok = skipped == 0 and nonfinite == 0 and all(
            math.isfinite(s['loss']) for s in steps)
        return {
            'steps': steps,
            'skipped_steps': skipped,
            'nonfinite_grads': nonfinite,
            'scale': f'{steps[0]["scale_before"]:g} -> '
            f'{steps[-1]["scale_after"]:g}',
            'pass': bool(ok)
        }


class EqualityCase:
    """One row set of the equality section: a model (fast, literal and
    float64 reference paths, built by the float32 row), an input and a
    mode. The float32 results are kept in :attr:`built` for the autocast
    rows.

    Args:
        device (str | torch.device): Where the models and the input go.
        arch (str | dict): The backbone's arch, as
            :func:`mmrest_tools.compared.build_rest` takes it (``'v2_'``
            names for ResT v2).
        state (dict): The backbone's weights (the other paths copy them).
        shape (tuple): The input's (N, C, H, W).
        mode (str): ``'eval_nograd'``, ``'eval_grad'``, ``'train_grad'``
            or ``'train_grad_cp'`` (training mode and gradient
            checkpointing: any mode ending in ``'_cp'``).
        to_literal (callable): Makes the literal copy of a backbone.
    """

    def __init__(self, device, arch, state, shape, mode, to_literal):
        self.dev = device
        self.arch, self.state, self.shape = arch, state, shape
        self.to_literal = to_literal
        self.train = mode.startswith('train')
        self.grad = mode != 'eval_nograd'
        self.cp = mode.endswith('_cp')
        self.shape_s = 'x'.join(map(str, shape))
        self.built = {}

    def build(self):
        """The fast path, its literal copy (or, where ``to_literal``
        fails, none) and the float64 reference, and the input."""
        built, arch, cp = self.built, self.arch, self.cp
        fast = build_rest(arch, with_cp=cp) if cp else build_rest(arch)
        fast.load_state_dict(self.state)
        fast.to(self.dev)
        try:
            lit = self.to_literal(fast)
            ref = self.to_literal(fast).double()
            built['reference'] = 'literal path in float64'
        except Exception as e:  # noqa: BLE001
            lit = None
            ref = copy.deepcopy(fast).double()
            built['reference'] = ('fast path in float64 (to_literal: '
                                  f'{_short_error(e, 120)})')
        for m in (fast, lit, ref):
            if m is not None:
                m.train(self.train)
        built.update(fast=fast, lit=lit, ref=ref)
        gen = torch.Generator().manual_seed(1)
        built['x'] = torch.randn(
            *self.shape, generator=gen, dtype=torch.float64).to(self.dev)
        return {}

    def run(self, model, dtype, amp):
        """Outputs (float64) and, with gradients, the parameters'
        gradients of a fixed random weighting of the outputs."""
        built, grad = self.built, self.grad
        model.zero_grad(set_to_none=True)
        x = built['x'].to(dtype)
        with torch.set_grad_enabled(grad), _autocast(self.dev, amp):
            outs = model(x)
        outs = [o.double() for o in outs]
        grads = {}
        if grad:
            if 'w' not in built:
                gen = torch.Generator().manual_seed(2)
                built['w'] = [
                    (torch.randn(o.shape, generator=gen, dtype=torch.float64) /
                     math.sqrt(o.numel())).to(self.dev) for o in outs
                ]
            loss = sum((o * w).sum() for o, w in zip(outs, built['w']))
            loss.backward()
            grads = {
                n: p.grad.detach().double().clone()
                for n, p in model.named_parameters() if p.grad is not None
            }
            model.zero_grad(set_to_none=True)
        return [o.detach() for o in outs], grads

    def fp32_row(self):
        """Float32: each path against the float64 reference."""
        built, grad, run = self.built, self.grad, self.run
        self.build()
        ref_o, ref_g = run(built['ref'], torch.float64, None)
        built['ref_o'], built['ref_g'] = ref_o, ref_g
        fo, fg = run(built['fast'], torch.float32, None)
        built['fast32'] = (fo, fg)
        row = dict(
            reference=built['reference'], err_fast=output_error(fo, ref_o))
        if grad:
            row['grad_err_fast'] = grad_error(fg, ref_g)
        if built['lit'] is not None:
            lo, lg = run(built['lit'], torch.float32, None)
            built['lit32'] = (lo, lg)
            row['err_literal'] = output_error(lo, ref_o)
            if grad:
                row['grad_err_literal'] = grad_error(lg, ref_g)
            row['ratio'] = row['err_fast'] / max(row['err_literal'], 1e-300)
            row['pass'] = bool(
                row['err_fast'] <= 4 * row['err_literal'] + FP32_FLOOR
                and (not grad or row['grad_err_fast']
                     <= 4 * row['grad_err_literal'] + FP32_FLOOR))
        return row

    def amp_row(self, amp):
        """Autocast ``amp``: each path against its own float32 result."""
        built, grad, run = self.built, self.grad, self.run
        if 'fast32' not in built:
            raise RuntimeError('no float32 result to compare with '
                               '(the float32 row failed)')
        fo, fg = run(built['fast'], torch.float32, amp)
        f32o, f32g = built['fast32']
        row = dict(err_fast=output_error(fo, f32o))
        finite = all(bool(torch.isfinite(g).all()) for g in fg.values())
        if grad:
            row['grad_err_fast'] = grad_error(fg, f32g)
            row['grads_finite_fast'] = finite
        if built.get('lit32') is not None:
            lo, lg = run(built['lit'], torch.float32, amp)
            l32o, l32g = built['lit32']
            row['err_literal'] = output_error(lo, l32o)
            if grad:
                row['grad_err_literal'] = grad_error(lg, l32g)
                row['grads_finite_literal'] = all(
                    bool(torch.isfinite(g).all()) for g in lg.values())
            row['ratio'] = row['err_fast'] / max(row['err_literal'], 1e-300)
            row['pass'] = bool(
                row['err_fast'] <= AMP_FACTOR * row['err_literal'] + AMP_FLOOR
                and (not grad or finite))
        return row
