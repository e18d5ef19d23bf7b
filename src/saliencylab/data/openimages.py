"""OpenImages30k in the wsolevaluation layout (Choe et al., CVPR 2020): the PxAP set of masking-based saliency (Phang et al. 2020).

The three roots are wsolevaluation's ``--data_root``, ``--mask_root`` and ``--metadata_root``,
each holding an ``OpenImages/`` folder::

  <data_root>/OpenImages/<image_id>                     image_id = "<split>/<class folder>/<id>.jpg"
  <mask_root>/OpenImages/<mask path>                    one PNG per instance; pixels > 0.5 are foreground
  <mask_root>/OpenImages/<ignore path>                  one PNG per image: the region left out of scoring
  <metadata_root>/OpenImages/<split>/image_ids.txt      one image_id a line
  <metadata_root>/OpenImages/<split>/class_labels.txt   <image_id>,<class index>
  <metadata_root>/OpenImages/<split>/localization.txt   <image_id>,<mask path>,<ignore path>, one line per
                                                        instance mask; only an image's first line names its
                                                        ignore mask, the others leave the field empty
                                                        (an empty field on the first line: no ignore region)

As in wsolevaluation, masks are resized to ``size`` x ``size`` with OpenCV's INTER_NEAREST sampling
(output row i reads input row floor(i*H/size)) whatever their resolution, the ground truth is the
union of the instance masks and the ignore region is the ignore mask minus that foreground.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saliencylab.data.base import AnnotatedDataset, load_resized_image, write_image
from saliencylab.files import write_atomic
from saliencylab.types import BACKGROUND, VOID, Sample

_LAYOUT = """expected layout:
  <metadata_root>/OpenImages/<split>/image_ids.txt      <image_id> a line
  <metadata_root>/OpenImages/<split>/class_labels.txt   <image_id>,<class index>
  <metadata_root>/OpenImages/<split>/localization.txt   <image_id>,<mask path>,<ignore path or empty>
  <data_root>/OpenImages/<image_id>, <mask_root>/OpenImages/<mask path> (mask_root defaults to data_root)"""


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines of a metadata file."""
    if not path.is_file():
        raise FileNotFoundError(f"OpenImages metadata file {path} not found; " + _LAYOUT)
    return [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line]


def _fields(path: Path, number: int, line: str, expected: str) -> list[str]:
    fields = line.split(",")
    if len(fields) != expected.count(",") + 1:
        raise ValueError(f"{path}, line {number}: expected '{expected}', got {line!r}")
    return fields


def _nearest_mask(path: Path, size: int, listed_in: Path) -> np.ndarray:
    """(size,size) bool: the grey values of a mask PNG resized like cv2.INTER_NEAREST, > 0.5."""
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} not found (it is listed in {listed_in})")
    with Image.open(path) as png:
        values = np.asarray(png.convert("L"), dtype=np.float32)
    height, width = values.shape
    rows = np.minimum(np.floor(np.arange(size) * (1.0 / (size / height))).astype(np.int64), height - 1)
    cols = np.minimum(np.floor(np.arange(size) * (1.0 / (size / width))).astype(np.int64), width - 1)
    return values[rows][:, cols] > 0.5


