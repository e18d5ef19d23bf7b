"""ImagenetHVZ (Rio-Torto et al. 2020): ImageNet's horses (n02389026, label 0) and zebras (n02391049, label 1) that
have bounding boxes, written in the layout of :mod:`saliencylab.data.inmodel` with the filled boxes as masks.

Read from an ImageNet-format tree (see :mod:`saliencylab.data.imagenet_metadata`): ``<train_dir>/<wnid>/*.JPEG``
and ``<annotations>/<wnid>/<wnid>_<id>.xml`` (Annotation.tar.gz); the original counts 324 horses and 345 zebras.
Split as the original: a stratified test share of 0.149 (≈ 100 images), then 80/20 train/val of the rest
(written as trainval's split column), both seeded with 6 (stratified, not scikit-learn's exact permutation).
Images are re-encoded as PNG at their own size (the loader's ``Resize`` brings them to the training size).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from saliencylab.data.base import IMAGE_EXTENSIONS
from saliencylab.data.imagenet_metadata import read_box_xml
from saliencylab.data.inmodel import SPLIT_SEED, stratified_split, write_split

SYNSETS = ("n02389026", "n02391049")
"""Horse (sorrel), zebra: labels 0 and 1."""
CLASS_NAMES = ("horse", "zebra")
TEST_FRACTION = 0.149
VAL_FRACTION = 0.2


def build_imagenet_hvz(train_dir: str | Path, annotations: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Write ImagenetHVZ under ``out`` (``trainval/``, ``test/``) from an ImageNet-format tree; return ``out``.

    FileNotFoundError naming the folder when a synset's image or annotation folder is missing; ValueError when
    a synset has no image with boxes.
    """
    train_dir, annotations, out = Path(train_dir), Path(annotations), Path(out)
    found: list[tuple[Path, int, list[list[int]]]] = []
    for label, wnid in enumerate(SYNSETS):
        images, boxes_dir = train_dir / wnid, annotations / wnid
        for folder in (images, boxes_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} not found: expected ImageNet's <train>/{wnid}/ images and "
                                        f"<annotations>/{wnid}/ box XMLs")
        count = len(found)
        for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            xml = boxes_dir / f"{path.stem}.xml"
            if xml.is_file():
                _, _, boxes = read_box_xml(xml, wnid)
                if boxes:
                    found.append((path, label, boxes))
        if len(found) == count:
            raise ValueError(f"no image of {wnid} in {images} has boxes in {boxes_dir}")
    labels = [label for _, label, _ in found]
    trainval, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    train, _ = stratified_split([labels[i] for i in trainval], VAL_FRACTION, SPLIT_SEED)
    in_train = {trainval[i] for i in train}

    def load(index: int) -> tuple[str, int, np.ndarray, np.ndarray, list[list[int]]]:
        path, label, boxes = found[index]
        with Image.open(path) as file:
            image = np.asarray(file.convert("RGB"))
        mask = np.zeros(image.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in boxes:
            mask[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = True
        return path.stem, label, image, mask, boxes

    bar = tqdm(total=len(found), desc="ImagenetHVZ", disable=not progress)
    for name, indices in (("trainval", trainval), ("test", test)):
        samples = []
        for i in indices:
            samples.append(load(i))
            bar.update()
        write_split(out / name, samples, ["train" if i in in_train else "val" for i in indices]
                    if name == "trainval" else None)
    bar.close()
    return out
