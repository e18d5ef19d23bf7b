"""Image gridding of consistent-interpretation training (Pillai & Pirsiavash, 'Explainable Models with
Consistent Interpretations', AAAI 2021, Sec. 3 and Fig. 2): each training image is pasted into a random cell of
a 2x2 grid whose other three cells hold negatives, images without the image's class.

Quadrants, as (row, col) of the 2x2 grid: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
Single-label data: three classes other than the label, drawn with replacement, one random image of each (as
the original's ImageNet loader). Multi-label data (COCO): one ground-truth category per image, chosen among the
image's annotated instances (so categories with more instances are more likely), and three images lacking
that category, drawn without replacement (as the original's COCO loader). The per-class negative lists come
from the annotations (:func:`instance_labels`), optionally cached in a JSON file. Random draws use torch's RNG,
which Lightning's ``seed_everything(workers=True)`` and the DataLoader seed per worker.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from saliencylab.files import write_atomic
from saliencylab.types import Batch, Sample, collate

QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))
"""Quadrant index -> (row, col) of its cell in the 2x2 grid."""
NEGATIVES = 3


def composite(positive: Tensor, negatives: list[Tensor], quadrant: int) -> Tensor:
    """The 2x2 grid (C,2H,2W) of images (C,H,W): ``positive`` in cell ``quadrant``, the ``negatives`` (3) in the
    other cells in quadrant order."""
    if len(negatives) != NEGATIVES or not 0 <= quadrant < len(QUADRANTS):
        raise ValueError(f"a composite needs {NEGATIVES} negatives and a quadrant in 0..3, got "
                         f"{len(negatives)} and {quadrant}")
    channels, height, width = positive.shape
    grid = positive.new_zeros(channels, 2 * height, 2 * width)
    others = iter(negatives)
    for index, (row, col) in enumerate(QUADRANTS):
        image = positive if index == quadrant else next(others)
        if image.shape != positive.shape:
            raise ValueError(f"every image of a composite must be {tuple(positive.shape)}, got {tuple(image.shape)}")
        grid[:, row * height:(row + 1) * height, col * width:(col + 1) * width] = image
    return grid


def sample_instances(sample: Sample) -> list[int]:
    """The classes of a sample's annotated instances (one per box), else of its labels."""
    return sample.box_labels.tolist() if len(sample.box_labels) else sample.labels.nonzero().flatten().tolist()


def instance_labels(dataset: Dataset, cache: str | Path | None = None, progress: bool = False) -> list[list[int]]:
    """Per image of ``dataset``, the classes of its instances: the dataset's ``instance_labels(index)`` when it
    has one (read from the annotations, no image decoded), else :func:`sample_instances` of each sample.

    ``cache``: a JSON file holding them with a fingerprint of the dataset's ids; reused when the ids match,
    written otherwise.
    """
    ids = getattr(dataset, "ids", None) or list(range(len(dataset)))
    fingerprint = hashlib.sha256(json.dumps([str(i) for i in ids]).encode()).hexdigest()
    if cache is not None and Path(cache).is_file():
        stored = json.loads(Path(cache).read_text())
        if stored.get("fingerprint") == fingerprint:
            return stored["instances"]
    read = getattr(dataset, "instance_labels", None) or (lambda index: sample_instances(dataset[index]))
    instances = [list(read(i)) for i in tqdm(range(len(dataset)), desc="negative lists", disable=not progress)]
    if cache is not None:
        write_atomic(Path(cache), json.dumps({"fingerprint": fingerprint, "instances": instances}))
    return instances


def negative_lists(instances: list[list[int]], num_classes: int) -> list[Tensor]:
    """Per class c, the indices (long) of the images with no instance of c."""
    present = torch.zeros(len(instances), num_classes, dtype=torch.bool)
    for index, classes in enumerate(instances):
        present[index, classes] = True
    return [(~present[:, c]).nonzero().flatten() for c in range(num_classes)]


@dataclass
class GriddedSample:
    """sample: the image; composite (3,2H,2W); target: the class both Grad-CAMs explain; quadrant: its cell."""

    sample: Sample
    composite: Tensor
    target: int
    quadrant: int


@dataclass
class GriddedBatch:
    """batch: the images (B,3,H,W); composites (B,3,2H,2W); targets (B,) long; quadrants (B,) long."""

    batch: Batch
    composites: Tensor
    targets: Tensor
    quadrants: Tensor

    def __len__(self) -> int:
        return len(self.batch)


def collate_gridded(items: list[GriddedSample]) -> GriddedBatch:
    """Stack GriddedSamples (a DataLoader ``collate_fn``)."""
    return GriddedBatch(collate([item.sample for item in items]), torch.stack([item.composite for item in items]),
                        torch.tensor([item.target for item in items]), torch.tensor([item.quadrant for item in items]))


class GriddedDataset(Dataset):
    """``dataset`` (Samples of one size, the train transform applied to each) with a 2x2 composite per image.

    ``multi_label``: COCO's rule (one instance's class, negatives lacking it, without replacement), else the
    single-label rule (three other classes with replacement, a random image of each); every image of a
    single-label set must have exactly one label. ``cache``: JSON file of the instance labels
    (:func:`instance_labels`).
    """

    def __init__(self, dataset: Dataset, num_classes: int, *, multi_label: bool, cache: str | Path | None = None,
                 progress: bool = False) -> None:
        self.dataset, self.multi_label, self.num_classes = dataset, multi_label, num_classes
        self.instances = instance_labels(dataset, cache, progress)
        for index, classes in enumerate(self.instances):
            if not classes or (not multi_label and len(set(classes)) != 1):
                raise ValueError(f"image {index} of the training set has classes {sorted(set(classes))}; "
                                 f"{'multi-label gridding needs at least one' if multi_label else 'single-label gridding needs exactly one'}")
        self.negatives = negative_lists(self.instances, num_classes)
        if multi_label:
            short = [c for c in range(num_classes) if len(self.negatives[c]) < NEGATIVES
                     and any(c in classes for classes in self.instances)]
            if short:
                raise ValueError(f"classes {short} have fewer than {NEGATIVES} images without them: no negatives")
        else:
            self.by_class = [[i for i, classes in enumerate(self.instances) if classes[0] == c]
                             for c in range(num_classes)]
            if sum(1 for images in self.by_class if images) < 2:
                raise ValueError("single-label gridding needs images of at least two classes")

    def __len__(self) -> int:
        return len(self.dataset)

    def _pick(self, options: Tensor | list[int], count: int, replacement: bool) -> list[int]:
        if replacement:
            return [int(options[i]) for i in torch.randint(len(options), (count,))]
        return [int(options[i]) for i in torch.randperm(len(options))[:count]]

    def negative_indices(self, index: int) -> tuple[int, list[int]]:
        """The explained class of image ``index`` and the dataset indices of its 3 negatives (a fresh draw)."""
        classes = self.instances[index]
        if self.multi_label:
            target = classes[int(torch.randint(len(classes), ()))]
            return target, self._pick(self.negatives[target], NEGATIVES, replacement=False)
        target = classes[0]
        others = [c for c in range(self.num_classes) if c != target and self.by_class[c]]
        return target, [self._pick(self.by_class[c], 1, False)[0] for c in self._pick(others, NEGATIVES, True)]

    def __getitem__(self, index: int) -> GriddedSample:
        sample = self.dataset[index]
        target, negatives = self.negative_indices(index)
        quadrant = int(torch.randint(len(QUADRANTS), ()))
        grid = composite(sample.image, [self.dataset[i].image for i in negatives], quadrant)
        return GriddedSample(sample, grid, target, quadrant)
