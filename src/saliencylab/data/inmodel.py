"""The on-disk layout of the in-model explainer's datasets (Rio-Torto et al. 2020, repository ``icrto/xML``):
the synthetic polygons and ImagenetHVZ, both binary classification with a weak mask per image.

Layout of one split folder (``ROOT/trainval``, ``ROOT/test``)::

    data.csv                          imageID,label[,split]   (the original's data table: data.xlsx / data.csv;
                                      the optional split column, train or val, fixes trainval's split)
    images/<label>/<imageID>.png      the image
    masks/<label>/<imageID>_mask.png  the mask: white on the target instances (polygons) or the filled boxes
                                      (ImagenetHVZ), black elsewhere; all black for a negative image
    annotations/<imageID>.xml         VOC-style boxes of the target instances (optional)

Labels are the column ``label`` (0 .. C−1, C = len(class_names)). Masks are read as grey levels and
thresholded at 0.5 (the original cast /255 to uint8, which keeps only pixels of exactly 255 and drops JPEG
edges); they become the Sample's segmentation (class = the image's label) and, when there are no boxes
files, its boxes (the mask's bounding box). Without a split column, ``trainval`` is split 75/25 into train and
val (the original polygon loader's split) by :func:`stratified_split` (seeded, stratified; not scikit-learn's
exact permutation).
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from saliencylab.data.base import AnnotatedDataset, build_sample
from saliencylab.types import BACKGROUND, Sample

SPLITS = ("trainval", "test", "train", "val")
VAL_FRACTION = 0.25
SPLIT_SEED = 6


def stratified_split(labels: Sequence[int], test_fraction: float, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): ``round(test_fraction · n_c)`` of each class c held out, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held += rng.permutation(members)[:round(test_fraction * len(members))].tolist()
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def read_table(path: Path) -> list[tuple[str, int, str | None]]:
    """(imageID, label, split or None) rows of a data.csv; ValueError naming the file and line when one is malformed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the split's data table (imageID,label)")
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"imageID", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns imageID,label, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: label must be an integer, got {row['label']!r}") from None
            split = row.get("split") or None
            if split not in (None, "train", "val"):
                raise ValueError(f"{path}, line {line}: split must be train or val, got {split!r}")
            rows.append((row["imageID"], label, split))
    return rows


def write_split(folder: Path, samples: Sequence[tuple[str, int, np.ndarray, np.ndarray, list[list[int]]]],
                splits: Sequence[str] | None = None) -> None:
    """Write one split in the layout above: (imageID, label, image HxWx3 uint8, mask HxW bool, boxes) per image;
    ``splits``: the train/val column of each image (trainval only; None: no column)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, label, image, mask, boxes in samples:
        for sub, name, array in (("images", f"{image_id}.png", image),
                                 ("masks", f"{image_id}_mask.png", mask.astype(np.uint8) * 255)):
            target = folder / sub / str(label) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(target)
        write_boxes(folder / "annotations" / f"{image_id}.xml", image_id, image.shape[:2], boxes)
    if splits is None:
        text = "imageID,label\n" + "".join(f"{image_id},{label}\n" for image_id, label, *_ in samples)
    else:
        text = "imageID,label,split\n" + "".join(f"{image_id},{label},{split}\n"
                                                  for (image_id, label, *_), split in zip(samples, splits))
    (folder / "data.csv").write_text(text, encoding="utf-8")


def write_boxes(path: Path, image_id: str, size: tuple[int, int], boxes: list[list[int]]) -> None:
    """A VOC-style XML with one ``object`` (name "target") per inclusive box x1,y1,x2,y2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_id
    dims = ET.SubElement(root, "size")
    ET.SubElement(dims, "width").text, ET.SubElement(dims, "height").text = str(size[1]), str(size[0])
    for box in boxes:
        box_element = ET.SubElement(ET.SubElement(root, "object"), "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(box_element, key).text = str(int(value))
    ET.ElementTree(root).write(path, encoding="utf-8")


def read_boxes(path: Path) -> list[list[float]]:
    """The inclusive boxes of a :func:`write_boxes` XML (any VOC-style file with object/bndbox)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path} is not valid XML: {err}") from None
    boxes = []
    for box in root.iter("bndbox"):
        try:
            boxes.append([float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: a bndbox needs numeric xmin, ymin, xmax, ymax") from None
    return boxes


class InModelDataset(AnnotatedDataset):
    """One split of the layout above as Samples (labels one-hot over ``class_names``).

    ``split``: "trainval" or "test" (folders), or "train" / "val" (:func:`stratified_split` of trainval,
    ``VAL_FRACTION`` held out as val).
    """

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str],
                 transform: Callable[[Sample], Sample] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.folder = self.root / ("trainval" if split in ("train", "val") else split)
        self.table = self.folder / "data.csv"
        rows = read_table(self.table)
        if split in ("train", "val") and all(row[2] is not None for row in rows):
            rows = [row for row in rows if row[2] == split]
        elif split in ("train", "val"):
            kept, held = stratified_split([label for _, label, _ in rows], VAL_FRACTION)
            rows = [rows[i] for i in (kept if split == "train" else held)]
        self.class_names = tuple(class_names)
        for image_id, label, _ in rows:
            if not 0 <= label < len(self.class_names):
                raise ValueError(f"{self.table}: image {image_id!r} has label {label}, but there are "
                                 f"{len(self.class_names)} classes {self.class_names}")
        self.ids = [row[0] for row in rows]
        self.labels = [row[1] for row in rows]
        self.transform = transform

    def __getitem__(self, index: int) -> Sample:
        image_id, label = self.ids[index], self.labels[index]
        path = self.folder / "images" / str(label) / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"image {path} not found (listed in {self.table})")
        with Image.open(path) as file:
            image = pil_to_tensor(file.convert("RGB")).float() / 255
        size = tuple(image.shape[1:])
        mask_path = self.folder / "masks" / str(label) / f"{image_id}_mask.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"mask {mask_path} of image {image_id!r} not found (listed in {self.table})")
        with Image.open(mask_path) as file:
            mask = torch.from_numpy(np.asarray(file.convert("L"), dtype=np.float32) / 255) > 0.5
        if tuple(mask.shape) != tuple(size):
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}")
        xml = self.folder / "annotations" / f"{image_id}.xml"
        if xml.is_file():
            boxes = read_boxes(xml)
        elif mask.any():
            ys, xs = mask.nonzero(as_tuple=True)
            boxes = [[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]]
        else:
            boxes = []
        segmentation = torch.full(mask.shape, BACKGROUND, dtype=torch.long).masked_fill(mask, label)
        sample = build_sample(image, boxes, [label] * len(boxes), [False] * len(boxes), segmentation, image_id,
                              len(self.class_names))
        sample.labels = torch.nn.functional.one_hot(torch.tensor(label), len(self.class_names)).float()
        return sample if self.transform is None else self.transform(sample)
