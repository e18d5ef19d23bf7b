"""A folder of images, e.g. a user's own pictures, optionally with class masks beside them."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from saliencylab.data.base import IMAGE_EXTENSIONS, AnnotatedDataset, open_rgb
from saliencylab.data.voc import read_class_png
from saliencylab.types import Sample

class ImageFolder(AnnotatedDataset):
    """Every image file directly in ``folder`` (sorted by name) as a Sample without labels.

    image_id = the file name without its suffix. Without ``masks``, ``labels`` is all zeros over
    ``class_names``. With ``masks`` (a folder of VOC-style class PNGs ``<stem>.png``: 0 background,
    k = class k-1, 255 void) every image needs its mask: it becomes the segmentation, and the
    classes in it the labels.
    """

    def __init__(self, folder: str | Path, class_names: tuple[str, ...] | list[str],
                 transform: Callable[[Sample], Sample] | None = None, masks: str | Path | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder {self.folder} does not exist")
        self.masks = None if masks is None else Path(masks)
        if self.masks is not None and not self.masks.is_dir():
            raise FileNotFoundError(f"mask folder {self.masks} does not exist")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.folder}")
        stems = [p.stem for p in self.files]
        if len(set(stems)) != len(stems):
            raise ValueError(f"{self.folder} holds several images with the same name and different suffixes")
        self.ids = stems
        self.class_names = tuple(class_names)
        self.transform = transform

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        image = pil_to_tensor(open_rgb(path)).float() / 255
        labels, segmentation = torch.zeros(len(self.class_names)), None
        if self.masks is not None:
            mask = self.masks / f"{path.stem}.png"
            if not mask.is_file():
                raise FileNotFoundError(f"mask {mask} of image {path} not found")
            segmentation = read_class_png(mask, tuple(image.shape[1:]), len(self.class_names))
            present = segmentation[segmentation >= 0].unique()
            labels[present] = 1.0
        sample = Sample(image=image, labels=labels, segmentation=segmentation, image_id=self.ids[index])
        return sample if self.transform is None else self.transform(sample)
