"""tools/train.py with ``load_from`` or ``--resume`` needs no ImageNet file
when the checkpoint it loads holds the backbone: mmengine initialises the
model (the backbone from ``checkpoints/rest_<arch>.pth``) and then loads or
resumes the checkpoint over it. When there is nothing to load (``--resume``
with no checkpoint in the work dir: mmengine starts afresh), or the
checkpoint holds no backbone, the ImageNet file is needed and its absence
stops the run at once."""
import os
import sys

import pytest
import torch
from _helpers import ROOT, CallCounter, Reduce, build_detector, run_program

from mmrest.checkpoint import CheckpointError, load_checkpoint_file

MASK_RCNN = str(ROOT / 'configs/mask_rcnn/mask-rcnn_rest-lite_fpn_1x_coco.py')
RETINANET = str(ROOT / 'configs/retinanet/retinanet_rest-lite_fpn_1x_coco.py')
IMAGENET = 'checkpoints/rest_lite.pth'  # the configs' path, relative


def setup(*argv):
    from mmrest_tools.launch import parse_args, setup_train_cfg, train_parser
    return setup_train_cfg(parse_args(train_parser(), [str(a) for a in argv]))


@pytest.fixture
def no_imagenet(tmp_path, monkeypatch):
    """Run from an empty folder (no checkpoints/rest_lite.pth), without the
    data check (the COCO data is not here: test_bad_data.py tests it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr('mmrest_tools.launch.check_data_paths',
                        lambda *args, **kwargs: None)
    assert not os.path.exists(IMAGENET)
    return tmp_path


def fake_checkpoint(path, prefixes=('backbone.', 'neck.')):
    """A small checkpoint with keys under ``prefixes`` (all the option
    handling reads is the keys)."""
    state = {f'{p}w': torch.zeros(1) for p in prefixes}
    torch.save(dict(meta=dict(epoch=1), state_dict=state), path)
    return path


def test_load_from_needs_no_imagenet_file(no_imagenet):
    with pytest.raises(FileNotFoundError, match='rest_lite.pth'):
        setup(MASK_RCNN)  # the check itself is on
    ckpt = fake_checkpoint(no_imagenet / 'coco.pth')
    cfg = setup(MASK_RCNN, '--cfg-options', f'load_from={ckpt}')
    assert cfg.model.backbone.init_cfg is None  # from the checkpoint
    assert cfg.load_from == str(ckpt) and not cfg.resume


def test_resume_from_a_path_needs_no_imagenet_file(no_imagenet):
    ckpt = fake_checkpoint(no_imagenet / 'epoch_3.pth')
    cfg = setup(MASK_RCNN, '--resume', ckpt)
    assert cfg.model.backbone.init_cfg is None
    assert cfg.resume and cfg.load_from == str(ckpt)


def test_auto_resume_needs_the_file_only_with_nothing_to_resume(no_imagenet):
    work = no_imagenet / 'work'
    work.mkdir()
    # nothing in the work dir: mmengine starts afresh, the file is needed
    with pytest.raises(
            FileNotFoundError,
            match=r"rest_lite.pth.*found no checkpoint in the "
            r"work dir"):
        setup(MASK_RCNN, '--resume', '--work-dir', work)
    ckpt = fake_checkpoint(work / 'epoch_2.pth')
    (work / 'last_checkpoint').write_text(str(ckpt))
    cfg = setup(MASK_RCNN, '--resume', '--work-dir', work)
    assert cfg.model.backbone.init_cfg is None
    assert cfg.resume and cfg.load_from is None


def test_a_checkpoint_without_the_backbone_does_not_replace_it(no_imagenet):
    ckpt = fake_checkpoint(
        no_imagenet / 'head_only.pth', prefixes=('roi_head.', ))
    with pytest.raises(
            FileNotFoundError,
            match=r"rest_lite.pth.*head_only.pth.*holds no "
            r"weights of model.backbone"):
        setup(MASK_RCNN, '--cfg-options', f'load_from={ckpt}')


def test_checkpoint_to_load_as_mmengine_decides(tmp_path):
    """``load_from`` first; ``last_checkpoint`` of the work dir only with
    ``resume`` (mmengine ignores it otherwise) and a work dir; and only
    ``type='Pretrained'`` init configs name ImageNet files that must
    exist."""
    from mmrest_tools.prerun_checks import (checkpoint_to_load,
                                            find_missing_pretrained)
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text(str(work / 'epoch_3.pth'))
    assert checkpoint_to_load(
        dict(load_from='a.pth', resume=True, work_dir=str(work))) == 'a.pth'
    assert checkpoint_to_load(dict(resume=True, work_dir=str(work))) == \
        str(work / 'epoch_3.pth')
    assert checkpoint_to_load(dict(resume=False, work_dir=str(work))) is None
    assert checkpoint_to_load(dict(resume=True)) is None
    assert find_missing_pretrained(
        dict(
            backbone=dict(
                init_cfg=dict(type='Pretrained', checkpoint='gone.pth')),
            neck=dict(init_cfg=dict(type='Other', checkpoint='gone2.pth')),
            head=[dict(type='Pretrained',
                       checkpoint='https://x/y.pth')])) == ['gone.pth']


def test_reading_load_from_runs_no_code(tmp_path, monkeypatch):
    """The keys of ``load_from`` are read by mmrest's weights-only loader,
    memory-mapped (on torch 2.1 too; the arguments recorded); a checkpoint
    carrying a payload is refused and the payload never runs."""
    from mmrest_tools import prerun_checks
    monkeypatch.chdir(tmp_path)
    good = fake_checkpoint(tmp_path / 'good.pth')
    loads = CallCounter(
        monkeypatch, prerun_checks, 'safe_torch_load', record=True)
    assert prerun_checks._state_dict_keys(
        str(good)) == ['backbone.w', 'neck.w']
    ((_, kwargs), ) = loads.calls
    assert kwargs == dict(mmap=True)
    _state_dict_keys = prerun_checks._state_dict_keys
    torch.save(
        dict(
            state_dict={'backbone.w': torch.zeros(1)},
            meta=Reduce(os.system, 'touch pwned')), 'evil.pth')
    with pytest.raises(CheckpointError, match='holds objects other than'):
        _state_dict_keys('evil.pth')
    assert not (tmp_path / 'pwned').exists()


def test_pretrained_search_passes_over_empty_init_cfgs(no_imagenet):
    """Init configs that are None, or lists holding None, are passed over
    on the way to the Pretrained one."""
    from mmengine.config import Config

    from mmrest_tools.prerun_checks import skip_pretrained_loaded_over
    ckpt = fake_checkpoint(no_imagenet / 'coco.pth')
    cfg = Config.fromfile(MASK_RCNN)
    cfg.model.neck.init_cfg = None
    cfg.model.rpn_head.init_cfg = [None, dict(type='Normal', std=0.01)]
    cfg.load_from = str(ckpt)
    assert len(skip_pretrained_loaded_over(cfg)) == 1
    assert cfg.model.backbone.init_cfg is None


def test_missing_resume_checkpoint(no_imagenet):
    """``--resume FILE`` of a local file that is not there stops before
    anything is built, naming the option."""
    with pytest.raises(
            FileNotFoundError,
            match=r"--resume: checkpoint not found: 'nope.pth'"):
        setup(MASK_RCNN, '--resume', 'nope.pth')


def test_bad_load_from(no_imagenet):
    with pytest.raises(
            FileNotFoundError,
            match=r"load_from: checkpoint not found: .*nope.pth"):
        setup(MASK_RCNN, '--cfg-options', 'load_from=nope.pth')
    broken = no_imagenet / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='broken.pth'):
        setup(MASK_RCNN, '--cfg-options', f'load_from={broken}')


def test_with_the_imagenet_file_nothing_changes(no_imagenet):
    os.makedirs('checkpoints')
    open(IMAGENET, 'wb').close()
    ckpt = fake_checkpoint(no_imagenet / 'coco.pth')
    cfg = setup(MASK_RCNN, '--cfg-options', f'load_from={ckpt}')
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=IMAGENET)


def test_only_the_missing_pretrained_entry_is_dropped(tmp_path):
    """init_cfg as a list: the Pretrained entry goes, the others stay; a
    Pretrained init of a module the checkpoint covers too (the neck's)."""
    from mmengine.config import Config

    from mmrest_tools.prerun_checks import skip_pretrained_loaded_over
    ckpt = fake_checkpoint(tmp_path / 'coco.pth')
    cfg = Config(
        dict(
            load_from=str(ckpt),
            model=dict(
                backbone=dict(init_cfg=[
                    dict(
                        type='Pretrained', checkpoint=str(tmp_path / 'x.pth')),
                    dict(type='Constant', val=1, layer='Conv2d')
                ]),
                neck=dict(
                    init_cfg=dict(
                        type='Pretrained', checkpoint=str(tmp_path /
                                                          'y.pth'))),
                head=dict(init_cfg=dict(type='Normal', std=0.01)))))
    notes = skip_pretrained_loaded_over(cfg)
    assert cfg.model.backbone.init_cfg == [
        dict(type='Constant', val=1, layer='Conv2d')
    ]
    assert cfg.model.neck.init_cfg is None
    assert cfg.model.head.init_cfg == dict(type='Normal', std=0.01)
    assert len(notes) == 2 and 'model.backbone' in notes[0]


def test_train_tool_runs_from_load_from_without_imagenet(tiny_coco, tmp_path):
    """tools/train.py, started where checkpoints/rest_lite.pth does not
    exist, trains one iteration from a COCO checkpoint given as load_from.
    With a zero learning rate the weights it saves are the checkpoint's:
    the backbone came from the checkpoint, not from an ImageNet file."""
    _, model = build_detector(RETINANET)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    ckpt = tmp_path / 'coco.pth'
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), ckpt)
    work = tmp_path / 'work'
    options = {
        **tiny_coco, 'train_cfg.max_iters': 1,
        'optim_wrapper.optimizer.lr': 0.0,
        'load_from': str(ckpt),
        'val_cfg': None,
        'val_dataloader': None,
        'val_evaluator': None
    }
    options = {
        k: v
        for k, v in options.items()
        if not k.startswith(('val_dataloader.', 'val_evaluator.', 'test_'))
    }
    output = run_program([
        sys.executable, ROOT / 'tools/train.py', RETINANET, '--work-dir', work,
        '--cfg-options', *[f'{k}={v}' for k, v in options.items()]
    ],
                         cwd=tmp_path).output
    assert not (tmp_path / IMAGENET).exists()
    assert 'is missing and not needed' in output
    assert 'Load checkpoint from' in output
    # an mmengine checkpoint (message hub and all), weights-only on every
    # supported torch
    saved = load_checkpoint_file(str(work / 'iter_1.pth'))['state_dict']
    for name, param in model.named_parameters():
        assert torch.equal(saved[name], param), name
    for path in work.glob('*.pth'):  # 100 MB each
        path.unlink()
