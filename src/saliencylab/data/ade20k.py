"""ADE20K scene parsing (ADEChallengeData2016) on disk, as deliberative explanations use it (Wang & Vasconcelos,
NeurIPS 2019): scene classification with the 150-object segmentations as ground truth.

Layout (``root`` = the ``ADEChallengeData2016`` folder)::

    images/training/ADE_train_00000001.jpg      images/validation/ADE_val_00000001.jpg
    annotations/training/ADE_train_00000001.png (8-bit: 0 = unlabelled, 1..150 = objectInfo150 ids)
    objectInfo150.txt      Idx  Ratio  Train  Val  Name  (tab-separated, one header line)
    sceneCategories.txt    <image stem> <scene>   (training images first, then validation)

The label is the scene. Classes are the scenes of the training images (sorted by name); the training images are
shuffled with ``seed`` and split 90/10 into ``train`` and ``val``; ``test`` is the validation images whose scene
occurs in training. Images go through Resize(``resize``) + CenterCrop(``image_size``); the object maps through
the same resize (nearest neighbour at pixel centres; the original reshaped them with ``np.resize``) and crop.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from saliencylab.data.base import AnnotatedDataset, load_resized_image, write_image
from saliencylab.types import Sample

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
FOLDERS = {"training": "ADE_train", "validation": "ADE_val"}


def read_scene_categories(root: Path) -> list[tuple[str, str, str]]:
    """(folder, image stem, scene) of every line of ``sceneCategories.txt``; the folder comes from the stem."""
    path = root / "sceneCategories.txt"
    if not path.is_file():
        raise FileNotFoundError(f"ADE20K file {path} not found (expected the ADEChallengeData2016 layout)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        folder = next((f for f, prefix in FOLDERS.items() if fields[0].startswith(prefix)), None)
        if len(fields) != 2 or folder is None:
            raise ValueError(f"{path} line {number}: expected '<ADE_train_... or ADE_val_... stem> <scene>', "
                             f"got {line!r}")
        rows.append((folder, fields[0], fields[1]))
    return rows


def read_object_names(root: Path) -> tuple[str, ...]:
    """The object names of ``objectInfo150.txt``, in id order (id 1 first)."""
    path = root / "objectInfo150.txt"
    if not path.is_file():
        raise FileNotFoundError(f"ADE20K file {path} not found")
    names = {}
    for number, line in enumerate(path.read_text().splitlines()[1:], 2):
        fields = line.split("\t")
        if len(fields) != 5 or not fields[0].isdigit():
            raise ValueError(f"{path} line {number}: expected 'Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name', got {line!r}")
        names[int(fields[0])] = fields[4]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: object ids must run 1..{len(names)}")
    return tuple(names[i] for i in range(1, len(names) + 1))


class ADE20KDataset(AnnotatedDataset):
    """A split of ADE20K as single-label scene Samples; ``objects(index)`` is its (size,size) object-id map."""

    def __init__(self, root: str | Path, split: str = "test", image_size: int = 224, resize: int | None = None,
                 seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"ADE20K split must be one of {SPLITS}, got {split!r}")
        self.root, self.size = Path(root), image_size
        self.resize = resize or round(image_size * 256 / 224)
        self.object_names = read_object_names(self.root)
        rows = read_scene_categories(self.root)
        training = [row for row in rows if row[0] == "training"]
        self.class_names = tuple(sorted({scene for _, _, scene in training}))
        if split == "test":
            chosen = [row for row in rows if row[0] == "validation" and row[2] in self.class_names]
        else:
            random.Random(seed).shuffle(training)
            cut = round(len(training) * VAL_FRACTION)
            chosen = sorted(training[cut:] if split == "train" else training[:cut])
        self.ids = [stem for _, stem, _ in chosen]
        self.folders = {stem: folder for folder, stem, _ in chosen}
        self.labels = {stem: self.class_names.index(scene) for _, stem, scene in chosen}

    def __getitem__(self, index: int) -> Sample:
        stem = self.ids[index]
        image = load_resized_image(self.root / "images" / self.folders[stem] / f"{stem}.jpg", self.size,
                                   listed_in=self.root / "sceneCategories.txt", resize=self.resize)
        labels = torch.zeros(self.num_classes)
        labels[self.labels[stem]] = 1.0
        return Sample(image=image, labels=labels, image_id=stem)

    def objects(self, index: int) -> Tensor:
        """(size,size) int64 object ids (0 unlabelled, 1..150) through the image's resize and crop."""
        stem = self.ids[index]
        path = self.root / "annotations" / self.folders[stem] / f"{stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"ADE20K annotation {path} not found")
        with Image.open(path) as png:
            if png.mode not in ("L", "P"):
                raise ValueError(f"ADE20K annotation {path} has mode {png.mode}; expected an 8-bit PNG of object ids")
            values = torch.from_numpy(np.asarray(png).astype(np.int64))
        if int(values.max()) > len(self.object_names):
            raise ValueError(f"ADE20K annotation {path} holds id {int(values.max())}; objectInfo150.txt lists "
                             f"{len(self.object_names)} objects")
        resized = F.resize(values[None], [self.resize], interpolation=InterpolationMode.NEAREST_EXACT)
        return F.center_crop(resized, [self.size, self.size])[0]

    def objects_present(self, index: int) -> set[int]:
        """The object ids of the image's full-resolution annotation (for class-object statistics)."""
        stem = self.ids[index]
        with Image.open(self.root / "annotations" / self.folders[stem] / f"{stem}.png") as png:
            return set(np.unique(np.asarray(png)).tolist()) - {0}


def write_ade20k(root: str | Path, images: list[Tensor], objects: list[Tensor], scenes: list[str],
                 training: list[bool], object_names: list[str]) -> Path:
    """Write images (3,H,W) in [0,1], object-id maps (H,W) (0..len(object_names)), scene names and the
    training flag in the ADEChallengeData2016 layout under ``root``; return ``root``. objectInfo150's pixel
    ratios and image counts are computed from the maps."""
    root = Path(root)
    counters = {"training": 0, "validation": 0}
    lines, pixels, counts = [], np.zeros(len(object_names) + 1), np.zeros((2, len(object_names) + 1))
    for image, labelled, scene, train in sorted(zip(images, objects, scenes, training), key=lambda r: not r[3]):
        folder = "training" if train else "validation"
        counters[folder] += 1
        stem = f"{FOLDERS[folder]}_{counters[folder]:08d}"
        write_image(root / "images" / folder / f"{stem}.jpg", image)
        values = labelled.numpy().astype(np.uint8)
        if labelled.min() < 0 or labelled.max() > len(object_names):
            raise ValueError(f"object map of {stem} holds ids outside 0..{len(object_names)}")
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(values).save(root / "annotations" / folder / f"{stem}.png")
        lines.append(f"{stem} {scene}")
        pixels += np.bincount(values.ravel(), minlength=len(object_names) + 1)
        counts[int(not train), np.unique(values)] += 1
    (root / "sceneCategories.txt").write_text("".join(f"{line}\n" for line in lines))
    ratio = pixels / max(pixels.sum(), 1)
    info = ["Idx\tRatio\tTrain\tVal\tName"] + [
        f"{i}\t{ratio[i]:.4f}\t{int(counts[0, i])}\t{int(counts[1, i])}\t{name}"
        for i, name in enumerate(object_names, 1)]
    (root / "objectInfo150.txt").write_text("".join(f"{line}\n" for line in info))
    return root
