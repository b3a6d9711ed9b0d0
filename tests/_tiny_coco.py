"""A tiny stand-in for COCO 2017, laid out exactly like it, for the tests
(a helper module, never a test file itself; the ``tiny_coco`` fixture of
``conftest.py`` and ``test_dist.py`` use it).

``<root>/annotations/instances_{train,val}2017.json`` and the images in
``<root>/train2017/`` and ``<root>/val2017/``, so a COCO config runs on it
with only its data root (and the evaluator's annotation file) changed. The
images and instances come from :func:`mmrest.synthetic.generate_shapes_coco`;
the category list is replaced by COCO's 80 categories (the shapes become
the first four of them), so the configs' 80-class heads, CocoDataset's
class filter and CocoMetric's label-to-category mapping all apply unchanged.
"""
import json
import os.path as osp
from typing import Dict, Sequence

from mmrest.synthetic import generate_shapes_coco


def write_tiny_coco(root: str,
                    num_train: int = 2,
                    num_val: int = 2,
                    image_size: Sequence[int] = (64, 64),
                    seed: int = 0) -> Dict[str, str]:
    """Write the set under ``root``; returns its annotation files."""
    from mmdet.datasets import CocoDataset
    ann_files = generate_shapes_coco(
        root,
        splits={
            'train2017': num_train,
            'val2017': num_val
        },
        image_size=tuple(image_size),
        max_objects=3,
        object_size=(min(image_size) / 4, min(image_size) / 2),
        seed=seed)
    categories = [
        dict(id=i + 1, name=name, supercategory='coco')
        for i, name in enumerate(CocoDataset.METAINFO['classes'])
    ]
    for path in ann_files.values():
        with open(path) as f:
            data = json.load(f)
        data['categories'] = categories
        with open(path, 'w') as f:
            json.dump(data, f)
    return {
        'train': ann_files['train2017'],
        'val': ann_files['val2017'],
    }


def tiny_coco_overrides(root: str) -> Dict[str, str]:
    """The ``--cfg-options`` that point a COCO config at ``root``."""
    root = osp.join(str(root), '')
    ann = root + 'annotations/instances_val2017.json'
    return {
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root,
        'test_dataloader.dataset.data_root': root,
        'val_evaluator.ann_file': ann,
        'test_evaluator.ann_file': ann,
    }
