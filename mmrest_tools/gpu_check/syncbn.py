# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``syncbn``: SyncBN in a one-process group."""
from typing import Dict

import torch

from .measure import backbone_step, output_error


class SyncBNSection:
    """The ``syncbn`` section of :class:`~.GpuCheck`."""

    def syncbn(self, sec: Dict):
        """``norm_cfg=dict(type='SyncBN')`` in a one-process group: a
        training step (torch's SyncBatchNorm path on the device) and eval
        outputs equal to the same weights with plain BatchNorm."""
        import torch.distributed as dist

        from mmrest import ResT
        dev = self.device
        own_group = not dist.is_initialized()
        if own_group:
            dist.init_process_group(
                'nccl' if dev.type == 'cuda' else 'gloo',
                init_method='tcp://127.0.0.1:29533',
                rank=0,
                world_size=1)
        try:
            torch.manual_seed(0)
            sync = ResT(arch='lite', norm_cfg=dict(type='SyncBN'))
            sync.init_weights()
            plain = ResT(arch='lite')
            plain.load_state_dict(sync.state_dict())
            sync, plain = sync.to(dev).train(), plain.to(dev).train()
            x = torch.randn(2, 3, 224, 288, device=dev)
            outs = backbone_step(sync, x)
            finite = all(
                torch.isfinite(p.grad).all().item() for p in sync.parameters()
                if p.grad is not None)
            ref = plain(x)
            train_err = output_error(outs, ref)
            sync.eval(), plain.eval()
            with torch.no_grad():
                eval_err = output_error(sync(x), plain(x))
            kinds = sorted({
                type(m).__name__
                for m in sync.modules() if 'Norm' in type(m).__name__
            })
            self._row(
                sec,
                dict(
                    kind='syncbn',
                    model='rest_lite',
                    norms=kinds,
                    grads_finite=finite,
                    train_err_vs_bn=train_err,
                    eval_err_vs_bn=eval_err))
        finally:
            if own_group:
                dist.destroy_process_group()