class OpenImagesDataset(AnnotatedDataset):
    """OpenImages30k images as Samples at ``size`` x ``size`` (Resize([size, size]), aspect ratio not kept).

    labels: one-hot of class_labels.txt; segmentation (size,size): the class on the union of the
    instance masks, VOID on the ignore region minus the foreground, BACKGROUND elsewhere (so
    ``segmentation >= 0`` is the PxAP ground truth and ``segmentation == VOID`` its ignored pixels);
    no boxes; image_id: the image_ids.txt entry. class_names default to each class's image folder
    name (the OpenImages MID without "/m/"), or str(index) for a class with no image.
    """

    def __init__(self, data_root: str | Path, metadata_root: str | Path, split: str = "test",
                 mask_root: str | Path | None = None, size: int = 224,
                 class_names: tuple[str, ...] | list[str] | None = None,
                 transform: Callable[[Sample], Sample] | None = None) -> None:
        folder = Path(metadata_root) / "OpenImages" / split
        if not folder.is_dir():
            raise FileNotFoundError(f"OpenImages metadata folder {folder} not found; " + _LAYOUT)
        self.image_root = Path(data_root) / "OpenImages"
        self.mask_root = Path(data_root if mask_root is None else mask_root) / "OpenImages"
        self.size, self.transform = size, transform
        self.image_ids_file = folder / "image_ids.txt"
        self.localization_file = folder / "localization.txt"
        self.ids = list(dict.fromkeys(line for _, line in _lines(self.image_ids_file)))

        labels_file = folder / "class_labels.txt"
        labels = {}
        for number, line in _lines(labels_file):
            image_id, label = _fields(labels_file, number, line, "<image_id>,<class index>")
            if not label.strip().isdigit():
                raise ValueError(f"{labels_file}, line {number}: expected a class index >= 0, got {label!r}")
            labels[image_id] = int(label)
        self.mask_paths: dict[str, list[str]] = {}
        self.ignore_paths: dict[str, str] = {}
        for number, line in _lines(self.localization_file):
            image_id, mask, ignore = _fields(self.localization_file, number, line,
                                             "<image_id>,<mask path>,<ignore path>")
            if image_id in self.mask_paths and ignore:
                raise ValueError(f"{self.localization_file}, line {number}: {image_id} already has its ignore mask "
                                 "on its first line; expected an empty third field on the following lines")
            self.mask_paths.setdefault(image_id, []).append(mask)
            self.ignore_paths.setdefault(image_id, ignore)
        for source, table in ((labels_file, labels), (self.localization_file, self.mask_paths)):
            missing = [i for i in self.ids if i not in table]
            if missing:
                raise ValueError(f"{source} has no line for {len(missing)} images of {self.image_ids_file}, "
                                 f"e.g. {missing[:5]}")
        self.labels = [labels[i] for i in self.ids]

        num_classes = max(self.labels) + 1
        if class_names is None:
            folders = {}
            for image_id, label in zip(self.ids, self.labels):
                folders.setdefault(label, Path(image_id).parent.name)
            class_names = [folders.get(c, str(c)) for c in range(num_classes)]
        elif len(class_names) < num_classes:
            raise ValueError(f"{labels_file} uses class index {num_classes - 1} but only {len(class_names)} "
                             "class_names were given")
        self.class_names = tuple(class_names)

    def __getitem__(self, index: int) -> Sample:
        image_id, label = self.ids[index], self.labels[index]
        image = load_resized_image(self.image_root / image_id, self.size, break_ratio=True,
                                   listed_in=self.image_ids_file)
        foreground = np.zeros((self.size, self.size), dtype=bool)
        for mask in self.mask_paths[image_id]:
            foreground |= _nearest_mask(self.mask_root / mask, self.size, self.localization_file)
        segmentation = torch.full((self.size, self.size), BACKGROUND, dtype=torch.long)
        segmentation[torch.from_numpy(foreground)] = label
        if self.ignore_paths[image_id]:
            ignore = _nearest_mask(self.mask_root / self.ignore_paths[image_id], self.size, self.localization_file)
            segmentation[torch.from_numpy(ignore & ~foreground)] = VOID
        labels = torch.zeros(self.num_classes)
        labels[label] = 1.0
        sample = Sample(image=image, labels=labels, segmentation=segmentation, image_id=image_id)
        return self.transform(sample) if self.transform else sample


def _write_png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_openimages(data_root: str | Path, metadata_root: str | Path, samples: list[Sample],
                     class_names: list[str], split: str = "test") -> Path:
    """Write single-label Samples with a segmentation in the layout above; return the metadata split folder.

    Image: ``<split>/<class name>/<image_id>.jpg``; one instance mask per box of the sample's class,
    its class pixels inside the box, ``<image_id>_m<class name>_<k>.png`` (boxes without such pixels
    are skipped); ignore mask: the VOID pixels, ``<image_id>_ignore.png``. Masks are 'L' PNGs of
    0 / 255, written next to the images (so mask_root = data_root).
    """
    image_folder = Path(data_root) / "OpenImages"
    meta = Path(metadata_root) / "OpenImages" / split
    if len({s.image_id for s in samples}) != len(samples) or any(not s.image_id for s in samples):
        raise ValueError("every sample needs a unique, non-empty image_id (it becomes the file stem)")
    image_ids, class_labels, localization = [], [], []
    for sample in samples:
        classes = sample.labels.nonzero().flatten().tolist()
        if len(classes) != 1 or sample.segmentation is None:
            raise ValueError(f"sample {sample.image_id}: OpenImages needs exactly one label and a segmentation, "
                             f"got labels {classes} and {'no' if sample.segmentation is None else 'a'} segmentation")
        label, seg = classes[0], sample.segmentation.numpy()
        stem = f"{split}/{class_names[label]}/{sample.image_id}"
        masks = []
        for k, (box, box_label) in enumerate(zip(sample.boxes.round().long().tolist(), sample.box_labels.tolist())):
            x1, y1, x2, y2 = box
            instance = np.zeros(seg.shape, dtype=bool)
            instance[y1:y2 + 1, x1:x2 + 1] = seg[y1:y2 + 1, x1:x2 + 1] == label
            if box_label == label and instance.any():
                masks.append((f"{stem}_m{class_names[label]}_{k}.png", instance))
        if not masks:
            raise ValueError(f"sample {sample.image_id}: no box of class {label} covers pixels of that class")
        write_image(image_folder / f"{stem}.jpg", sample.image)
        for path, instance in masks:
            _write_png(image_folder / path, instance)
        _write_png(image_folder / f"{stem}_ignore.png", seg == VOID)
        image_ids.append(f"{stem}.jpg")
        class_labels.append(f"{stem}.jpg,{label}")
        localization += [f"{stem}.jpg,{path},{f'{stem}_ignore.png' if k == 0 else ''}"
                         for k, (path, _) in enumerate(masks)]
    meta.mkdir(parents=True, exist_ok=True)
    for name, lines in (("image_ids", image_ids), ("class_labels", class_labels), ("localization", localization)):
        write_atomic(meta / f"{name}.txt", "".join(f"{line}\n" for line in lines))
    return meta
