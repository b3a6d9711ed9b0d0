# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``throughput``: backbone speed and memory, inference and the
training step."""
import statistics
from typing import Dict, Sequence

import torch

from ..compared import build_backbone
from .measure import (_autocast, _mib, _short_error, backbone_step,
                      set_cudnn_benchmark, time_calls, time_steps)


class ThroughputSection:
    """The ``throughput`` section of :class:`~.GpuCheck`."""

    def throughput(self, sec: Dict, names: Sequence[str]):
        from mmrest.backbones.kernels import emsa_core
        bench = set_cudnn_benchmark('throughput')
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        sec['settings'] = dict(
            cudnn_benchmark=bench,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            repeats=self.s.repeats,
            warmup=self.s.warmup,
            small='x'.join(map(str, self.s.small)),
            large='x'.join(map(str, self.s.large)),
            train='x'.join(map(str, self.s.train)),
            train_warmup=self.s.train_warmup,
            train_repeats=self.s.train_repeats,
            emsa_core=emsa_core(self.device),
            emsa_inference_core=emsa_core(self.device, autograd=False))
        sec['settings']['amp'] = self.s.amp_name
        for name in names:
            self.log(f'  throughput {name}')
            self._guarded_row(
                sec,
                dict(kind='throughput', model=name),
                lambda: self._throughput_one(name),
                need_s=10.0)

    def _throughput_one(self, name: str) -> Dict:
        dev = self.device
        model = build_backbone(name, quick=self.s.quick).to(dev)
        # inference in eval mode whatever the builder gives (its steps
        # train); not chained: mmdet's Swin's train() returns None
        model.eval()
        row = dict(params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        gen = torch.Generator().manual_seed(4)
        row.update(self._inference_times(model, gen))
        x = torch.rand(*self.s.train, generator=gen).to(dev)
        for amp in ('fp32', 'amp'):
            tag = f'train_{amp}'
            amp = self.s.amp if amp == 'amp' else None
            try:
                row.update({
                    f'{tag}_{k}': v
                    for k, v in self._train_step_memory(model, x, amp).items()
                })
            except Exception as e:  # noqa: BLE001
                row[f'{tag}_error'] = _short_error(e)
                self._free()
        del model, x
        self._free()
        return row

    def _inference_times(self, model, gen: torch.Generator) -> Dict:
        """``model`` without autograd on the small and the large input
        (drawn from ``gen`` in that order), in float32 and, with an
        autocast dtype set, under it (tagged ``fp16``): per tag the median
        milliseconds, images a second and every timing (``_all_ms``), or
        the error."""
        dev, row = self.device, {}
        for key, shape in (('small', self.s.small), ('large', self.s.large)):
            x = torch.rand(*shape, generator=gen).to(dev)
            for amp in (None, self.s.amp) if self.s.amp else (None, ):
                tag = f'{key}_{"fp32" if amp is None else "fp16"}'
                try:
                    with torch.no_grad(), _autocast(dev, amp):
                        ms = time_calls(
                            lambda m=model, t=x: m(t),
                            dev,
                            self.s.repeats,
                            self.s.warmup)
                    med = statistics.median(ms)
                    row.update({
                        f'{tag}_ms': med,
                        f'{tag}_img_s': shape[0] * 1e3 / med,
                        f'{tag}_all_ms': ms
                    })
                except Exception as e:  # noqa: BLE001 (recorded)
                    row[f'{tag}_error'] = _short_error(e)
                    self._free()
            del x
        return row

    def _train_step_memory(self, model, x, amp) -> Dict:
        """A backbone's training step (train mode, forward, a loss of all
        outputs, backward; under ``amp`` autocast): the median of
        ``train_repeats`` timed steps after ``train_warmup`` untimed ones
        (:func:`time_steps`), each step's milliseconds, and the peak memory
        of a step (``max_memory_allocated`` over the timed steps minus
        what was allocated before them: parameters and input, no
        gradients; CUDA only)."""
        dev = self.device

        def step():
            model.zero_grad(set_to_none=True)
            backbone_step(model, x, amp)

        model.train()
        try:
            for _ in range(self.s.train_warmup):
                step()
            model.zero_grad(set_to_none=True)
            if dev.type == 'cuda':
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
            times = time_steps(step, dev, self.s.train_repeats, 0)
            out = dict(step_ms=statistics.median(times), step_all_ms=times)
            if dev.type == 'cuda':
                peak = torch.cuda.max_memory_allocated(dev)
                out.update(
                    peak_MiB=_mib(peak), step_peak_MiB=_mib(peak - before))
            else:
                out.update(peak_MiB=None, step_peak_MiB=None)
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()
        return out
