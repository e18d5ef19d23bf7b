"""CUB-200-2011 on disk (Wah et al. 2011), as deliberative explanations use it (Wang & Vasconcelos, NeurIPS 2019):
images, classes, the train/test split, the 15 part locations and the continuous class attributes.

Layout (``root`` = the ``CUB_200_2011`` folder)::

    images.txt                 <image id> <path under images/>         (ids from 1)
    image_class_labels.txt     <image id> <class id>                   (class ids from 1)
    classes.txt                <class id> <name>
    train_test_split.txt       <image id> <1 = train, 0 = test>
    parts/parts.txt            <part id> <name>                        (15 parts)
    parts/part_locs.txt        <image id> <part id> <x> <y> <visible>  (pixels; 0 0 0 = not visible)
    attributes/class_attribute_labels_continuous.txt   one line of 312 percentages per class
    images/<class folder>/<file>.jpg

Images go through Resize(``resize``) + CenterCrop(``image_size``) (the original's test transform, 256 -> 224) and
so do the keypoints (the original rescaled them as if the image were squashed to 224; here they follow the
crop), taking pixel centres along; a keypoint the crop cuts off becomes invisible. The official training split
is shuffled with ``seed`` and split 90/10 into ``train`` and ``val``; ``test`` is the official test split.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from saliencylab.data.base import AnnotatedDataset, load_resized_image, resized_crop_geometry, write_image
from saliencylab.types import Sample

CUB_PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
             "right eye", "right leg", "right wing", "tail", "throat")
"""CUB-200-2011's 15 parts in ``parts/parts.txt`` order (ids 1..15 there, 0..14 here)."""
CUB_ATTRIBUTES = 312
_EYES, _LEGS, _WINGS = [(136, 149)], [(264, 278)], [(10, 24), (213, 217), (309, 312)]
CUB_PART_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((59, 73), (237, 240)), ((1, 9), (150, 152), (279, 293)), ((198, 212), (245, 248)), ((55, 58), (106, 120)),
    ((294, 308),), ((153, 167),), tuple(_EYES), tuple(_LEGS), tuple(_WINGS), ((183, 197),), tuple(_EYES),
    tuple(_LEGS), tuple(_WINGS), ((74, 79), (80, 94), (168, 182), (241, 244)), ((121, 135),),
)
"""Per part, its attribute groups as inclusive 1-based column ranges of the 312 attributes (bill shape, wing
colour, ...); left and right eyes, legs and wings share theirs."""
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
ATTRIBUTES_FILE = Path("attributes") / "class_attribute_labels_continuous.txt"


