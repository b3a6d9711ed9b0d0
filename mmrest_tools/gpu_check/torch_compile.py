# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``compile``: ``torch.compile`` of ResT-Small in a child process
with a time limit."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict

import torch

from .base import DeadlinePassed
from .measure import _autocast, _short_error, _sync, output_error, time_calls
from .models import build_rest
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
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return dict(
                error=f'timed out after {budget:.0f} s', log_tail=out[-1500:])
        for line in out.splitlines()[::-1]:
            if line.startswith('COMPILE_RESULT '):
                return json.loads(line[len('COMPILE_RESULT '):])
        return dict(
            error=f'child exited {proc.returncode} without a result',
            log_tail=out[-1500:])


def compile_worker(args: Dict):
    """Child process of the compile section: ResT-Small eval under fp16
    autocast, eager and ``torch.compile``; prints one ``COMPILE_RESULT``
    JSON line."""
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
    if 'eager_error' in res and 'error' not in res:
        res['error'] = 'eager: ' + res['eager_error']
    print('COMPILE_RESULT ' + json.dumps(res), flush=True)
