"""Single-class synthetic scenes exported as ImageNet (train, val) and OpenImages30k (test) folders."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from saliencylab.data.base import write_image
from saliencylab.data.imagenet_metadata import prepare_metadata, write_box_xml
from saliencylab.data.openimages import write_openimages
from saliencylab.data.synthetic import CLASSES, SPLITS, SyntheticConfig, render_scene
from saliencylab.files import write_atomic
from saliencylab.types import Sample


WNIDS = tuple(f"n{index:08d}" for index in range(len(CLASSES)))
"""wnid-like folder names of the synthetic classes: WNIDS[k] is synthetic.CLASSES[k] (sorted order kept)."""


def single_class_scenes(config: SyntheticConfig, split: str, progress: bool = False) -> list[Sample]:
    """``config.<split>`` synthetic scenes whose objects all share one class, class-balanced, class-major order.

    Scenes are rendered from ``default_rng([config.seed, split index])`` and kept while their class
    is below its quota (count // C, one more for the first count % C classes) and it has labelled
    pixels. image_id: "000001", ... in the returned order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    count = getattr(config, split)
    if count < len(CLASSES):
        raise ValueError(f"split {split!r} needs at least {len(CLASSES)} images (one per class), got {count}")
    quota = [count // len(CLASSES) + (c < count % len(CLASSES)) for c in range(len(CLASSES))]
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    kept: list[list[Sample]] = [[] for _ in CLASSES]
    with tqdm(total=count, desc=f"single-class {split} scenes", disable=not progress) as bar:
        while any(len(scenes) < q for scenes, q in zip(kept, quota)):
            scene = render_scene(rng, config, "")
            labels = scene.box_labels.unique().tolist()
            if len(labels) == 1 and len(kept[labels[0]]) < quota[labels[0]] and (scene.segmentation >= 0).any():
                kept[labels[0]].append(scene)
                bar.update()
    return [replace(scene, image_id=f"{i + 1:06d}") for i, scene in enumerate(s for scenes in kept for s in scenes)]


def write_synthetic_imagenet(root: str | Path, config: SyntheticConfig = SyntheticConfig(),
                             num_per_class_in_train_val: int = 10, progress: bool = True,
                             overwrite: bool = False) -> Path:
    """Write single-class synthetic scenes as ImageNet (train, val) and OpenImages30k (test); return ``root``.

    ``root/imagenet``: train/<wnid>/<wnid>_<i>.JPEG with Annotation/<wnid>/<wnid>_<i>.xml for every
    train image, val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG with bbox_val/<stem>.xml, and
    metadata/ from :func:`prepare_metadata` (size = config.image_size, so the crop is the identity
    and the box JSONs hold the rendered boxes). ``root/openimages``: the test split in the
    wsolevaluation layout (see :func:`saliencylab.data.openimages.write_openimages`). wnids are
    :data:`WNIDS`; XML boxes are the Samples' 0-based inclusive corners. A finished set is marked by
    ``root/synthetic_imagenet.json``; the same arguments reuse it, others (or ``overwrite``) delete
    ``root/imagenet`` and ``root/openimages`` and write them again.
    """
    root = Path(root)
    marker = root / "synthetic_imagenet.json"
    settings = {**asdict(config), "num_per_class_in_train_val": num_per_class_in_train_val}
    if marker.is_file() and not overwrite:
        try:
            if json.loads(marker.read_text()) == settings:
                return root
        except json.JSONDecodeError:
            pass  # a corrupt marker means an unfinished set: rewrite it
    marker.unlink(missing_ok=True)
    for stale in ("imagenet", "openimages"):  # the folder scans would pick up a previous set's files
        shutil.rmtree(root / stale, ignore_errors=True)
    folder = root / "imagenet"
    per_class = defaultdict(int)
    for sample in single_class_scenes(config, "train", progress):
        label = int(sample.box_labels[0])
        per_class[label] += 1
        stem = f"{WNIDS[label]}_{per_class[label]}"
        write_image(folder / "train" / WNIDS[label] / f"{stem}.JPEG", sample.image)
        write_box_xml(folder / "Annotation" / WNIDS[label] / f"{stem}.xml", WNIDS[label], stem,
                       config.image_size, config.image_size, sample.boxes.long().tolist(), WNIDS[label])
    for index, sample in enumerate(single_class_scenes(config, "val", progress)):
        label = int(sample.box_labels[0])
        stem = f"ILSVRC2012_val_{index + 1:08d}"
        write_image(folder / "val" / WNIDS[label] / f"{stem}.JPEG", sample.image)
        write_box_xml(folder / "bbox_val" / f"{stem}.xml", "val", stem, config.image_size, config.image_size,
                       sample.boxes.long().tolist(), WNIDS[label])
    prepare_metadata(folder / "train", folder / "val", folder / "bbox_val", folder / "metadata",
                     extended_annotations=folder / "Annotation", num_per_class_in_train_val=num_per_class_in_train_val,
                     seed=config.seed, size=config.image_size)
    write_openimages(root / "openimages" / "dataset", root / "openimages" / "metadata",
                     single_class_scenes(config, "test", progress), list(WNIDS))
    write_atomic(marker, json.dumps(settings, indent=2))
    return root
