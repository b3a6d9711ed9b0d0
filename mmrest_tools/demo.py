# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The demos: embedded data in, a trained Mask R-CNN or UperNet out,
measured.

:func:`run_demo` is what ``make demo`` and ``make demo-seg`` run (through
``tools/run_demo.py``): it generates the shapes set when it is absent,
trains the detector or segmentor of a config with mmengine's ``Runner``
(the machinery of the COCO and ADE20K configs), evaluates it on the val
split (COCO bbox and segm mAP; mIoU and each class's IoU) and writes
``metrics.json``, ``loss.png`` and ``predictions.png`` to the work dir.
:func:`predict_image` is ``tools/demo.py``: one image, its predictions drawn.

The set is described in the config by a top-level ``shapes_data`` dict: the
keyword arguments of :func:`mmrest.synthetic.generate_shapes_coco` (its
``out_dir`` defaults to the dataloaders' ``data_root``).
"""
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from mmrest.synthetic import generate_shapes_coco, shapes_info
from mmrest.synthetic.shapes import recorded_params

# What the demos must reach on the val split (docs/demo.md): the detection
# demo and the segmentation demo (mIoU as a fraction).
TARGETS = {'coco/bbox_mAP': 0.50, 'coco/segm_mAP': 0.45}
SEG_TARGETS = {'mIoU': 0.60}


def targets_met(metrics: dict, targets: Optional[dict] = None) -> bool:
    """Whether every metric of ``targets`` (default :data:`TARGETS`)
    reaches its target."""
    targets = TARGETS if targets is None else targets
    return all(metrics[k] >= v for k, v in targets.items())


METRIC_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
               'coco/segm_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP_75')


def usable_cpus() -> int:
    """The CPUs this process may run on (every CPU where the OS has no
    affinity, at least one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Use one torch thread per CPU this process may run on (or
    ``num_threads``); more threads than cores only adds contention."""
    if num_threads is None:
        num_threads = usable_cpus()
    if num_threads < 1:
        raise ValueError(f'num_threads must be >= 1, got {num_threads}')
    torch.set_num_threads(num_threads)
    return num_threads


def is_segmentation_demo(cfg: Config) -> bool:
    """An mmseg config (``default_scope = 'mmseg'``): the segmentation
    demo; anything else is the detection demo."""
    return cfg.get('default_scope') == 'mmseg'


def _annotation_files(cfg: Config) -> Dict[str, str]:
    """The annotation file of each split the config reads. A detection
    config names it (``ann_file``); a segmentation config reads the images
    of ``<data_root>/<split>/`` and the label maps of ``<split>_labels/``,
    and the generator's record of that split is its COCO file."""
    files = {}
    for split in ('train', 'val'):
        dataset = cfg[f'{split}_dataloader']['dataset']
        root = dataset.get('data_root') or ''
        if not is_segmentation_demo(cfg):
            files[split] = osp.join(root, dataset['ann_file'])
            continue
        prefix = dataset.get('data_prefix') or {}
        name = osp.normpath(prefix.get('img_path', ''))
        expected = dict(img_path=name, seg_map_path=f'{name}_labels')
        if {k: osp.normpath(prefix.get(k, '')) for k in expected} != \
                expected or osp.sep in name or name in ('.', '..'):
            raise ValueError(
                f'{split}_dataloader.dataset.data_prefix must be '
                "dict(img_path='<split>/', seg_map_path='<split>_labels/') "
                f'(the layout the shapes generator writes), got {prefix!r}')
        files[name] = osp.join(root, 'annotations', f'instances_{name}.json')
    return files


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point the config's datasets and COCO evaluators at ``data_root``
    (the annotation and image paths under it stay as they are)."""
    old = cfg.train_dataloader.dataset.get('data_root') or ''
    data_root = osp.join(data_root, '')
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if loader:
            loader.dataset.data_root = data_root
        evaluator = cfg.get(f'{split}_evaluator')
        if evaluator and 'ann_file' in evaluator:
            ann = evaluator.ann_file
            if old and ann.startswith(old):
                ann = ann[len(old):]
            evaluator.ann_file = osp.join(data_root, ann)


def _expected_info(kwargs: dict) -> Dict[str, dict]:
    """What :func:`shapes_info` reads back from each split's file when the
    set was generated with ``kwargs``."""
    import inspect
    args = {
        k: p.default
        for k, p in inspect.signature(generate_shapes_coco).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    args.update(kwargs)
    splits = args['splits'] or {'train': 800, 'val': 100}
    return recorded_params(splits, args['image_size'], args['max_objects'],
                           args['object_size'], args['max_rotation'],
                           args['seed'], args['semantic_labels'])


def _label_maps_present(cfg: Config, infos: Dict[str, dict]) -> bool:
    """Whether a segmentation config's label maps are all there (true for
    a detection config)."""
    if not is_segmentation_demo(cfg):
        return True
    root = cfg.train_dataloader.dataset.get('data_root') or ''
    for split, info in infos.items():
        if info is None:  # not the generator's: left alone
            continue
        folder = osp.join(root, f'{split}_labels')
        names = [f'{i:06d}.png' for i in range(1, info['num_images'] + 1)]
        if not all(osp.isfile(osp.join(folder, n)) for n in names):
            return False
    return True


def prepare_shapes_data(cfg: Config, force: bool = False) -> bool:
    """Generate the config's shapes set unless it is there already.

    The set is regenerated when an annotation file is missing or was
    generated with other arguments than the config's ``shapes_data``; a
    COCO file that the generator did not write is left alone.

    Returns:
        bool: Whether the set was generated.
    """
    if 'shapes_data' not in cfg:
        raise KeyError('The config has no `shapes_data` dict: it does not '
                       'describe a generated shapes set')
    kwargs = dict(cfg.shapes_data)
    kwargs.setdefault('out_dir', cfg.train_dataloader.dataset.data_root)
    if is_segmentation_demo(cfg) and not kwargs.get('semantic_labels'):
        raise ValueError('A segmentation config reads label maps: its '
                         'shapes_data needs semantic_labels=True')
    files = _annotation_files(cfg)
    expected = _expected_info({
        k: v
        for k, v in kwargs.items() if k != 'out_dir'
    })
    missing = [s for s in files if s not in expected]
    if missing:
        raise ValueError(f'The config reads the splits {missing}, which '
                         f'shapes_data.splits ({sorted(expected)}) lacks')
    if not force and all(osp.isfile(f) for f in files.values()):
        infos = {s: shapes_info(f) for s, f in files.items()}
        if all(info is None or info == expected[s]
               for s, info in infos.items()) and \
                _label_maps_present(cfg, infos):
            return False
    written = generate_shapes_coco(**kwargs)
    unread = [
        f for f in files.values()
        if osp.abspath(f) not in map(osp.abspath, written.values())
    ]
    if unread:
        raise ValueError(
            f'shapes_data wrote {sorted(written.values())} but the config '
            f'reads {unread}: data_root and ann_file do not match the '
            'generated layout <data_root>/annotations/instances_<split>.json')
    return True


class _KeepMetrics(Hook):
    """Keeps the metrics of the last validation of a training run, and
    times the training iterations (validation excluded): wall-clock
    seconds and the CPU seconds of this process (all its threads), which
    other jobs on a loaded machine do not inflate as much."""
    priority = 'LOWEST'

    def __init__(self):
        self.metrics = None
        self.start = self.end = None  # (wall, cpu) seconds

    def before_train(self, runner):
        self.start = (time.time(), time.process_time())

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.end = (time.time(), time.process_time())

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


class _SegAreas(Hook):
    """Sums each class's intersection, union, predicted and true areas
    over the last validation (mmseg's ``IoUMetric.intersect_and_union``):
    the per-class IoU that mmseg's ``IoUMetric`` logs but does not
    return."""
    priority = 'LOWEST'

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.areas = None

    def before_val_epoch(self, runner):
        self.areas = None

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from mmseg.evaluation import IoUMetric
        for sample in outputs:
            pred = sample.pred_sem_seg.data.squeeze()
            areas = IoUMetric.intersect_and_union(
                pred,
                sample.gt_sem_seg.data.squeeze().to(pred), self.num_classes,
                self.ignore_index)
            self.areas = areas if self.areas is None else tuple(
                total + a for total, a in zip(self.areas, areas))


def seg_metrics(areas, classes: Sequence[str]) -> dict:
    """mIoU (a fraction, as mmseg's ``IoUMetric`` computes it before
    rounding and scaling by 100), the pixel accuracy ``aAcc`` and each
    class's IoU from the summed areas of :class:`_SegAreas`. A class in
    neither the labels nor the predictions has no IoU (None) and does not
    count in the mean, as in mmseg."""
    from mmseg.evaluation import IoUMetric
    result = IoUMetric.total_area_to_metrics(*areas, ['mIoU'])
    iou = np.asarray(result['IoU'], dtype=np.float64)
    return dict(
        mIoU=float(np.nanmean(iou)),
        aAcc=float(result['aAcc']),
        IoU={
            c: (None if np.isnan(v) else float(v))
            for c, v in zip(classes, iou)
        })


def read_scalars(path: str) -> List[dict]:
    """The records of mmengine's ``vis_data/scalars.json`` (JSON lines)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(
    records: Sequence[dict],
    out_file: str,
    title: str = 'Mask R-CNN, ResT backbone from scratch: '
    'training loss'
) -> None:
    """Plot the training losses logged by mmengine against the iteration:
    the total ``loss`` and each logged term with ``loss`` in its name
    (mmdet's ``loss_rpn_cls``, mmseg's ``decode.loss_ce``, ...)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    train = [r for r in records if 'loss' in r]
    if not train:
        raise ValueError('No training loss in the logged scalars')
    keys = ['loss'] + sorted(k
                             for k in train[0] if 'loss' in k and k != 'loss')
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    steps = [r['step'] for r in train]
    for key in keys:
        ax.plot(
            steps, [r.get(key, np.nan) for r in train],
            label=key,
            linewidth=2.2 if key == 'loss' else 1.0)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss (mean over the logging window)')
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def _colours(n: int) -> np.ndarray:
    import matplotlib
    return np.array(
        [matplotlib.colormaps['tab10'](i % 10)[:3] for i in range(n)])


def draw_instances(ax,
                   image: np.ndarray,
                   instances,
                   classes: Sequence[str],
                   score_thr: float = 0.0,
                   title: str = '') -> None:
    """Draw an RGB image with instance masks, boxes and labels on ``ax``.

    ``instances`` is mmdet's ``InstanceData`` (``bboxes``, ``labels``,
    optional ``masks`` and ``scores``); masks may be bitmaps, mmdet
    ``BitmapMasks``/``PolygonMasks`` or boolean tensors.
    """
    from matplotlib.patches import Rectangle
    h, w = image.shape[:2]
    canvas = image.astype(np.float32) / 255.
    bboxes = instances.bboxes
    bboxes = bboxes.tensor if hasattr(bboxes, 'tensor') else bboxes
    bboxes = np.asarray(torch.as_tensor(bboxes).cpu(), dtype=np.float32)
    labels = np.asarray(torch.as_tensor(instances.labels).cpu())
    scores = instances.scores.cpu().numpy() \
        if 'scores' in instances else None
    keep = np.ones(len(labels), bool) if scores is None else \
        scores >= score_thr
    masks = None
    if 'masks' in instances:
        masks = instances.masks
        if hasattr(masks, 'to_ndarray'):
            masks = masks.to_ndarray()
        masks = np.asarray(torch.as_tensor(masks).cpu()).astype(bool)
    colours = _colours(len(classes))
    if masks is not None:
        for i in np.nonzero(keep)[0]:
            m = masks[i]
            canvas[m] = 0.45 * canvas[m] + 0.55 * colours[labels[i]]
    ax.imshow(canvas, extent=(0, w, h, 0), interpolation='nearest')
    for i in np.nonzero(keep)[0]:
        x1, y1, x2, y2 = bboxes[i]
        colour = colours[labels[i]]
        ax.add_patch(
            Rectangle((x1, y1),
                      x2 - x1,
                      y2 - y1,
                      fill=False,
                      edgecolor=colour,
                      linewidth=1.5))
        text = classes[labels[i]]
        if scores is not None:
            text += f' {scores[i]:.2f}'
        ax.text(
            x1,
            y1,
            text,
            fontsize=6,
            color='white',
            va='bottom',
            bbox=dict(facecolor=colour, alpha=0.8, pad=0.5, linewidth=0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=8)
    ax.axis('off')


def draw_label_map(ax,
                   label_map: np.ndarray,
                   palette: Sequence,
                   title: str = '',
                   ignore_index: int = 255) -> None:
    """Draw a semantic label map on ``ax``, class ``k`` in the RGB colour
    ``palette[k]`` (0-255; ignored pixels white)."""
    label_map = np.asarray(label_map)
    colours = np.asarray(palette, dtype=np.float64) / 255.
    canvas = np.ones(label_map.shape + (3, ))
    valid = (label_map != ignore_index) & (label_map < len(colours))
    canvas[valid] = colours[label_map[valid]]
    ax.imshow(canvas, interpolation='nearest')
    ax.set_title(title, fontsize=8)
    ax.axis('off')


def _rgb(path: str) -> np.ndarray:
    import mmcv
    return mmcv.imread(path, channel_order='rgb')


def _plot_val_samples(model,
                      dataset,
                      out_file: str,
                      num_images: int,
                      panels: int,
                      draw,
                      per_row: int = 2,
                      legend=None) -> None:
    """A grid of the first val images, ``per_row`` a row, each drawn on
    ``panels`` axes by ``draw(axes, sample)`` with ``sample`` the model's
    prediction (its ``test_step`` output, which carries the ground
    truth); ``legend`` (handles) goes under the grid."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmengine.dataset import pseudo_collate
    num_images = min(num_images, len(dataset))
    if num_images < 1:
        raise ValueError('The dataset is empty: nothing to draw')
    rows = (num_images + per_row - 1) // per_row
    fig, axes = plt.subplots(
        rows,
        panels * per_row,
        figsize=(3 * panels * per_row, 3 * rows),
        dpi=110,
        squeeze=False)
    model.eval()
    for k in range(rows * per_row):
        row = axes[k // per_row]
        cells = row[panels * (k % per_row):panels * (k % per_row + 1)]
        if k >= num_images:
            for ax in cells:
                ax.axis('off')
            continue
        with torch.no_grad():
            sample = model.test_step(pseudo_collate([dataset[k]]))[0]
        draw(cells, sample)
    if legend:
        fig.legend(
            handles=legend, loc='lower center', ncol=len(legend), fontsize=8)
    fig.tight_layout(rect=(0, 0.05 if legend else 0, 1, 1))
    fig.savefig(out_file)
    plt.close(fig)


def plot_predictions(model,
                     dataset,
                     out_file: str,
                     num_images: int = 6,
                     score_thr: float = 0.3) -> None:
    """Ground truth beside predictions for the first val images."""
    classes = dataset.metainfo['classes']

    def draw(axes, sample):
        image = _rgb(sample.img_path)
        name = osp.basename(sample.img_path)
        draw_instances(
            axes[0],
            image,
            sample.gt_instances,
            classes,
            title=f'{name}: ground truth')
        draw_instances(
            axes[1],
            image,
            sample.pred_instances,
            classes,
            score_thr=score_thr,
            title=f'prediction (score >= {score_thr})')

    _plot_val_samples(model, dataset, out_file, num_images, 2, draw)


def plot_seg_predictions(model,
                         dataset,
                         out_file: str,
                         num_images: int = 6) -> None:
    """The first val images, each with its ground-truth label map and the
    segmentor's predicted one, in the colours of the dataset's palette."""
    from matplotlib.patches import Patch
    classes = dataset.metainfo['classes']
    palette = dataset.metainfo['palette']

    def draw(axes, sample):
        name = osp.basename(sample.img_path)
        axes[0].imshow(_rgb(sample.img_path))
        axes[0].set_title(name, fontsize=8)
        axes[0].axis('off')
        draw_label_map(axes[1], sample.gt_sem_seg.data[0].cpu().numpy(),
                       palette, 'ground truth')
        draw_label_map(axes[2], sample.pred_sem_seg.data[0].cpu().numpy(),
                       palette, 'prediction')

    legend = [
        Patch(facecolor=np.asarray(c) / 255., edgecolor='grey', label=n)
        for c, n in zip(palette, classes)
    ]
    _plot_val_samples(
        model, dataset, out_file, num_images, 3, draw, legend=legend)


def _fmt_seconds(seconds: float) -> str:
    return f'{int(seconds) // 60} min {seconds % 60:04.1f} s'


def _load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on Unix
        return None


def run_demo(config: Union[str, Config],
             work_dir: str = 'work_dirs/demo',
             num_threads: Optional[int] = None,
             cfg_options: Optional[dict] = None,
             data_root: Optional[str] = None) -> dict:
    """Generate the data if absent, train, evaluate and write the outputs.

    The detection demo (a detector's config) evaluates COCO bbox and segm
    mAP; the segmentation demo (an mmseg config, ``default_scope =
    'mmseg'``, reading the label maps of ``shapes_data`` with
    ``semantic_labels=True``) evaluates mIoU with mmseg's ``IoUMetric``
    and adds each class's IoU.

    Args:
        config (str | Config): The demo config (with ``shapes_data``).
        work_dir (str): Where checkpoints, logs and outputs go.
        num_threads (int, optional): torch threads; default one per CPU.
        cfg_options (dict, optional): Overrides merged into the config.
        data_root (str, optional): Read (or generate) the set here instead
            of the config's ``data_root``.

    Returns:
        dict: What ``metrics.json`` holds: the val metrics (mmdet's names;
        for segmentation ``mIoU``, ``aAcc`` and ``IoU`` as fractions and
        ``mmseg_metrics`` as mmseg logs them, in percent), the timings, the
        load average and the targets.
    """
    start = time.time()
    load_before = _load_average()
    threads = set_cpu_threads(num_threads)
    cfg = _demo_config(config, work_dir, cfg_options, data_root)
    segmentation = is_segmentation_demo(cfg)
    targets = SEG_TARGETS if segmentation else TARGETS

    generated = prepare_shapes_data(cfg)
    data_s = time.time() - start
    print(
        f'[demo] data: {"generated" if generated else "found"} '
        f'{_annotation_files(cfg)} ({data_s:.1f} s); '
        f'{threads} torch threads',
        flush=True)

    runner, keeper, areas, classes = _train_and_validate(cfg, segmentation)
    train_end = time.time()

    metrics = {k: float(v) for k, v in keeper.metrics.items()}
    if segmentation:
        metrics = _segmentation_outputs(runner, metrics, areas, classes,
                                        work_dir)
    else:
        _detection_outputs(runner, metrics, work_dir)
    total_s = time.time() - start
    summary = dict(
        metrics,
        targets=targets,
        targets_met=targets_met(metrics, targets),
        time_s=_timings(keeper, runner.iter, data_s,
                        train_end - start - data_s, total_s),
        load_average=dict(start=load_before, end=_load_average()),
        data_generated=generated,
        torch_threads=threads,
        config=cfg.filename,
        iterations=runner.iter,
        epochs=runner.epoch)
    with open(osp.join(work_dir, 'metrics.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    _print_summary(summary, segmentation, targets, total_s, data_s,
                   runner.iter, load_before, work_dir)
    return summary


def _demo_config(config: Union[str, Config], work_dir: str,
                 cfg_options: Optional[dict],
                 data_root: Optional[str]) -> Config:
    """The demo's config with the caller's changes, the work dir made, and
    the optimizer's ``fused`` dropped where this torch has no fused AdamW
    on the device."""
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    cfg.work_dir = work_dir
    os.makedirs(work_dir, exist_ok=True)
    from mmrest.utils.torch_compat import drop_unsupported_fused
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if drop_unsupported_fused(cfg.optim_wrapper.get('optimizer', {}), device):
        print(
            f'[demo] torch {torch.__version__} has no fused AdamW on the '
            'CPU (torch >= 2.4 has): the per-tensor one, the same update',
            flush=True)
    return cfg


def _train_and_validate(cfg: Config, segmentation: bool):
    """Train with mmengine's Runner and validate (once more when no
    validation ran during training); returns the runner, the hook that kept
    the metrics and timings, and for segmentation the hook that counted
    each class's areas and the class names (None otherwise)."""
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    keeper = _KeepMetrics()
    runner.register_hook(keeper)
    areas = classes = None
    if segmentation:
        classes = runner.val_dataloader.dataset.metainfo['classes']
        areas = _SegAreas(
            len(classes), cfg.val_evaluator.get('ignore_index', 255))
        runner.register_hook(areas)
    runner.train()
    if keeper.metrics is None:  # no validation ran during training
        keeper.metrics = runner.val_loop.run()
    return runner, keeper, areas, classes


def _timings(keeper, iterations: int, data_s: float, train_and_eval_s: float,
             total_s: float) -> dict:
    """``metrics.json``'s ``time_s``: seconds of each phase, and wall and
    CPU seconds per training iteration."""
    wall_s, cpu_s = (keeper.end[0] - keeper.start[0],
                     keeper.end[1] - keeper.start[1]) \
        if keeper.end else (0.0, 0.0)
    iters = max(iterations, 1)
    return dict(
        data=round(data_s, 1),
        train_and_eval=round(train_and_eval_s, 1),
        total=round(total_s, 1),
        train_iterations=round(wall_s, 1),
        per_iteration=round(wall_s / iters, 4),
        cpu_per_iteration=round(cpu_s / iters, 4))


def _segmentation_outputs(runner, metrics: dict, areas, classes,
                          work_dir: str) -> dict:
    """The segmentation demo's metrics (each class's IoU from the val
    areas, checked against mmseg's mIoU), loss.png and predictions.png."""
    if 'mIoU' not in metrics:
        raise KeyError(f'The evaluation gave no mIoU; got '
                       f'{sorted(metrics)}: the config must evaluate '
                       "with IoUMetric(iou_metrics=['mIoU'])")
    mmseg_metrics = metrics
    metrics = seg_metrics(areas.areas, classes)
    # mmseg rounds the percentage to 2 decimals
    if abs(100 * metrics['mIoU'] - mmseg_metrics['mIoU']) > 0.0051:
        raise RuntimeError(
            f"The per-class IoUs give mIoU {metrics['mIoU']:.5f}, "
            f"mmseg's IoUMetric {mmseg_metrics['mIoU']} %")
    metrics['mmseg_metrics'] = mmseg_metrics
    plot_loss(
        read_scalars(osp.join(runner.log_dir, 'vis_data', 'scalars.json')),
        osp.join(work_dir, 'loss.png'),
        title='UperNet, ResT backbone from scratch: training loss')
    plot_seg_predictions(runner.model, runner.val_dataloader.dataset,
                         osp.join(work_dir, 'predictions.png'))
    return metrics


def _detection_outputs(runner, metrics: dict, work_dir: str) -> None:
    """The detection demo's checks on its metrics, loss.png and
    predictions.png."""
    missing = [k for k in TARGETS if k not in metrics]
    if missing:
        raise KeyError(f'The evaluation gave no {missing}; got '
                       f'{sorted(metrics)}: the config must evaluate '
                       "with CocoMetric(metric=['bbox', 'segm'])")
    plot_loss(
        read_scalars(osp.join(runner.log_dir, 'vis_data', 'scalars.json')),
        osp.join(work_dir, 'loss.png'))
    plot_predictions(runner.model, runner.val_dataloader.dataset,
                     osp.join(work_dir, 'predictions.png'))


def _print_summary(summary: dict, segmentation: bool, targets: dict,
                   total_s: float, data_s: float, iterations: int, load_before,
                   work_dir: str) -> None:
    """The demo's last lines: the metrics, the targets, the times."""
    metrics = summary
    if segmentation:
        print(f"[demo] mIoU: {metrics['mIoU']:.3f}  aAcc: "
              f"{metrics['aAcc']:.3f}  IoU: " +
              '  '.join(f'{c} {v:.3f}'
                        for c, v in metrics['IoU'].items() if v is not None))
    else:
        print('[demo] ' + '  '.join(f'{k}: {metrics[k]:.3f}'
                                    for k in METRIC_KEYS if k in metrics))
    for key, target in targets.items():
        verdict = 'reached' if metrics[key] >= target else 'NOT reached'
        print(f'[demo] target {key} >= {target}: {verdict}')
    print(
        f'[demo] wall time {_fmt_seconds(total_s)} (data '
        f'{data_s:.1f} s; {iterations} iterations, '
        f'{summary["time_s"]["per_iteration"]:.3f} s each, '
        f'{summary["time_s"]["cpu_per_iteration"]:.3f} CPU s; load '
        f'average {load_before} at the start); outputs in {work_dir}: '
        'metrics.json, loss.png, predictions.png',
        flush=True)


def predict_image(image: str,
                  config: Union[str, Config],
                  checkpoint: str,
                  out_file: str,
                  score_thr: float = 0.3,
                  device: str = 'cpu') -> dict:
    """Run a detector on one image and save it with its predictions drawn.

    Returns:
        dict: ``bboxes``, ``labels`` (class names) and ``scores`` of the
        predictions at or above ``score_thr``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmdet.apis import inference_detector, init_detector
    for path, what in ((image, 'image'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'No {what} file at {path!r}')
    from mmrest.checkpoint import mmengine_safe_loading
    with mmengine_safe_loading():  # an mmengine checkpoint, weights only
        model = init_detector(config, checkpoint, device=device)
    classes = model.dataset_meta['classes']
    result = inference_detector(model, image)
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    scale = max(1., 512 / max(h, w))  # small images are drawn larger
    fig = plt.figure(figsize=(w * scale / 100, h * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_instances(
        ax, rgb, result.pred_instances, classes, score_thr=score_thr)
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    pred = result.pred_instances
    keep = pred.scores >= score_thr
    return dict(
        bboxes=pred.bboxes[keep].tolist(),
        labels=[classes[i] for i in pred.labels[keep].tolist()],
        scores=pred.scores[keep].tolist())
