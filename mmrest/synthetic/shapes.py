# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""A synthetic COCO-format instance-segmentation set that needs no download.

Shapes of several classes, sizes and colours are painted over textured
backgrounds; later shapes occlude earlier ones, and every annotation
describes the visible part only (polygons, box and area). The colour of a
shape says nothing about its class: a detector has to learn the shapes.
The same seed writes the same files, byte for byte.

With ``semantic_labels=True`` the generator also writes a label map of each
image (a PNG, 0 the background and ``k`` the class ``CLASSES[k - 1]`` of
the shape seen at that pixel): the same images as a semantic-segmentation
set in the layout of mmseg's ``BaseSegDataset`` (images in ``<split>/``,
label maps of the same names in ``<split>_labels/``).
"""
import json
import numbers
import os
import os.path as osp
import zlib
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle', 'star')
# Bumped whenever the same arguments would draw different images; recorded
# in each annotation file so that a set of an older version is remade.
GENERATOR_VERSION = 2
# A shape's colour differs from the mean background colour under it by at
# least this much (sum of the absolute differences of the 3 channels, out
# of 765): shapes are hard to see, never invisible.
MIN_CONTRAST = 200
# What each annotation file records as ``info.generator``, and what
# :func:`shapes_info` looks for: the generator's name when the files were
# first written (the package was renamed from mmrest.datasets to
# mmrest.synthetic since), kept so that the files stay byte for byte the
# same and the sets written before stay valid.
GENERATOR_TAG = 'mmrest.datasets.generate_shapes_coco'


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A textured background: smooth, muted colour noise (channels in
    [64, 192]) plus stripes, checks or fine noise."""
    low = rng.randint(64, 193, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.randint(3)
    period = rng.uniform(6, 20)
    angle = rng.uniform(0, np.pi)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    if kind == 0:
        texture = np.sin(2 * np.pi * phase)
    elif kind == 1:
        texture = np.sign(
            np.sin(np.pi * xx / period) * np.sin(np.pi * yy / period))
    else:
        texture = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
        texture = cv2.GaussianBlur(texture, (0, 0), 1.5) * 2
    img += texture[..., None] * rng.uniform(8, 24)
    return np.clip(img, 0, 255)


def _shape_mask(rng: np.random.RandomState,
                label: int,
                h: int,
                w: int,
                size: float,
                max_rotation: float = 180.) -> np.ndarray:
    """A filled binary mask of one shape of class ``label``, turned by up to
    ``max_rotation`` degrees either way from its base pose (a square's sides
    along the axes, a triangle's or a star's first point to the right)."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    cx = rng.uniform(r * 0.6, w - r * 0.6)
    cy = rng.uniform(r * 0.6, h - r * 0.6)
    rot = rng.uniform(0, 2 * np.pi)
    if max_rotation < 180:  # the same draw, mapped onto [-max, max)
        rot = (rot / np.pi - 1) * np.deg2rad(max_rotation)
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


def _contrasting_colour(rng: np.random.RandomState,
                        under: np.ndarray) -> np.ndarray:
    """A random colour at least ``MIN_CONTRAST`` away from ``under``."""
    for _ in range(50):
        colour = rng.randint(0, 256, size=3) * rng.uniform(0.75, 1.0)
        if np.abs(colour - under).sum() >= MIN_CONTRAST:
            break
    else:  # the colour farthest from it (channel by channel)
        colour = np.where(under < 128, 255., 0.)
    return colour.astype(np.float32)


def _polygons(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def make_image(rng: np.random.RandomState,
               h: int,
               w: int,
               max_objects: int,
               min_size: float,
               max_size: float,
               max_rotation: float = 180.,
               semantic: bool = False):
    """One image and its visible-part annotations (without ids).

    With ``semantic`` it also returns the image's label map (uint8, 0 the
    background, ``label + 1`` where a shape is seen: every visible pixel,
    also of the shapes too hidden to be annotated). The random draws are
    the same either way, so the image is too.
    """
    img = _background(rng, h, w)
    labels = np.zeros((h, w), np.uint8)
    shapes = []
    for _ in range(rng.randint(1, max_objects + 1)):
        label = rng.randint(len(CLASSES))
        mask = _shape_mask(rng, label, h, w, rng.uniform(min_size, max_size),
                           max_rotation)
        colour = _contrasting_colour(rng, img[mask > 0].mean(axis=0))
        img[mask > 0] = colour
        labels[mask > 0] = label + 1
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
                bbox=[
                    x0, y0,
                    float(xs.max()) - x0 + 1,
                    float(ys.max()) - y0 + 1
                ],
                iscrowd=0))
    img = np.round(img).astype(np.uint8)
    return (img, anns, labels) if semantic else (img, anns)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_args(splits, image_size, max_objects, object_size, max_rotation,
                seed, semantic_labels):
    if not splits:
        raise ValueError('splits must name at least one split, got {}')
    for split, count in splits.items():
        if not isinstance(split, str) or not split or \
                not split.replace('_', '').isalnum():
            raise ValueError(f'A split name must be a non-empty word '
                             f'(letters, digits, _), got {split!r}')
        if not _is_int(count) or count < 1:
            raise ValueError(f'splits[{split!r}] must be a positive number '
                             f'of images, got {count!r}')
    if not isinstance(image_size, Sequence) or len(image_size) != 2 or \
            not all(
            _is_int(v) and v >= 16 for v in image_size):
        raise ValueError('image_size must be (height, width), integers '
                         f'>= 16, got {image_size!r}')
    if not _is_int(max_objects) or max_objects < 1:
        raise ValueError(
            f'max_objects must be an integer >= 1, got {max_objects!r}')
    if not isinstance(object_size, Sequence) or len(object_size) != 2 or \
            not all(
            isinstance(v, numbers.Real) for v in object_size) or \
            not 4 <= object_size[0] <= object_size[1] <= min(image_size):
        raise ValueError(
            'object_size must be (min, max) diameters with 4 <= min <= max '
            f'<= the smaller image side {min(image_size)}, got '
            f'{object_size!r}')
    if isinstance(max_rotation, bool) or \
            not isinstance(max_rotation, numbers.Real) or \
            not 0 <= max_rotation <= 180:
        raise ValueError('max_rotation must be a number of degrees in '
                         f'[0, 180], got {max_rotation!r}')
    if not _is_int(seed) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(semantic_labels, bool):
        raise ValueError('semantic_labels must be True or False, got '
                         f'{semantic_labels!r}')


def generate_shapes_coco(out_dir: str,
                         splits: Optional[Dict[str, int]] = None,
                         image_size: Sequence[int] = (128, 128),
                         max_objects: int = 4,
                         object_size: Sequence[float] = (20, 60),
                         max_rotation: float = 180.,
                         seed: int = 0,
                         semantic_labels: bool = False) -> Dict[str, str]:
    """Write the set: ``<out_dir>/<split>/*.png`` and
    ``<out_dir>/annotations/instances_<split>.json`` (and the label maps
    ``<out_dir>/<split>_labels/*.png`` with ``semantic_labels``).

    Args:
        out_dir (str): Root folder of the set.
        splits (dict): Images per split. Defaults to 800 train, 100 val.
        image_size (tuple): (height, width) of every image.
        max_objects (int): At most this many shapes an image (at least 1).
        object_size (tuple): Range of a shape's diameter in pixels.
        max_rotation (float): A shape is turned by a random angle of at
            most this many degrees either way from its base pose; 180 (the
            default) allows any rotation, 0 draws every shape of a class in
            the same pose (squares axis-aligned).
        seed (int): The seed; the same seed gives the same files.
        semantic_labels (bool): Also write each image's label map (uint8
            PNG of the same name, 0 background, ``k`` the class
            ``CLASSES[k - 1]``). The images and annotation lists are the
            same with or without it.

    Returns:
        dict: The annotation file of each split. Each file's ``info`` holds
        the arguments that made it (see :func:`shapes_info`).
    """
    splits = {'train': 800, 'val': 100} if splits is None else dict(splits)
    _check_args(splits, image_size, max_objects, object_size, max_rotation,
                seed, semantic_labels)
    h, w = (int(v) for v in image_size)
    min_size, max_size = (float(v) for v in object_size)
    drawing = (h, w, max_objects, min_size, max_size, max_rotation)
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(CLASSES)
    ]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    ann_files = {}
    params = recorded_params(splits, image_size, max_objects, object_size,
                             max_rotation, seed, semantic_labels)
    for split, count in sorted(splits.items()):
        # Each split's stream depends only on the seed and the split's name,
        # so generating 'val' alone gives the same val images.
        rng = np.random.RandomState([seed, zlib.crc32(split.encode())])
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        if semantic_labels:
            os.makedirs(osp.join(out_dir, f'{split}_labels'), exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            img, anns, *label_map = make_image(
                rng, *drawing, semantic=semantic_labels)
            file_name = f'{image_id:06d}.png'
            cv2.imwrite(osp.join(out_dir, split, file_name), img)
            if semantic_labels:
                cv2.imwrite(
                    osp.join(out_dir, f'{split}_labels', file_name),
                    label_map[0])
            images.append(
                dict(id=image_id, file_name=file_name, height=h, width=w))
            for ann in anns:
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=image_id, **ann))
        ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            info = dict(
                description=f'mmrest synthetic shapes, split {split}',
                generator=GENERATOR_TAG,
                params=params[split])
            json.dump(
                dict(
                    info=info,
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
        ann_files[split] = ann_file
    return ann_files


def recorded_params(splits: Dict[str, int], image_size: Sequence[int],
                    max_objects: int, object_size: Sequence[float],
                    max_rotation: float, seed: int,
                    semantic_labels: bool) -> Dict[str, dict]:
    """What each split's annotation file records as ``info.params`` (read
    back by :func:`shapes_info`) when :func:`generate_shapes_coco` is given
    these arguments. ``semantic_labels`` is recorded only when set, so that
    the sets written before it existed stay valid."""
    common = dict(
        image_size=[int(v) for v in image_size],
        max_objects=int(max_objects),
        object_size=[float(v) for v in object_size],
        max_rotation=float(max_rotation),
        seed=int(seed),
        version=GENERATOR_VERSION)
    if semantic_labels:
        common['semantic_labels'] = True
    return {
        split: dict(common, split=split, num_images=int(count))
        for split, count in splits.items()
    }


def shapes_info(ann_file: str) -> Optional[dict]:
    """The generator arguments recorded in an annotation file written by
    :func:`generate_shapes_coco` (None for any other file)."""
    with open(ann_file) as f:
        info = json.load(f).get('info') or {}
    if info.get('generator') != GENERATOR_TAG:
        return None
    return info.get('params')
