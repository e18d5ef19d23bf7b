"""Ground-truth masks for metrics, built from a Batch's segmentation or boxes.

Every builder returns one bool mask per (image, target): (B,K,H,W), all False for padded
targets, on the device of its input (segmentation or boxes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.targets import PAD, as_targets
from saliencylab.types import VOID, Batch


def _check_segmentation(segmentation: Tensor) -> None:
    if segmentation.dim() != 3 or segmentation.dtype.is_floating_point or segmentation.dtype == torch.bool:
        raise ValueError(f"segmentation must be an integer class map (B,H,W), got {tuple(segmentation.shape)} "
                         f"{segmentation.dtype}")


def class_masks_from_segmentation(segmentation: Tensor, targets: Tensor) -> Tensor:
    """Pixels of each target class: segmentation (B,H,W) int64, targets (B,K) -> (B,K,H,W) bool."""
    _check_segmentation(segmentation)
    targets = as_targets(targets, segmentation.shape[0]).to(segmentation.device)
    # PAD equals BACKGROUND (-1), so padded slots must be cleared explicitly.
    keep = (targets != PAD)[:, :, None, None]
    return (segmentation[:, None] == targets[:, :, None, None]) & keep


def void_mask(segmentation: Tensor) -> Tensor:
    """Pixels of unknown label (VOID), to pass as a metric's ``ignore``: (B,H,W) -> (B,1,H,W) bool."""
    _check_segmentation(segmentation)
    return (segmentation == VOID)[:, None]


def foreground(segmentation: Tensor) -> Tensor:
    """Pixels of any object class (>= 0): (B,H,W) -> (B,1,H,W) bool.

    The NN-Explainer evaluation counts VOC's void borders as foreground; reproduce it with
    ``foreground(seg) | void_mask(seg)``, or exclude them with ``ignore=void_mask(seg)``.
    """
    _check_segmentation(segmentation)
    return (segmentation >= 0)[:, None]


def _box_owners(box_labels: list[Tensor], targets: Tensor, device: torch.device) -> Tensor:
    """(B,K,N) bool over the N boxes of the whole batch: box n belongs to image b and to target slot k."""
    counts = torch.tensor([len(labels) for labels in box_labels], device=device)
    image_of_box = torch.repeat_interleave(torch.arange(len(box_labels), device=device), counts)
    labels = torch.cat([labels.to(device).long() for labels in box_labels])
    same_image = torch.arange(len(box_labels), device=device)[:, None, None] == image_of_box
    same_class = (targets[:, :, None] == labels) & (targets != PAD)[:, :, None]
    return same_image & same_class


def _check_boxes(boxes: list[Tensor], box_labels: list[Tensor], batch_size: int) -> None:
    if len(boxes) != batch_size or len(box_labels) != batch_size:
        raise ValueError(f"boxes and box_labels must be lists of one tensor per image ({batch_size}), "
                         f"got {len(boxes)} and {len(box_labels)}")
    for i, (b, labels) in enumerate(zip(boxes, box_labels)):
        if b.dim() != 2 or b.shape[1] != 4 or labels.shape != (b.shape[0],):
            raise ValueError(f"image {i}: boxes must be (N,4) x1,y1,x2,y2 with box_labels (N,), "
                             f"got {tuple(b.shape)} and {tuple(labels.shape)}")


def class_masks_from_boxes(boxes: list[Tensor], box_labels: list[Tensor], targets: Tensor,
                           size: tuple[int, int]) -> Tensor:
    """Union of the filled boxes of each target class -> (B,K,H,W) bool, H,W = ``size``.

    boxes: per image (N,4) ``x1,y1,x2,y2``, 0-based with inclusive corners (the Sample convention);
    box_labels: per image (N,) class indices; targets (B,K). Pixel (x,y) is inside a box when
    x1 <= x <= x2 and y1 <= y <= y2 after rounding the corners to whole pixels (boxes scaled by a
    resize have fractional corners); parts outside the image are clipped.
    """
    targets = as_targets(targets, len(boxes))
    _check_boxes(boxes, box_labels, len(boxes))
    device = boxes[0].device if boxes else targets.device
    height, width = size
    owners = _box_owners(box_labels, targets.to(device), device).flatten(0, 1)  # (B*K, N)
    x1, y1, x2, y2 = torch.cat([b.to(device) for b in boxes]).float().round().unbind(1)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    in_rows = (ys >= y1[:, None]) & (ys <= y2[:, None])  # (N,H)
    in_cols = (xs >= x1[:, None]) & (xs <= x2[:, None])  # (N,W)
    inside = (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)  # (N,H*W)
    covered = owners.float() @ inside.float()
    return (covered > 0).view(targets.shape[0], targets.shape[1], height, width)


def all_difficult(box_labels: list[Tensor], difficult: list[Tensor], targets: Tensor) -> Tensor:
    """(B,K) bool: True where the target class has boxes and every one is flagged difficult.

    TorchRay's pointing game skips these (image, class) pairs; pass the result as ``skip``.
    Classes without boxes and padded slots are False.
    """
    targets = as_targets(targets, len(box_labels))
    if len(difficult) != len(box_labels) or any(d.shape != l.shape for d, l in zip(difficult, box_labels)):
        raise ValueError("difficult must hold one (N,) bool tensor per image, matching box_labels")
    device = box_labels[0].device if box_labels else targets.device
    owners = _box_owners(box_labels, targets.to(device), device)
    flags = torch.cat([d.to(device).bool() for d in difficult])
    num_boxes = owners.sum(-1)
    return (num_boxes > 0) & ((owners & flags).sum(-1) == num_boxes)


def class_masks(batch: Batch, targets: Tensor) -> Tensor:
    """(B,K,H,W) bool pixels of each target's class: from the batch's segmentation, else its filled boxes."""
    if batch.segmentation is not None:
        return class_masks_from_segmentation(batch.segmentation, targets)
    return class_masks_from_boxes(batch.boxes, batch.box_labels, targets, tuple(batch.images.shape[-2:]))
