# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``compile``: ``torch.compile`` of ResT-Small in a child process
with a time limit: inference at one size, then training steps at several
sizes as a multi-scale run has them (automatic dynamic shapes, as
mmengine's ``compile=True``)."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import torch

from ..compared import build_rest
from .base import DeadlinePassed
from .measure import (_autocast, _short_error, _sync, grad_error, output_error,
                      recording_backend, time_calls, time_steps)
from .settings import REPO_ROOT


class CompileSection:
    """The ``compile`` section of :class:`~.GpuCheck`."""

    def compile(self, sec: Dict, backend: str):
        budget = min(self.compile_budget_s, self.remaining() - 5)
        sec['settings'] = dict(backend=backend, budget_s=budget)
        if budget < 30:
            raise DeadlinePassed(
                f'not started: torch.compile ({budget:.0f} s left < 30 s)')
        self._guarded_row(sec, dict(kind='compile', model='rest_small'),
                          lambda: self._compile_child(backend, budget))

    def _compile_child(self, backend: str, budget: float) -> Dict:
        self._free()
        args = dict(
            device=str(self.device),
            shape=list(self.s.small),
            repeats=self.s.repeats,
            warmup=self.s.warmup,
            train_sizes=[list(size) for size in self.s.train_sizes],
            train_repeats=self.s.train_repeats,
            train_warmup=self.s.train_warmup,
            backend=backend)
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO_ROOT] +
            [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
        code = ('import json, sys; from mmrest_tools.gpu_check import '
                'compile_worker; compile_worker(json.loads(sys.argv[1]))')
        proc = subprocess.Popen([sys.executable, '-c', code,
                                 json.dumps(args)],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                text=True,
                                env=env,
                                start_new_session=True)
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            timed_out = True
        return read_child_result(out, proc.returncode, timed_out, budget)


def read_child_result(out: str, returncode, timed_out: bool,
                      budget: float) -> Dict:
    """The compile child's row from its output ``out``: the last
    ``COMPILE_RESULT`` line (the child prints one after each part); if the
    time limit cut the multi-scale training short, that part's error says
    so and the inference figures stay."""
    for line in out.splitlines()[::-1]:
        if line.startswith('COMPILE_RESULT '):
            res = json.loads(line[len('COMPILE_RESULT '):])
            if timed_out and 'multi_scale_training' not in res:
                res['multi_scale_training'] = dict(
                    error=f'timed out after {budget:.0f} s')
            return res
    error = (f'timed out after {budget:.0f} s'
             if timed_out else f'child exited {returncode} without a result')
    return dict(error=error, log_tail=out[-1500:])


def compile_worker(args: Dict):
    """Child process of the compile section: ResT-Small eval under fp16
    autocast, eager and ``torch.compile``, then :func:`multi_scale_training`
    at ``train_sizes``; prints a ``COMPILE_RESULT`` JSON line after each
    part (the parent reads the last)."""
    dev = torch.device(args['device'])
    torch.backends.cudnn.benchmark = True
    model = build_rest('small').to(dev)
    x = torch.rand(
        *args['shape'], generator=torch.Generator().manual_seed(5)).to(dev)
    res = dict(backend=args['backend'])
    amp = torch.float16
    eager = None
    try:
        with torch.no_grad(), _autocast(dev, amp):
            eager = [o.float() for o in model(x)]
            ms = time_calls(lambda: model(x), dev, args['repeats'],
                            args['warmup'])
        res['eager_ms'] = statistics.median(ms)
    except Exception as e:  # noqa: BLE001 (compile is still tried)
        res['eager_error'] = _short_error(e)
    try:
        compiled = torch.compile(model, backend=args['backend'])
        t = time.perf_counter()
        with torch.no_grad(), _autocast(dev, amp):
            outs = [o.float() for o in compiled(x)]
            _sync(dev)
            res['compile_s'] = time.perf_counter() - t
            ms = time_calls(lambda: compiled(x), dev, args['repeats'],
                            args['warmup'])
        res['compiled_ms'] = statistics.median(ms)
        res['img_s'] = args['shape'][0] * 1e3 / res['compiled_ms']
        if eager is not None:
            res['speedup'] = res['eager_ms'] / res['compiled_ms']
            res['err_vs_eager'] = output_error(outs, eager)
    except Exception as e:  # noqa: BLE001
        res['error'] = 'torch.compile: ' + _short_error(e)
    print('COMPILE_RESULT ' + json.dumps(res), flush=True)  # if cut short
    if args.get('train_sizes'):
        try:
            res['multi_scale_training'] = multi_scale_training(
                model, dev, [tuple(s) for s in args['train_sizes']],
                args['backend'], args['train_repeats'], args['train_warmup'],
                amp)
        except Exception as e:  # noqa: BLE001 (the row keeps the rest)
            res['multi_scale_training'] = dict(error=_short_error(e))
    if 'eager_error' in res and 'error' not in res:
        res['error'] = 'eager: ' + res['eager_error']
    print('COMPILE_RESULT ' + json.dumps(res), flush=True)


def multi_scale_inputs(sizes: Sequence[Sequence[int]],
                       device: torch.device) -> List[torch.Tensor]:
    """The batches of :func:`multi_scale_training`, one per size (N, C, H,
    W): uniform random numbers, the same in every run."""
    gen = torch.Generator().manual_seed(7)
    return [torch.rand(*size, generator=gen).to(device) for size in sizes]


def training_loss(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The loss of :func:`multi_scale_training`'s steps: the sum of the
    mean squares of the outputs, in float32 (or the outputs' dtype if
    wider)."""
    return sum(o.float().square().mean() for o in outs)


def multi_scale_training(model: torch.nn.Module, device: torch.device,
                         sizes: Sequence[Sequence[int]], backend: str,
                         repeats: int, warmup: int, amp) -> Dict:
    """Training steps of ``model`` (train mode, autocast ``amp``; the loss is
    the sum of the mean squares of its outputs) at each of ``sizes`` (N, C,
    H, W) in turn: eager, and under ``torch.compile`` with automatic
    dynamic shapes (the first size compiles a static graph, the second a
    symbolic one, which should serve the rest). ``model`` must have no
    randomness in train mode (no drop path; :func:`compile_worker`'s
    ResT-Small has none): eager and compiled code draw different random
    numbers, and the gradients would not compare.

    Returns a dict: ``graphs`` (whether each graph dynamo compiled is
    symbolic), ``first_pass_s`` (the compiled steps' first pass over the
    sizes, compilations included), ``grad_err`` (per size, the compiled
    step's gradients against the eager step's, relative L2 over all
    parameters), ``eager_ms`` and ``compiled_ms`` (per size, the median of
    ``repeats`` steps after ``warmup``), ``graphs_while_timed`` (graphs
    compiled after the first pass: 0 unless a size recompiled).
    """
    model.train()
    torch._dynamo.reset()  # no frame or size history from earlier calls
    compiling, graphs = recording_backend(backend)
    compiled = torch.compile(model, backend=compiling)
    inputs = multi_scale_inputs(sizes, device)

    def step(runner, x):

        def run():
            model.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                outs = runner(x)
            training_loss(outs).backward()

        return run

    def grads():
        return {
            n: p.grad.detach().float().clone()
            for n, p in model.named_parameters() if p.grad is not None
        }

    res: Dict[str, object] = dict(sizes=[list(s) for s in sizes])
    errors: List[float] = []
    first_pass = 0.0
    for x in inputs:
        step(model, x)()
        eager = grads()
        _sync(device)
        t = time.perf_counter()
        step(compiled, x)()
        _sync(device)
        first_pass += time.perf_counter() - t
        errors.append(grad_error(grads(), eager))
    res.update(graphs=list(graphs), first_pass_s=first_pass, grad_err=errors)
    compiled_before = len(graphs)
    for key, runner in (('eager_ms', model), ('compiled_ms', compiled)):
        res[key] = [
            statistics.median(
                time_steps(step(runner, x), device, repeats, warmup))
            for x in inputs
        ]
    res['graphs_while_timed'] = len(graphs) - compiled_before
    torch._dynamo.reset()
    return res
