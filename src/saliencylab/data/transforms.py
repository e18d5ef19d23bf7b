"""Sample -> Sample transforms that move the image, boxes and segmentation together.

Built on ``torchvision.transforms.v2`` and ``tv_tensors``. Sample boxes use inclusive pixel
corners (a box around pixels 2..5 is ``x1=2, x2=5``) while torchvision treats XYXY boxes as
continuous coordinates with an exclusive far edge (``x2=6``); each transform adds 1 to
``x2, y2`` before calling torchvision and subtracts it after, so boxes stay 0-based inclusive
(and may become fractional after a resize). Images stay float in [0,1].
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import Compose
from torchvision.transforms.v2 import functional as F

from saliencylab.types import Sample

__all__ = ["Compose", "RandomHorizontalFlip", "Resize"]

_INCLUSIVE_TO_EXCLUSIVE = torch.tensor([0.0, 0.0, 1.0, 1.0])


def _apply(sample: Sample, image_fn: Callable, boxes_fn: Callable, mask_fn: Callable) -> Sample:
    """Run the three torchvision functions on the sample's image, boxes (made exclusive) and mask."""
    boxes = tv_tensors.BoundingBoxes(sample.boxes + _INCLUSIVE_TO_EXCLUSIVE, format="XYXY",
                                     canvas_size=tuple(sample.image.shape[1:]))
    image = image_fn(tv_tensors.Image(sample.image)).as_subclass(Tensor)
    return replace(
        sample,
        image=image.clamp(0, 1),  # antialiased bilinear can leave float rounding just past 1
        boxes=boxes_fn(boxes).as_subclass(Tensor) - _INCLUSIVE_TO_EXCLUSIVE,
        segmentation=None if sample.segmentation is None else
        mask_fn(tv_tensors.Mask(sample.segmentation)).as_subclass(Tensor),
    )


class Resize:
    """Resize to ``size`` = (H,W), or (size,size) for an int (square, so every sample batches).

    Image: bilinear with antialias. Segmentation: nearest neighbour sampled at pixel centres
    (NEAREST_EXACT, like PIL; plain NEAREST shifts masks up-left by up to a pixel). Boxes: scaled
    by W'/W and H'/H as continuous extents, so a mask pixel's centre lies inside its box.
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = [size, size] if isinstance(size, int) else list(size)

    def __call__(self, sample: Sample) -> Sample:
        if list(sample.image.shape[1:]) == self.size:
            return sample
        return _apply(
            sample,
            lambda image: F.resize(image, self.size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            lambda boxes: F.resize(boxes, self.size),
            lambda mask: F.resize(mask, self.size, interpolation=InterpolationMode.NEAREST_EXACT),
        )

    def __repr__(self) -> str:
        return f"Resize(size={tuple(self.size)})"


class RandomHorizontalFlip:
    """Mirror image, boxes and segmentation left-right with probability ``p`` (torch's RNG)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()) >= self.p:
            return sample
        return _apply(sample, F.horizontal_flip, F.horizontal_flip, F.horizontal_flip)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
