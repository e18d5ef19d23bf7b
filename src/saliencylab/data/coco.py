"""COCO instances files (JSON + image folder) read into and written from Samples, via pycocotools.

Categories are sorted by their raw id and mapped to classes 0..C-1 (real COCO's ids 1..90 have
gaps); ``category_ids`` keeps the raw ids. Crowd annotations are the Sample's ``difficult`` boxes
and VOID pixels. COCO ``bbox`` is ``[x, y, w, h]``; the Sample box is ``x, y, x+w-1, y+h-1``.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from saliencylab.data.base import AnnotatedDataset, build_sample, clip_boxes, read_image, write_image
from saliencylab.files import read_json, write_atomic
from saliencylab.types import BACKGROUND, VOID, Sample

_FILE_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_CATEGORY_KEYS = ("id", "name")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation", "iscrowd")


def _instance_mask(sample: Sample, index: int) -> np.ndarray:
    """(H,W) bool: pixels of box ``index``'s class inside that box (the whole box without a segmentation)."""
    x1, y1, x2, y2 = (round(v) for v in sample.boxes[index].tolist())
    inside = np.zeros(sample.image.shape[1:], dtype=bool)
    inside[y1:y2 + 1, x1:x2 + 1] = True
    if sample.segmentation is None:
        return inside
    return inside & (sample.segmentation.numpy() == int(sample.box_labels[index]))


def write_coco(annotation_file: str | Path, image_dir: str | Path, samples: list[Sample], class_names: list[str],
               category_ids: list[int] | None = None) -> Path:
    """Write ``<image_dir>/<image_id>.jpg`` and a COCO instances JSON; return the JSON path.

    image_id must be a numeric string (COCO ids are ints). Categories get ``category_ids``
    (default 1..C). Each box becomes one annotation whose RLE mask is its class's segmentation
    pixels inside the box (the whole box when the sample has no segmentation); difficult boxes
    are written as crowd (iscrowd=1).
    """
    category_ids = list(range(1, len(class_names) + 1)) if category_ids is None else list(category_ids)
    if len(category_ids) != len(class_names) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids must be {len(class_names)} distinct ids, one per class, got {category_ids}")
    ids = [sample.image_id for sample in samples]
    if not all(i.isdigit() for i in ids) or len({int(i) for i in ids}) != len(ids):
        raise ValueError(f"COCO image ids are integers: every sample image_id must be a distinct number, got {ids[:5]}...")
    image_dir = Path(image_dir)
    images, annotations = [], []
    for sample in samples:
        file_name = f"{sample.image_id}.jpg"
        write_image(image_dir / file_name, sample.image)
        height, width = sample.image.shape[1:]
        images.append({"id": int(sample.image_id), "file_name": file_name, "width": width, "height": height})
        for i, ((x1, y1, x2, y2), label, crowd) in enumerate(
                zip(sample.boxes.tolist(), sample.box_labels.tolist(), sample.difficult.tolist())):
            rle = mask_utils.encode(np.asfortranarray(_instance_mask(sample, i), dtype=np.uint8))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(sample.image_id),
                "category_id": category_ids[label],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)),
                "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1],
                "iscrowd": int(crowd),
            })
    data = {
        "info": {"description": "written by saliencylab", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "object"}
                       for cid, name in zip(category_ids, class_names)],
    }
    annotation_file = Path(annotation_file)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(annotation_file, json.dumps(data))
    return annotation_file


def _check_keys(entries: list, keys: tuple[str, ...], what: str, path: Path) -> None:
    for entry in entries:
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            name = f"{what} {entry['id']}" if isinstance(entry, dict) and "id" in entry else what
            raise ValueError(f"{path} is not a COCO instances file: {name} lacks keys {missing} "
                             f"(expected {list(keys)})")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_values(data: dict, path: Path) -> None:
    """The value types the loader relies on: integer image ids and sides, file names, numeric boxes."""
    for image in data["images"]:
        if not _is_int(image["id"]):
            raise ValueError(f"{path}: image id {image['id']!r} (file_name {image['file_name']!r}) is not an "
                             "integer; expected COCO's integer image ids")
        for key in ("width", "height"):
            if not _is_int(image[key]) or image[key] < 1:
                raise ValueError(f"{path}: image {image['id']} has {key} {image[key]!r}; expected a positive integer")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise ValueError(f"{path}: image {image['id']} has file_name {image['file_name']!r}; expected a file name")
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_int(v) or isinstance(v, float) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise ValueError(f"{path}: annotation {ann['id']} has bbox {bbox!r}; expected [x, y, width, height], "
                             "four numbers with width and height >= 0")


def _load_coco(annotation_file: Path) -> COCO:
    """A pycocotools COCO index of an instances file, checked for the keys and ids the loader uses."""
    data = read_json(annotation_file, "COCO annotation file")
    _check_keys([data], _FILE_KEYS, "the top level", annotation_file)
    _check_keys(data["images"], _IMAGE_KEYS, "image", annotation_file)
    _check_keys(data["categories"], _CATEGORY_KEYS, "category", annotation_file)
    _check_keys(data["annotations"], _ANNOTATION_KEYS, "annotation", annotation_file)
    _check_values(data, annotation_file)
    image_ids = {image["id"] for image in data["images"]}
    category_ids = sorted(category["id"] for category in data["categories"])
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{annotation_file}: annotation {ann['id']} refers to image id {ann['image_id']}, "
                             "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{annotation_file}: annotation {ann['id']} refers to category id {ann['category_id']}; "
                             f"known category ids: {category_ids}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class COCODataset(AnnotatedDataset):
    """COCO images as Samples (see :class:`saliencylab.types.Sample`), image ids ascending.

    labels: multi-hot; boxes: 0-based inclusive from ``bbox``; difficult: iscrowd;
    segmentation (H,W): each annotation's mask painted in file order (crowd -> VOID, others ->
    class), BACKGROUND elsewhere; image_id: str of the COCO id. Images without annotations are
    skipped when ``skip_empty``.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 transform: Callable[[Sample], Sample] | None = None, skip_empty: bool = True) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} not found")
        self.coco = _load_coco(self.annotation_file)
        self.transform = transform
        categories = sorted(self.coco.cats.values(), key=lambda category: category["id"])
        self.category_ids = tuple(category["id"] for category in categories)
        self.class_names = tuple(category["name"] for category in categories)
        self.ids = sorted(i for i in self.coco.imgs if self.coco.imgToAnns[i] or not skip_empty)

    def instance_labels(self, index: int) -> list[int]:
        """The class of each annotation of image ``index`` (the Sample's ``box_labels``), read without the image."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.ids[index]))
        return [self.category_ids.index(ann["category_id"]) for ann in anns]

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        size = (info["height"], info["width"])
        image = read_image(self.image_dir / info["file_name"], size, described_in=self.annotation_file)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        labels = self.instance_labels(index)
        segmentation = torch.full(size, BACKGROUND, dtype=torch.long)
        for ann, label in zip(anns, labels):
            segmentation[torch.from_numpy(self.coco.annToMask(ann)).bool()] = VOID if ann["iscrowd"] else label
        boxes = clip_boxes([[x, y, x + w - 1, y + h - 1] for x, y, w, h in (ann["bbox"] for ann in anns)], size,
                           f"{self.annotation_file} (image {image_id})")
        sample = build_sample(image, boxes, labels, [bool(ann["iscrowd"]) for ann in anns], segmentation,
                              str(image_id), self.num_classes)
        return self.transform(sample) if self.transform else sample
