# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""A synthetic COCO-format instance-segmentation set that needs no download.

Shapes of several classes, sizes and colours are painted over textured
backgrounds; later shapes occlude earlier ones, and every annotation
describes the visible part only (polygons, box and area). The colour of a
shape says nothing about its class: a detector has to learn the shapes.
The same seed writes the same files, byte for byte.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle', 'star')


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A textured background: smooth colour noise plus stripes or checks."""
    low = rng.randint(0, 256, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.randint(3)
    period = rng.uniform(6, 20)
    angle = rng.uniform(0, np.pi)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    if kind == 0:
        texture = np.sin(2 * np.pi * phase)
    elif kind == 1:
        texture = np.sign(np.sin(np.pi * xx / period) *
                          np.sin(np.pi * yy / period))
    else:
        texture = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
        texture = cv2.GaussianBlur(texture, (0, 0), 1.5) * 2
    img += texture[..., None] * rng.uniform(10, 35)
    return np.clip(img, 0, 255)


def _shape_mask(rng: np.random.RandomState, label: int, h: int, w: int,
                size: float) -> np.ndarray:
    """A filled binary mask of one shape of class ``label``."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    cx = rng.uniform(r * 0.6, w - r * 0.6)
    cy = rng.uniform(r * 0.6, h - r * 0.6)
    rot = rng.uniform(0, 2 * np.pi)
    name = CLASSES[label]
    if name == 'circle':
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1,
                   -1)
        return mask
    if name == 'square':
        angles = rot + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r * np.sqrt(2) * 0.8)
    elif name == 'triangle':
        angles = rot + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r * 1.1)
    else:  # star: five points
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.45)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)],
                   axis=1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _polygons(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def make_image(rng: np.random.RandomState, h: int, w: int,
               max_objects: int, min_size: float, max_size: float):
    """One image and its visible-part annotations (without ids)."""
    img = _background(rng, h, w)
    shapes = []
    for _ in range(rng.randint(1, max_objects + 1)):
        label = rng.randint(len(CLASSES))
        mask = _shape_mask(rng, label, h, w, rng.uniform(min_size, max_size))
        colour = rng.randint(0, 256, size=3).astype(np.float32)
        shade = rng.uniform(0.75, 1.0)
        img[mask > 0] = colour * shade
        # occlusion: this shape hides what lies under it
        for other in shapes:
            other['mask'][mask > 0] = 0
        shapes.append(dict(label=label, mask=mask, full=int(mask.sum())))
    anns = []
    for s in shapes:
        visible = int(s['mask'].sum())
        if visible < 0.3 * s['full'] or visible < 20:
            continue  # mostly hidden: not annotated, as in COCO practice
        polys = _polygons(s['mask'])
        if not polys:
            continue
        ys, xs = np.nonzero(s['mask'])
        x0, y0 = float(xs.min()), float(ys.min())
        anns.append(
            dict(
                category_id=s['label'] + 1,
                segmentation=polys,
                area=float(visible),
                bbox=[x0, y0, float(xs.max()) - x0 + 1,
                      float(ys.max()) - y0 + 1],
                iscrowd=0))
    return np.round(img).astype(np.uint8), anns


def generate_shapes_coco(out_dir: str,
                         splits: Dict[str, int] = None,
                         image_size: Sequence[int] = (128, 128),
                         max_objects: int = 4,
                         object_size: Sequence[float] = (20, 60),
                         seed: int = 0) -> Dict[str, str]:
    """Write the set: ``<out_dir>/<split>/*.png`` and
    ``<out_dir>/annotations/instances_<split>.json``.

    Args:
        out_dir (str): Root folder of the set.
        splits (dict): Images per split. Defaults to 800 train, 100 val.
        image_size (tuple): (height, width) of every image.
        max_objects (int): At most this many shapes an image (at least 1).
        object_size (tuple): Range of a shape's diameter in pixels.
        seed (int): The seed; the same seed gives the same files.

    Returns:
        dict: The annotation file of each split.
    """
    splits = splits or {'train': 800, 'val': 100}
    h, w = image_size
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(CLASSES)
    ]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    ann_files = {}
    for split_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState([seed, split_index])
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            img, anns = make_image(rng, h, w, max_objects, *object_size)
            file_name = f'{image_id:06d}.png'
            cv2.imwrite(osp.join(out_dir, split, file_name), img)
            images.append(
                dict(id=image_id, file_name=file_name, height=h, width=w))
            for ann in anns:
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=image_id, **ann))
        ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(
                dict(images=images, annotations=annotations,
                     categories=categories), f)
        ann_files[split] = ann_file
    return ann_files
