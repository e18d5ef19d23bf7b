"""Core records and constants shared by every layer.

Label space: every class is an integer in ``0..C-1`` for labels, boxes and segmentation.
Segmentation maps additionally use two named negative values, so no dataset-specific
offset (VOC's background 0, COCO's raw category ids) ever leaks out of a loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

BACKGROUND: int = -1
"""Segmentation value of pixels that belong to no object."""
VOID: int = -2
"""Segmentation value of pixels whose label is unknown (VOC's 255 border); excluded from metrics."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One annotated image.

    image: (3,H,W) float32 in [0,1], unnormalised.
    labels: (C,) float32 multi-hot over the classes present.
    boxes: (N,4) float32 ``x1,y1,x2,y2`` in pixels, inclusive corners (VOC convention, 0-based).
    box_labels: (N,) int64 class of each box.
    difficult: (N,) bool VOC "difficult" flag of each box.
    segmentation: (H,W) int64 class map with BACKGROUND and VOID, or None when not annotated.
    image_id: dataset-specific identifier (file stem for VOC, image id for COCO).
    """

    image: Tensor
    labels: Tensor
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    box_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    difficult: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    segmentation: Tensor | None = None
    image_id: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Batch:
    """A collated list of samples of equal image size.

    images: (B,3,H,W) float32 in [0,1]; labels: (B,C) float32 multi-hot;
    segmentation: (B,H,W) int64 or None when any sample lacks one;
    boxes / box_labels / difficult: lists of length B (ragged);
    image_ids: list of B strings.
    """

    images: Tensor
    labels: Tensor
    boxes: list[Tensor]
    box_labels: list[Tensor]
    difficult: list[Tensor]
    segmentation: Tensor | None
    image_ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            images=self.images.to(device),
            labels=self.labels.to(device),
            boxes=[b.to(device) for b in self.boxes],
            box_labels=[b.to(device) for b in self.box_labels],
            difficult=[d.to(device) for d in self.difficult],
            segmentation=None if self.segmentation is None else self.segmentation.to(device),
            image_ids=list(self.image_ids),
        )


def collate(samples: list[Sample]) -> Batch:
    """Stack samples of equal size into a Batch (use as a DataLoader ``collate_fn``)."""
    if not samples:
        raise ValueError("collate() needs at least one sample")
    sizes = {tuple(s.image.shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"all images of a batch must share one size, got {sorted(sizes)}; "
                         "resize them with saliencylab.data.transforms.Resize first")
    has_seg = all(s.segmentation is not None for s in samples)
    return Batch(
        images=torch.stack([s.image for s in samples]),
        labels=torch.stack([s.labels for s in samples]),
        boxes=[s.boxes for s in samples],
        box_labels=[s.box_labels for s in samples],
        difficult=[s.difficult for s in samples],
        segmentation=torch.stack([s.segmentation for s in samples]) if has_seg else None,
        image_ids=[s.image_id for s in samples],
    )
