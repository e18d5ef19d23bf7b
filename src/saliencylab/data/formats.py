"""The dataset-format registry: ``FORMAT:PATH`` plus ``KEY=VALUE`` options -> a Dataset of Samples.

Each format is a function ``build(path, *, class_names, image_size, **options)`` registered under a
name; its keyword-only parameters after ``image_size`` are the options a user may set (the CLI's
``--data-set KEY=VALUE``), so the command line needs no if/elif chain per format. A new format
(CUB, ADE20K, ...) registers itself with :func:`register_format` in its own module.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from saliencylab.data.ade20k import ADE20KDataset
from saliencylab.data.coco import COCODataset
from saliencylab.data.cub import CUBDataset
from saliencylab.data.folder import ImageFolder
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.inmodel import InModelDataset
from saliencylab.data.openimages import OpenImagesDataset
from saliencylab.data.transforms import Resize
from saliencylab.data.voc import VOCDataset

Build = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetFormat:
    """name; build(path, *, class_names, image_size, **options); path: what PATH is; description."""

    name: str
    build: Build
    path: str
    description: str

    @property
    def options(self) -> dict[str, object]:
        """The options a user may set, with their defaults (``inspect.Parameter.empty`` = required)."""
        params = list(inspect.signature(self.build).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
                and p.name not in ("class_names", "image_size")}


_FORMATS: dict[str, DatasetFormat] = {}


def register_format(name: str, *, path: str, description: str) -> Callable[[Build], Build]:
    """Decorator adding a dataset builder to the registry under ``name``."""
    def add(build: Build) -> Build:
        if name in _FORMATS:
            raise ValueError(f"dataset format {name!r} is already registered")
        _FORMATS[name] = DatasetFormat(name, build, path, description)
        return build
    return add


def format_names() -> list[str]:
    return list(_FORMATS)


def get_format(name: str) -> DatasetFormat:
    if name not in _FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; known formats: {', '.join(_FORMATS)}")
    return _FORMATS[name]


def load_dataset(spec: str, *, class_names: Sequence[str], image_size: int,
                 options: dict[str, object] | None = None) -> Dataset:
    """The dataset ``FORMAT:PATH`` (e.g. ``voc:VOC2007``) with ``options``, images resized to ``image_size``.

    ValueError naming the format's options when one is unknown or a required one is missing.
    """
    name, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"expected a dataset as FORMAT:PATH (formats: {', '.join(_FORMATS)}), got {spec!r}")
    data_format = get_format(name)
    options = dict(options or {})
    allowed = data_format.options
    unknown = sorted(set(options) - set(allowed))
    missing = sorted(k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in options)
    if unknown or missing:
        listed = ", ".join(f"{k}" if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in allowed.items())
        problem = f"unknown option(s) {', '.join(unknown)}" if unknown else f"missing option(s) {', '.join(missing)}"
        raise ValueError(f"dataset format {name!r}: {problem}; its options: {listed or 'none'}")
    return data_format.build(path, class_names=tuple(class_names), image_size=image_size, **options)


def _check_classes(dataset_names: Sequence[str], class_names: Sequence[str], source: str) -> None:
    if len(dataset_names) != len(class_names):
        raise ValueError(f"{source} has {len(dataset_names)} classes but the classifier has {len(class_names)}")


@register_format("voc", path="the VOC root (with VOCdevkit/VOC<year>, or that folder itself)",
                 description="PASCAL VOC: Annotations/*.xml, JPEGImages, ImageSets, SegmentationClass PNGs")
def _voc(path: str, *, class_names: tuple[str, ...], image_size: int, split: str = "test", year: str = "2007",
         segmentation_only: bool = False) -> Dataset:
    return VOCDataset(path, split, class_names, year=year, segmentation_only=segmentation_only,
                      transform=Resize(image_size))


@register_format("coco", path="the COCO instances JSON", description="COCO: instances JSON + image folder")
def _coco(path: str, *, class_names: tuple[str, ...], image_size: int, images: str) -> Dataset:
    dataset = COCODataset(images, path, transform=Resize(image_size))
    _check_classes(dataset.class_names, class_names, path)
    return dataset


@register_format("imagenet", path="a metadata JSON (e.g. META/val.json)",
                 description="ImageNet-format single-label images; boxes=META/val_bboxes.json adds boxes")
def _imagenet(path: str, *, class_names: tuple[str, ...], image_size: int, boxes: str | None = None,
              break_ratio: bool = False) -> Dataset:
    dataset = ImageNetDataset(path, boxes, size=image_size, break_ratio=break_ratio)
    _check_classes(dataset.class_names, class_names, path)
    return dataset


@register_format("openimages", path="the OpenImages30k root holding dataset/ and metadata/ (wsolevaluation layout)",
                 description="OpenImages30k: single-label images with instance masks and ignore regions")
def _openimages(path: str, *, class_names: tuple[str, ...], image_size: int, split: str = "test") -> Dataset:
    root = Path(path)
    return OpenImagesDataset(root / "dataset", root / "metadata", split, size=image_size, class_names=class_names)


@register_format("folder", path="a folder of images",
                 description="plain images; masks=DIR adds VOC-style class PNGs <stem>.png (0 background, "
                             "k = class k-1, 255 void) as segmentation and labels")
def _folder(path: str, *, class_names: tuple[str, ...], image_size: int, masks: str | None = None) -> Dataset:
    return ImageFolder(path, class_names, transform=Resize(image_size), masks=masks)


@register_format("inmodel", path="a split root holding trainval/ and test/ (data.csv, images/, masks/, annotations/)",
                 description="the in-model explainer's layout (Rio-Torto et al. 2020): synthetic polygons, ImagenetHVZ")
def _inmodel(path: str, *, class_names: tuple[str, ...], image_size: int, split: str = "test") -> Dataset:
    return InModelDataset(path, split, class_names, transform=Resize(image_size))
@register_format("cub", path="the CUB_200_2011 folder",
                 description="CUB-200-2011: images.txt, classes, train_test_split.txt, parts/part_locs.txt, "
                             "attributes; Resize(resize) + CenterCrop(image_size); split train/val (90/10 of the "
                             "official training images, shuffled with seed) or test")
def _cub(path: str, *, class_names: tuple[str, ...], image_size: int, split: str = "test", resize: int | None = None,
         seed: int = 0) -> Dataset:
    dataset = CUBDataset(path, split, image_size=image_size, resize=resize, seed=seed)
    _check_classes(dataset.class_names, class_names, path)
    return dataset


@register_format("ade20k", path="the ADEChallengeData2016 folder",
                 description="ADE20K scene parsing: scenes from sceneCategories.txt, object maps of annotations/; "
                             "Resize(resize) + CenterCrop(image_size); split train/val (90/10 of training) or test")
def _ade20k(path: str, *, class_names: tuple[str, ...], image_size: int, split: str = "test",
            resize: int | None = None, seed: int = 0) -> Dataset:
    dataset = ADE20KDataset(path, split, image_size=image_size, resize=resize, seed=seed)
    _check_classes(dataset.class_names, class_names, path)
    return dataset
