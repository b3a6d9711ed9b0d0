"""Checkpoints: the authors' format through init_cfg, mmengine's own, and
files that must be refused."""
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from mmrest import ResT
from mmrest.checkpoint import CheckpointError


def authors_checkpoint(arch='lite', seed=1):
    """A classifier state dict as the authors save it (with its head)."""
    torch.manual_seed(seed)
    model = ResT(arch=arch, out_indices=(3, ))
    model.init_weights()
    state = model.state_dict()
    state['head.weight'] = torch.randn(1000, model.embed_dims[3])
    state['head.bias'] = torch.randn(1000)
    return state


def pretrained(path, arch='lite', **kwargs):
    model = ResT(arch=arch,
                 init_cfg=dict(type='Pretrained', checkpoint=str(path),
                               **kwargs))
    model.init_weights()
    return model


@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict'])
def test_authors_checkpoint_loads_through_init_cfg(tmp_path, wrap):
    state = authors_checkpoint()
    path = tmp_path / 'rest_lite.pth'
    torch.save(state if wrap is None else {wrap: state}, path)
    model = pretrained(path)
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith('head.'):
            assert key not in own
        else:
            assert torch.equal(own[key], value), key
    # norm1..norm3 are not in a classifier checkpoint: left initialised
    assert torch.all(model.norm1.weight == 1)


def test_detector_checkpoint_with_prefix(tmp_path):
    state = {f'backbone.{k}': v for k, v in authors_checkpoint().items()}
    state['neck.lateral.weight'] = torch.zeros(3)
    torch.save({'state_dict': state, 'meta': {'epoch': 12}},
               tmp_path / 'det.pth')
    model = pretrained(tmp_path / 'det.pth', prefix='backbone.')
    assert torch.equal(model.stage1[0].attn.q.weight,
                       state['backbone.stage1.0.attn.q.weight'])


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / 'nowhere' / 'rest_small.pth'
    with pytest.raises(FileNotFoundError, match='rest_small.pth'):
        pretrained(path)


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / 'rest_lite.pth'
    torch.save(authors_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncate' else
                     b'not a checkpoint at all' * 100)
    with pytest.raises(CheckpointError, match='rest_lite.pth'):
        pretrained(path)


def test_checkpoint_of_another_variant_lists_the_keys(tmp_path):
    path = tmp_path / 'rest_base.pth'
    state = authors_checkpoint('base')
    state['stem.norm1.num_batches_tracked'] = torch.tensor(7)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        pretrained(path, arch='lite')
    message = str(info.value)
    assert 'rest_base.pth' in message
    assert 'stem.conv1.weight: checkpoint (48, 3, 3, 3) vs model ' \
           '(32, 3, 3, 3)' in message
    # a non-strict load is the user's explicit choice: what fits loads
    model = pretrained(path, arch='lite', strict=False)
    assert model.stem.norm1.num_batches_tracked.item() == 7
    assert model.stem.conv1.weight.shape == (32, 3, 3, 3)


class Payload:
    """Pickles as a call to os.system: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'rest_lite.pth'
    state = authors_checkpoint()
    state['evil'] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match='Refused'):
        pretrained(path)
    assert not marker.exists()
    # the same file through mmengine's loader is refused too
    from mmengine.runner import load_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(nn.Linear(1, 1), str(path))
    assert not marker.exists()


class RandomImages(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.rand(3, 32, 32, generator=g),
                    label=torch.tensor(i % 2))


class ToyClassifier(BaseModel):

    def __init__(self):
        super().__init__()
        self.backbone = ResT(arch=dict(embed_dims=[8, 16, 32, 64],
                                       depths=[1, 1, 1, 1],
                                       num_heads=[1, 2, 4, 8],
                                       sr_ratios=[8, 4, 2, 1],
                                       mlp_ratios=[2, 2, 2, 2]),
                             out_indices=(3, ))
        self.head = nn.Linear(64, 2)

    def forward(self, inputs, label, mode='loss'):
        logits = self.head(self.backbone(inputs)[0].mean(dim=(2, 3)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, label))
        return logits


def _runner(work_dir, max_iters, resume=False):
    from mmengine.runner import Runner
    return Runner(
        model=ToyClassifier(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=RandomImages(), batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2],
                             by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=2, by_epoch=False)),
        randomness=dict(seed=0),
        resume=resume,
        default_scope='mmdet')


def test_mmengine_checkpoint_saves_and_resumes(tmp_path):
    runner = _runner(tmp_path, 2)
    runner.train()
    path = tmp_path / 'iter_2.pth'
    assert path.is_file()
    # the checkpoint holds more than tensors (message hub, numpy values) ...
    ckpt = torch.load(path, weights_only=True)
    assert {'meta', 'state_dict', 'optimizer', 'message_hub'} <= set(ckpt)
    # ... and resuming reads all of it back
    resumed = _runner(tmp_path, 4, resume=True)
    resumed.train()
    assert resumed.iter == 4
    assert (tmp_path / 'iter_4.pth').is_file()
    # load_from into a detector-style prefix works through init_cfg too
    model = pretrained(path, arch=ToyClassifier().backbone.arch_settings,
                       prefix='backbone.')
    assert torch.equal(model.stage4[0].attn.q.weight,
                       ckpt['state_dict']['backbone.stage4.0.attn.q.weight'])


def test_allow_list_is_narrow():
    """Only data types are allowed: nothing that calls or looks up."""
    import builtins
    allowed = torch.serialization.get_safe_globals()
    for dangerous in (builtins.getattr, builtins.eval, builtins.exec,
                      os.system, __import__):
        assert dangerous not in allowed
    from mmengine.logging import HistoryBuffer
    assert HistoryBuffer in allowed