def _table(path: Path, columns: int) -> list[list[str]]:
    """The whitespace-separated rows of ``path``, each checked to have ``columns`` fields (errors name the line)."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB file {path} not found (expected the CUB_200_2011 layout)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            fields = line.split(maxsplit=columns - 1) if columns > 1 else [line.strip()]
            if len(fields) != columns:
                raise ValueError(f"{path} line {number}: expected {columns} fields, got {line!r}")
            rows.append(fields)
    return rows


def map_keypoints(keypoints: Tensor, width: int, height: int, resize: int, size: int) -> tuple[Tensor, Tensor]:
    """Keypoints (P,2) (x, y) of a ``width`` x ``height`` image -> their place after Resize(resize) +
    CenterCrop(size): x' = (x + ½)·W'/W − ½ − left (pixel centres kept), and whether each lies inside the crop."""
    new_width, new_height, left, top = resized_crop_geometry(width, height, resize, size)
    x = (keypoints[:, 0] + 0.5) * new_width / width - 0.5 - left
    y = (keypoints[:, 1] + 0.5) * new_height / height - 0.5 - top
    inside = (x > -0.5) & (x < size - 0.5) & (y > -0.5) & (y < size - 0.5)
    return torch.stack([x, y], 1), inside


def read_attributes(root: str | Path) -> np.ndarray:
    """The (classes, 312) attribute percentages of ``root/attributes/class_attribute_labels_continuous.txt``."""
    path = Path(root) / ATTRIBUTES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CUB attribute file {path} not found")
    table = np.loadtxt(path, ndmin=2)
    if table.shape[1] != CUB_ATTRIBUTES:
        raise ValueError(f"{path}: expected {CUB_ATTRIBUTES} attributes per line, got {table.shape[1]}")
    return table


class CUBDataset(AnnotatedDataset):
    """A split of CUB-200-2011 as single-label Samples (one-hot over the classes), with part keypoints.

    ``parts(index)`` gives the keypoints (15,2) in the resized and cropped image and their visibility (15,).
    """

    def __init__(self, root: str | Path, split: str = "test", image_size: int = 224, resize: int | None = None,
                 seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"CUB split must be one of {SPLITS}, got {split!r}")
        self.root, self.size = Path(root), image_size
        self.resize = resize or round(image_size * 256 / 224)
        if self.resize < image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({image_size})")
        paths = {int(i): p for i, p in _table(self.root / "images.txt", 2)}
        labels = {int(i): int(c) - 1 for i, c in _table(self.root / "image_class_labels.txt", 2)}
        training = {int(i): flag == "1" for i, flag in _table(self.root / "train_test_split.txt", 2)}
        self.class_names = tuple(name for _, name in sorted(_table(self.root / "classes.txt", 2),
                                                             key=lambda row: int(row[0])))
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", training)):
            missing = sorted(set(paths) - set(table))
            if missing:
                raise ValueError(f"{self.root / name} has no line for image ids {missing[:5]}")
        if split == "test":
            chosen = [i for i in sorted(paths) if not training[i]]
        else:
            train = [i for i in sorted(paths) if training[i]]
            random.Random(seed).shuffle(train)
            cut = round(len(train) * VAL_FRACTION)
            chosen = sorted(train[cut:] if split == "train" else train[:cut])
        self.ids = [str(i) for i in chosen]
        self.paths = {str(i): paths[i] for i in chosen}
        self.labels = {str(i): labels[i] for i in chosen}
        self.keypoints: dict[str, Tensor] = {}
        self.visible: dict[str, Tensor] = {}
        for image_id, part, x, y, visible in _table(self.root / "parts" / "part_locs.txt", 5):
            if image_id in self.paths:
                points = self.keypoints.setdefault(image_id, torch.zeros(len(CUB_PARTS), 2))
                seen = self.visible.setdefault(image_id, torch.zeros(len(CUB_PARTS), dtype=torch.bool))
                points[int(part) - 1] = torch.tensor([float(x), float(y)])
                seen[int(part) - 1] = float(visible) > 0

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = load_resized_image(self.root / "images" / self.paths[image_id], self.size,
                                   listed_in=self.root / "images.txt", resize=self.resize)
        labels = torch.zeros(self.num_classes)
        labels[self.labels[image_id]] = 1.0
        return Sample(image=image, labels=labels, image_id=image_id)

    def parts(self, index: int) -> tuple[Tensor, Tensor]:
        """Keypoints (15,2) (x, y) in the resized and cropped image, and visibility (15,) bool."""
        image_id = self.ids[index]
        if image_id not in self.keypoints:
            return torch.zeros(len(CUB_PARTS), 2), torch.zeros(len(CUB_PARTS), dtype=torch.bool)
        with Image.open(self.root / "images" / self.paths[image_id]) as file:
            width, height = file.size
        points, inside = map_keypoints(self.keypoints[image_id], width, height, self.resize, self.size)
        return points, self.visible[image_id] & inside

    def attributes(self) -> np.ndarray:
        """The (classes, 312) continuous class attributes."""
        return read_attributes(self.root)


def write_cub(root: str | Path, images: list[Tensor], labels: list[int], keypoints: list[Tensor],
              visible: list[Tensor], training: list[bool], class_names: list[str], attributes: np.ndarray) -> Path:
    """Write images (3,H,W) in [0,1] with their class (0-based), keypoints (15,2), visibility (15,) and split flag,
    and the (classes, 312) attribute table, in the CUB_200_2011 layout under ``root``; return ``root``.
    Invisible parts are written as ``0 0 0`` (as CUB does); keypoints with two decimals."""
    root = Path(root)
    attributes = np.asarray(attributes, dtype=np.float64)
    if attributes.shape != (len(class_names), CUB_ATTRIBUTES):
        raise ValueError(f"expected a ({len(class_names)}, {CUB_ATTRIBUTES}) attribute table, got {attributes.shape}")
    folders = [f"{c + 1:03d}.{name}" for c, name in enumerate(class_names)]
    lines: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
                                   "parts/part_locs.txt": []}
    for number, (image, label, points, seen, train) in enumerate(zip(images, labels, keypoints, visible, training), 1):
        path = f"{folders[label]}/{class_names[label]}_{number:06d}.jpg"
        write_image(root / "images" / path, image)
        lines["images.txt"].append(f"{number} {path}")
        lines["image_class_labels.txt"].append(f"{number} {label + 1}")
        lines["train_test_split.txt"].append(f"{number} {int(train)}")
        for part, ((x, y), flag) in enumerate(zip(points.tolist(), seen.tolist()), 1):
            location = f"{x:.2f} {y:.2f} 1" if flag else "0 0 0"
            lines["parts/part_locs.txt"].append(f"{number} {part} {location}")
    lines["classes.txt"] = [f"{c + 1} {folder}" for c, folder in enumerate(folders)]
    lines["parts/parts.txt"] = [f"{p + 1} {name}" for p, name in enumerate(CUB_PARTS)]
    for name, rows in lines.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(f"{row}\n" for row in rows))
    (root / ATTRIBUTES_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(root / ATTRIBUTES_FILE, attributes, fmt="%.10g")
    return root
