"""Weakly-supervised localisation (WSOL) metrics of masking-based saliency (Phang et al.,
"Investigating and Simplifying Masking-based Saliency Methods", evaluation section, and the authors' released code).

Conventions
  masks     (B,H,W) or (B,1,H,W) float in [0,1], one continuous mask per image (NaN is rejected:
            merge or drop padded targets first, e.g. ``saliencylab.maps.merge_max``).
  boxes     (B,4) ``x1,y1,x2,y2`` as **half-open** pixel rectangles: pixel (x,y) is inside when
            x1 <= x < x2 and y1 <= y < y2, so area = (x2-x1)(y2-y1) and (0,0,0,0) is the empty box.
            This is the original code's arithmetic (and torchvision's); ``Sample.boxes`` use inclusive
            corners, convert them with :func:`inclusive_to_half_open`. Corners are rounded to whole pixels.
  gt_boxes  list of B tensors (N_b,4), half-open, the ground-truth boxes of each image. They may reach
            past the image (the authors' code keeps them unclipped); their pixels are clipped to it.
  size      (H,W) of the images the boxes belong to.
Per-image metrics return (B,) float32 on the input's device; NaN means undefined (an image without a
gt box), never a silent 0 or 1. A gt box of zero area scores IoU 0 and F1 0, as in the original.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from saliencylab.models.classifier import check_images
from saliencylab.targets import as_targets

IOU_THRESHOLD = 0.5
"""A box localises an object when IoU > 0.5 (strict)."""
EPS = 1e-6
"""Stabiliser of the soft F1 (the masking-saliency authors' code)."""
SM_MIN_AREA = 0.05
"""Area floor of the saliency metric (Dabkowski & Gal 2017)."""
CENTER_BOX_224 = (33, 191)
"""The ``center`` baseline's square at 224x224: pixels 33..190 in both axes."""
BASELINES = ("max", "min", "center")


# ---------------------------------------------------------------- validation

def _as_masks(masks: Tensor, name: str = "masks") -> Tensor:
    """Validate continuous masks in [0,1]; return them as (B,H,W)."""
    if not isinstance(masks, Tensor) or not masks.dtype.is_floating_point:
        got = masks.dtype if isinstance(masks, Tensor) else type(masks).__name__
        raise TypeError(f"{name} must be a float tensor (B,H,W) or (B,1,H,W) with values in [0,1], got {got}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"{name} must have shape (B,H,W) or (B,1,H,W), one mask per image, "
                         f"got {tuple(masks.shape)}")
    if masks.numel():
        if masks.isnan().any():
            raise ValueError(f"{name} hold NaN; WSOL metrics need one finite mask per image "
                             "(merge per-target maps with saliencylab.maps.merge_max)")
        low, high = (float(v) for v in masks.aminmax())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name} must hold values in [0,1], got range [{low:.4g}, {high:.4g}]; "
                             "rescale raw maps first, e.g. saliencylab.maps.normalize_minmax")
    return masks


def _as_bool(x: Tensor, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
    """Validate a bool (B,H,W) or (B,1,H,W) tensor (of ``shape`` when given); return it as (B,H,W)."""
    if not isinstance(x, Tensor) or x.dtype != torch.bool:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a bool tensor (B,H,W) or (B,1,H,W), got {got}")
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3 or (shape is not None and tuple(x.shape) != shape):
        expected = "(B,H,W) or (B,1,H,W)" if shape is None else f"{shape} like the masks"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    return x


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be the image's (H,W) with H,W >= 1, got {size}")
    return int(size[0]), int(size[1])


def _as_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Validate predicted boxes (B,4) inside the image; return them rounded, float64."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor (B,4) of half-open x1,y1,x2,y2, got {got}")
    boxes = boxes.double().round()
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(1)
    if not boxes.isfinite().all() or not ((0 <= x1) & (x1 <= x2) & (x2 <= width)
                                          & (0 <= y1) & (y1 <= y2) & (y2 <= height)).all():
        raise ValueError(f"boxes must satisfy 0 <= x1 <= x2 <= W={width} and 0 <= y1 <= y2 <= H={height} "
                         "(half-open, inside the image; (0,0,0,0) is empty)")
    return boxes


def _as_gt(gt_boxes: Sequence[Tensor], batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pad per-image gt boxes: -> boxes (B,N,4) float64 rounded, valid (B,N) bool (N >= 1)."""
    if isinstance(gt_boxes, Tensor) or len(gt_boxes) != batch_size:
        got = "a tensor" if isinstance(gt_boxes, Tensor) else f"{len(gt_boxes)} entries"
        raise ValueError(f"gt_boxes must be a list of one (N,4) tensor per image ({batch_size}), got {got}")
    num = max([1] + [len(b) for b in gt_boxes])
    padded = torch.zeros(batch_size, num, 4, dtype=torch.float64, device=device)
    valid = torch.zeros(batch_size, num, dtype=torch.bool, device=device)
    for i, b in enumerate(gt_boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"gt_boxes[{i}] must be a tensor (N,4) of half-open x1,y1,x2,y2, got {got}")
        b = b.to(device, torch.float64).round()
        if not b.isfinite().all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise ValueError(f"gt_boxes[{i}] must hold finite boxes with x2 >= x1 and y2 >= y1, got {b.tolist()}")
        padded[i, :len(b)] = b
        valid[i, :len(b)] = True
    return padded, valid


# ---------------------------------------------------------------- boxes

def box_area(boxes: Tensor) -> Tensor:
    """Area (…,) of half-open boxes (…,4) x1,y1,x2,y2: (x2 − x1)(y2 − y1)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _clip(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    height, width = size
    bounds = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), bounds)


def inclusive_to_half_open(boxes: Tensor) -> Tensor:
    """Boxes (...,4) with inclusive corners (``Sample.boxes``) -> half-open boxes (x2+1, y2+1)."""
    return boxes + boxes.new_tensor([0, 0, 1, 1])


def binarize_at_mean(masks: Tensor) -> Tensor:
    """B = 1[m > mean(m)], the mean taken per image (strict >; a constant mask gives all False).

    masks (B,H,W) or (B,1,H,W) in [0,1] -> (B,H,W) bool. The mean is taken in float64, so a
    constant mask is empty exactly.
    """
    m = _as_masks(masks).double()
    return m > m.mean(dim=(1, 2), keepdim=True)


def largest_component(binary: Tensor) -> Tensor:
    """Keep each image's largest 4-connected component (``scipy.ndimage.label`` default structure).

    binary (B,H,W) or (B,1,H,W) bool -> (B,H,W) bool on the same device. Ties: the component met
    first in row-major order. An empty image stays empty.
    """
    binary = _as_bool(binary, "binary")
    out = np.zeros(tuple(binary.shape), dtype=bool)
    for i, image in enumerate(binary.cpu().numpy()):
        labels, count = ndimage.label(image)
        if count:
            sizes = np.bincount(labels.ravel())[1:]  # label 0 is the background
            out[i] = labels == 1 + int(sizes.argmax())
    return torch.from_numpy(out).to(binary.device)


def mask_to_box(binary: Tensor, one_pixel_smaller: bool = False) -> Tensor:
    """The half-open box (B,4) float32 of each image's largest 4-connected component.

    binary (B,H,W) or (B,1,H,W) bool. Default: the tight box, x2 = last column + 1, y2 = last row + 1.
    ``one_pixel_smaller=True`` reproduces the released code, which stores the last pixel index as an
    exclusive end: x2 = last column, y2 = last row (1 px smaller per dimension; a one-pixel-wide
    component gets zero area). An empty image gives the zero box (0,0,0,0).
    """
    component = largest_component(binary)
    height, width = component.shape[1:]
    cols = component.any(1).int()  # (B,W)
    rows = component.any(2).int()  # (B,H)
    x1, y1 = cols.argmax(1), rows.argmax(1)  # first True
    x2, y2 = width - cols.flip(1).argmax(1), height - rows.flip(1).argmax(1)  # last True + 1
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    if one_pixel_smaller:
        boxes[:, 2:] -= 1
    return boxes.masked_fill(~component.flatten(1).any(1, keepdim=True), 0.0)


def predicted_boxes(masks: Tensor, one_pixel_smaller: bool = False) -> Tensor:
    """Spec 001 §4.2 in one call: binarise at the mean, largest component, box -> (B,4) float32."""
    return mask_to_box(binarize_at_mean(masks), one_pixel_smaller)


def box_to_mask(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """The rectangles R of half-open boxes (B,4) inside images of ``size`` (H,W) -> (B,H,W) bool."""
    size = _check_size(size)
    boxes = _as_boxes(boxes, size)
    ys = torch.arange(size[0], device=boxes.device)
    xs = torch.arange(size[1], device=boxes.device)
    rows = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # (B,H)
    cols = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # (B,W)
    return rows[:, :, None] & cols[:, None, :]


# ---------------------------------------------------------------- box metrics

def _iou(inter: Tensor, pred_area: Tensor, gt_area: Tensor) -> Tensor:
    """IoU = inter / (pred + gt - inter); 0 for a zero-area gt box."""
    return torch.where(gt_area > 0, inter / (pred_area + gt_area - inter), 0.0)


def _f1(inter: Tensor, mass: Tensor, gt_area: Tensor) -> Tensor:
    """Soft F1 with P = inter / (mass + 1e-6), R = inter / area; 0 for a zero-area gt box."""
    precision = inter / (mass + EPS)
    recall = inter / gt_area
    return torch.where(gt_area > 0, 2 * precision * recall / (precision + recall + EPS), 0.0)


def _gt_geometry(gt_boxes: Sequence[Tensor], batch_size: int, size: tuple[int, int], unclipped_area: bool,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """-> gt boxes clipped to the image (B,N,4), the area used in the denominators (B,N), valid (B,N)."""
    gt, valid = _as_gt(gt_boxes, batch_size, device)
    clipped = _clip(gt, size)
    return clipped, box_area(gt) if unclipped_area else box_area(clipped), valid


def _best(values: Tensor, valid: Tensor) -> Tensor:
    """max over an image's valid boxes: (B,N) -> (B,) float32; NaN without a box."""
    best = values.masked_fill(~valid, -math.inf).amax(1)
    return best.masked_fill(~valid.any(1), math.nan).float()


def _average(values: Tensor, valid: Tensor) -> Tensor:
    """mean over an image's valid boxes: (B,N) -> (B,) float32; NaN without a box."""
    return (values.masked_fill(~valid, 0.0).sum(1) / valid.sum(1)).float()


def _pairwise_iou(pred: Tensor, gt: Tensor, gt_area: Tensor) -> Tensor:
    """IoU of boxes pred (M,4) with gt (M,N,4) clipped to the image, gt_area (M,N) -> (M,N) float64."""
    low = torch.maximum(pred[:, None, :2], gt[..., :2])
    high = torch.minimum(pred[:, None, 2:], gt[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    return _iou(inter, box_area(pred)[:, None], gt_area)


def box_iou(boxes: Tensor, gt_boxes: Sequence[Tensor], size: Sequence[int], unclipped_area: bool = False) -> Tensor:
    """IoU_b = |R ∩ G_b| / (|R| + area(b) − |R ∩ G_b|) of each predicted box with each gt box.

    boxes (B,4) half-open inside the image; gt_boxes: list of B (N_b,4). G_b is b clipped to the
    image. area(b) is the clipped area by default; ``unclipped_area=True`` reproduces the original,
    which divides by the area of the unclipped box. A zero-area gt box gives 0.
    Returns (B,N) float32 in [0,1], N = most boxes of an image; NaN pads images with fewer boxes.
    """
    size = _check_size(size)
    pred = _as_boxes(boxes, size)
    gt, area, valid = _gt_geometry(gt_boxes, len(pred), size, unclipped_area, pred.device)
    return _pairwise_iou(pred, gt, area).masked_fill(~valid, math.nan).float()


def _localization_error(iou: Tensor, correct: Tensor | None) -> Tensor:
    hit = iou > IOU_THRESHOLD  # NaN padding never hits
    if correct is not None:
        hit = hit & correct[:, None]
    return (1.0 - hit.any(1).float()).masked_fill(iou.isnan().all(1), math.nan)


def localization_error(boxes: Tensor, gt_boxes: Sequence[Tensor], size: Sequence[int],
                       unclipped_area: bool = False) -> Tensor:
    """LE = 1 − max_b 1[IoU_b > 0.5]: 0.0 when the box localises some gt box, else 1.0.

    Inputs as :func:`box_iou`. Returns (B,) float32 in {0,1}; NaN for an image without gt boxes.
    """
    return _localization_error(box_iou(boxes, gt_boxes, size, unclipped_area), None)


def official_localization_error(boxes: Tensor, gt_boxes: Sequence[Tensor], correct: Tensor, size: Sequence[int],
                                unclipped_area: bool = False) -> Tensor:
    """OM (official ILSVRC top-1 localisation error) = 1 − max_b 1[IoU_b > 0.5]·c.

    correct (B,) bool: c, the classifier's top-1 prediction equals the label on the clean image
    (the special baselines use c = 1). Other inputs as :func:`box_iou`.
    Returns (B,) float32 in {0,1}; NaN for an image without gt boxes.
    """
    iou = box_iou(boxes, gt_boxes, size, unclipped_area)
    if not isinstance(correct, Tensor) or correct.dtype != torch.bool or correct.shape != (len(iou),):
        got = f"{tuple(correct.shape)} {correct.dtype}" if isinstance(correct, Tensor) else type(correct).__name__
        raise ValueError(f"correct must be a bool tensor ({len(iou)},), one flag per image, got {got}")
    return _localization_error(iou, correct.to(iou.device))


def _box_f1(masks: Tensor, gt_boxes: Sequence[Tensor], unclipped_area: bool) -> tuple[Tensor, Tensor]:
    """Soft F1_b of each mask with each gt box: -> (B,N) float64, valid (B,N)."""
    m = _as_masks(masks).double()
    size = tuple(m.shape[1:])
    gt, area, valid = _gt_geometry(gt_boxes, len(m), size, unclipped_area, m.device)
    ys = torch.arange(size[0], device=m.device, dtype=torch.float64)
    xs = torch.arange(size[1], device=m.device, dtype=torch.float64)
    rows = ((ys >= gt[..., 1:2]) & (ys < gt[..., 3:4])).double()  # (B,N,H)
    cols = ((xs >= gt[..., 0:1]) & (xs < gt[..., 2:3])).double()  # (B,N,W)
    inter = torch.einsum("bnh,bhw,bnw->bn", rows, m, cols)  # Σ m·G_b
    return _f1(inter, m.sum((1, 2))[:, None], area), valid


def soft_f1(masks: Tensor, gt_boxes: Sequence[Tensor], unclipped_area: bool = False) -> Tensor:
    """F1 = max_b F1_b between the continuous mask m and each gt box's indicator G_b.

    P = Σ(m·G_b) / (Σm + 1e-6), R = Σ(m·G_b) / area(b), F1_b = 2PR / (P + R + 1e-6); area(b) as in
    :func:`box_iou` (``unclipped_area=True`` is the original). masks (B,H,W) or (B,1,H,W) in [0,1],
    gt_boxes list of B (N_b,4). Returns (B,) float32 in [0,1] (an all-zero mask gives 0);
    NaN for an image without gt boxes.
    """
    return _best(*_box_f1(masks, gt_boxes, unclipped_area))


def soft_f1_average(masks: Tensor, gt_boxes: Sequence[Tensor], unclipped_area: bool = False) -> Tensor:
    """F1a = mean_b F1_b over the image's gt boxes (zero-area boxes count as 0); see :func:`soft_f1`."""
    return _average(*_box_f1(masks, gt_boxes, unclipped_area))


def ground_truth_localization(gt_boxes: Sequence[Tensor], size: Sequence[int],
                              unclipped_area: bool = False) -> dict[str, Tensor]:
    """The ``ground_truth`` baseline: each gt box b is scored as its own prediction (box b, mask G_b).

    IoU_b = |G_b| / area(b) and F1_b uses m = G_b, so both are 1 unless ``unclipped_area`` counts
    the part of b outside the image. Returns {"iou": (B,N) NaN-padded, "localization_error",
    "soft_f1", "soft_f1_average": (B,)} float32. Its SM (averaged over the image's boxes in the
    original) is :func:`saliency_metric_wsol` of each box clipped to the image.
    """
    size = _check_size(size)
    device = next((b.device for b in gt_boxes if isinstance(b, Tensor)), torch.device("cpu"))
    gt, area, valid = _gt_geometry(gt_boxes, len(gt_boxes), size, unclipped_area, device)
    inside = box_area(gt)
    iou = _iou(inside, inside, area).masked_fill(~valid, math.nan).float()
    f1 = _f1(inside, inside, area)
    return {"iou": iou, "localization_error": _localization_error(iou, None),
            "soft_f1": _best(f1, valid), "soft_f1_average": _average(f1, valid)}


# ---------------------------------------------------------------- saliency metric

@torch.no_grad()
def saliency_metric_wsol(classifier: Callable[[Tensor], Tensor], images: Tensor, boxes: Tensor,
                         labels: Tensor | int, input_size: Sequence[int] | None = None,
                         fill: Sequence[float] | Tensor | None = None) -> dict[str, Tensor]:
    """Dabkowski & Gal's saliency metric on box crops (as the masking-saliency authors' code scores it); lower SM is better.

    Each image (B,3,H,W in [0,1], unnormalised) is cropped to its half-open box (B,4), resized to
    ``input_size`` (default (H,W)) with bicubic ``F.interpolate`` (align_corners=False, no clamp) and
    classified by ``classifier`` (a saliencylab Classifier, or any callable mapping images in [0,1]
    to logits (B,C)). An empty box gives a mean-colour image, ``fill`` (3,) in [0,1], by default
    ``classifier.mean`` (zero in normalised space).
    SM1 = log(clamp(box area / (H·W), 0.05, 1)), SM2 = log softmax_y(crop), SM = SM1 − SM2;
    y = ``labels`` ((B,) class indices or one int). Returns {"sm", "sm1", "sm2": (B,) float32,
    "sm_correct": (B,) float32 in {0,1}, top-1 of the crop == y; sm_acc = 100·mean}.
    The original resizes the *normalised* crop with cv2 INTER_CUBIC; the cubic kernel (a = −0.75)
    is the same and linear, so resizing before the classifier's normalisation matches it up to
    border handling and float rounding.
    """
    check_images(images)
    height, width = images.shape[2:]
    boxes = _as_boxes(boxes, (height, width))
    if len(boxes) != len(images):
        raise ValueError(f"boxes hold {len(boxes)} rows but images hold {len(images)}")
    out_size = (height, width) if input_size is None else _check_size(input_size)
    fill = getattr(classifier, "mean", None) if fill is None else torch.as_tensor(fill, dtype=torch.float32)
    if not isinstance(fill, Tensor) or fill.numel() != 3:
        raise TypeError("saliency_metric_wsol needs the mean colour of empty boxes: pass fill=(r,g,b) in [0,1] "
                        "or a classifier with a (3,) ``mean`` (a saliencylab Classifier)")
    fill = fill.to(images).view(1, 3, 1, 1).expand(1, 3, *out_size)
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.long().tolist()):
        if x2 > x1 and y2 > y1:
            crop = image[None, :, y1:y2, x1:x2]
            crops.append(F.interpolate(crop, size=out_size, mode="bicubic", align_corners=False))
        else:
            crops.append(fill)
    logits = classifier(torch.cat(crops)).float()
    labels = as_targets(labels, len(images), num_classes=logits.shape[1])
    if labels.shape[1] != 1:
        raise ValueError(f"labels must hold one class per image, (B,) or an int, got shape {tuple(labels.shape)}")
    labels = labels.to(logits.device)
    sm2 = logits.log_softmax(1).gather(1, labels)[:, 0]
    sm1 = (box_area(boxes) / (height * width)).clamp(SM_MIN_AREA, 1.0).log().float().to(sm2.device)
    correct = (logits.argmax(1) == labels[:, 0]).float()
    return {"sm": sm1 - sm2, "sm1": sm1, "sm2": sm2, "sm_correct": correct}


# ---------------------------------------------------------------- mask statistics

def binarized_fraction(masks: Tensor) -> Tensor:
    """The "binarized" column: fraction of pixels above the image's mean, (B,H,W) -> (B,) float32."""
    return binarize_at_mean(masks).double().mean((1, 2)).float()


def avg_mask(masks: Tensor) -> Tensor:
    """The "Mask" column: mean mask value per image, (B,H,W) in [0,1] -> (B,) float32."""
    return _as_masks(masks).double().mean((1, 2)).float()


def std_mask(masks: Tensor) -> Tensor:
    """Unbiased std across the batch's images of their mean mask: (B,H,W) -> () float32; NaN if B < 2.

    A batch statistic: the original averages it over batches of 128 weighted by batch size, so
    pass batches of the size you compare with (one call over a whole dataset is the dataset std).
    """
    means = avg_mask(masks).double()
    if len(means) < 2:
        return torch.tensor(math.nan, device=means.device)
    return means.std().float()


def mask_entropy(masks: Tensor) -> Tensor:
    """Mean per-pixel −m·log2(m) (pixels with 0 < m < 1; others add 0): (B,H,W) -> (B,) float32.

    Not the binary entropy: the original's "entropy" column, which its README describes wrongly.
    """
    m = _as_masks(masks).double()
    inside = (m > 0) & (m < 1)
    terms = torch.where(inside, -m * m.log2(), 0.0)  # m = 0 gives NaN only in the unused branch
    return terms.mean((1, 2)).float()


def mask_tv(masks: Tensor) -> Tensor:
    """mean (Δx m)² + mean (Δy m)² over each image's neighbour differences: (B,H,W) -> (B,) float32."""
    m = _as_masks(masks).double()
    dx = (m[:, :, 1:] - m[:, :, :-1]).square().flatten(1).mean(1)
    dy = (m[:, 1:, :] - m[:, :-1, :]).square().flatten(1).mean(1)
    return (dx + dy).float()


# ---------------------------------------------------------------- special baselines

def baseline(name: str, batch_size: int, size: Sequence[int],
             device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Masks (B,H,W) float32 in {0,1} and half-open boxes (B,4) float32 of a special baseline.

    ``max``: the whole image, box (0,0,W,H).
    ``min``: the empty mask and the zero box.
    ``center``: the square 33:191 of a 224 image; other sizes scale both ends proportionally,
    round(33·H/224):round(191·H/224) (halves rounded up), likewise with W.
    ``ground_truth`` has no single mask: see :func:`ground_truth_localization`.
    """
    height, width = _check_size(size)
    if name == "max":
        box = (0, 0, width, height)
    elif name == "min":
        box = (0, 0, 0, 0)
    elif name == "center":
        def scale(v: int, n: int) -> int:
            return math.floor(v * n / 224 + 0.5)
        start, stop = CENTER_BOX_224
        box = (scale(start, width), scale(start, height), scale(stop, width), scale(stop, height))
    else:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES} "
                         "(score 'ground_truth' with ground_truth_localization)")
    boxes = torch.tensor([box], dtype=torch.float32, device=device).expand(batch_size, 4).clone()
    return box_to_mask(boxes, (height, width)).float(), boxes


# ---------------------------------------------------------------- threshold sweeps (Choe et al. CVPR 2020)

def cam_thresholds(interval: float = 0.01) -> Tensor:
    """The sweep of wsolevaluation's ``cam_curve_interval``: 0, interval, ... below 1, (T,) float64.

    The default 0.01 gives the 100 thresholds 0, 0.01, ..., 0.99 (the masking-saliency authors' setting; wsolevaluation's own
    default is 0.001).
    """
    if not 0 < interval < 1:
        raise ValueError(f"cam_curve_interval must lie in (0, 1), got {interval}")
    return torch.arange(0, 1, interval, dtype=torch.float64)


def _as_thresholds(thresholds: Sequence[float] | Tensor | None) -> Tensor:
    """Validate a threshold sweep (default :func:`cam_thresholds`) -> (T,) float64 on the CPU."""
    t = cam_thresholds() if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64).flatten().cpu()
    if not len(t) or t[0] != 0 or float(t[-1]) >= 1 or (t.diff() <= 0).any():
        raise ValueError(f"thresholds must increase strictly from 0 and stay below 1, got {t.tolist()}")
    return t


# ---------------------------------------------------------------- PxAP

class PxAP:
    """Pixel average precision (wsolevaluation ``MaskEvaluator``; Choe et al. CVPR 2020), accumulated.

    ``thresholds``: increasing, in [0,1), starting at 0 (default 0, 0.01, ..., 0.99, float64). Every
    non-ignored pixel's score goes into a histogram of GT-positive or GT-negative pixels over the
    whole dataset; the curve points are the thresholds plus 1.0, swept from high to low:
    TP(τ) = #pos ≥ τ, FP(τ) = #neg ≥ τ, P = TP/(TP+FP), R = TP/#pos, and
    PxAP = 100·Σ_k P_k·(R_k − R_{k−1}) over the points with TP+FP > 0 (R before the first point = 0).
    """

    def __init__(self, thresholds: Sequence[float] | Tensor | None = None) -> None:
        t = _as_thresholds(thresholds)
        self.edges = torch.cat([t, t.new_ones(1)])
        self.positives = torch.zeros(len(self.edges), dtype=torch.long)
        self.negatives = torch.zeros(len(self.edges), dtype=torch.long)

    def _histogram(self, scores: Tensor) -> Tensor:
        """Count scores per bin [edge_i, edge_{i+1}); the last bin holds the scores equal to 1."""
        bins = torch.bucketize(scores, self.edges.to(scores.device), right=True) - 1
        return torch.bincount(bins, minlength=len(self.edges)).cpu()

    def update(self, masks: Tensor, gt: Tensor, ignore: Tensor | None = None) -> None:
        """Add a batch: masks (B,H,W) in [0,1], gt (B,H,W) bool foreground, ignore (B,H,W) bool or None.

        (B,1,H,W) is accepted too. Pixels in ``ignore`` that are not foreground are left out of both
        histograms (wsolevaluation's ignore boxes).
        """
        m = _as_masks(masks).double()
        gt = _as_bool(gt, "gt", tuple(m.shape)).to(m.device)
        negative = ~gt
        if ignore is not None:
            negative = negative & ~_as_bool(ignore, "ignore", tuple(m.shape)).to(m.device)
        self.positives += self._histogram(m[gt])
        self.negatives += self._histogram(m[negative])

    @classmethod
    def from_histograms(cls, positives: Tensor, negatives: Tensor,
                        thresholds: Sequence[float] | Tensor | None = None) -> "PxAP":
        """An accumulator holding given histograms (T+1,) each, e.g. sums of :func:`pxap_histograms` rows."""
        metric = cls(thresholds)
        if positives.shape != metric.positives.shape or negatives.shape != metric.negatives.shape:
            raise ValueError(f"histograms must have {len(metric.edges)} bins, got {tuple(positives.shape)} "
                             f"and {tuple(negatives.shape)}")
        metric.positives += positives.long().cpu()
        metric.negatives += negatives.long().cpu()
        return metric

    def curve(self) -> tuple[Tensor, Tensor, Tensor]:
        """The PR curve, thresholds from 1.0 down to 0: (thresholds, precision, recall), (T+1,) float64.

        Precision is NaN where TP+FP = 0; recall is NaN when no positive pixel was seen.
        """
        tp = self.positives.flip(0).cumsum(0).double()
        fp = self.negatives.flip(0).cumsum(0).double()
        return self.edges.flip(0), tp / (tp + fp), tp / self.positives.sum()

    def compute(self) -> float:
        """PxAP in percent, 0-100; NaN when no GT-positive pixel has been seen."""
        if not int(self.positives.sum()):
            return math.nan
        _, precision, recall = self.curve()
        previous = torch.cat([recall.new_zeros(1), recall[:-1]])
        defined = ~precision.isnan()
        return 100.0 * float((precision * (recall - previous))[defined].sum())


def pxap_histograms(masks: Tensor, gt: Tensor, ignore: Tensor | None = None,
                    thresholds: Sequence[float] | Tensor | None = None) -> Tensor:
    """The GT-positive then GT-negative pixel histograms of one batch, (2(T+1),) int64: summed over
    images and passed to :meth:`PxAP.from_histograms`, they give the dataset's PxAP."""
    metric = PxAP(thresholds)
    metric.update(masks, gt, ignore)
    return torch.cat([metric.positives, metric.negatives])


def pixel_average_precision(masks: Tensor, gt: Tensor, ignore: Tensor | None = None,
                            thresholds: Sequence[float] | Tensor | None = None) -> float:
    """PxAP (percent) of one set of masks: ``PxAP(thresholds)`` updated once, see :class:`PxAP`."""
    metric = PxAP(thresholds)
    metric.update(masks, gt, ignore)
    return metric.compute()


# ---------------------------------------------------------------- MaxBoxAcc

IOU_THRESHOLDS_V2 = (0.3, 0.5, 0.7)
"""MaxBoxAccV2's IoU thresholds δ (Choe et al. CVPR 2020, §4.1); MaxBoxAcc uses δ = 0.5 alone."""
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""Components of the box sweep are 8-connected, like the outer contours of OpenCV's findContours."""


def _component_boxes(binary: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Half-open boxes (K,4) float64 of the 8-connected components of a (H,W) bool array: all of them
    (``multi_contour``) or the largest only (most pixels; ties: the first met in row-major order)."""
    labels, count = ndimage.label(binary, structure=EIGHT_CONNECTED)
    if not count:
        return np.zeros((0, 4))
    rows_cols = ndimage.find_objects(labels)  # label k+1 -> (row slice, col slice), half-open
    boxes = np.array([[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in rows_cols], dtype=np.float64)
    if multi_contour:
        return boxes
    sizes = np.bincount(labels.ravel())[1:]  # label 0 is the background
    return boxes[[int(sizes.argmax())]]


def box_iou_curve(masks: Tensor, gt_boxes: Sequence[Tensor], thresholds: Sequence[float] | Tensor | None = None,
                  multi_contour: bool = False, unclipped_area: bool = False) -> Tensor:
    """Best box IoU of each image at each threshold of a sweep (Choe et al. CVPR 2020, §4.1; the
    per-image data of MaxBoxAcc and MaxBoxAccV2).

    masks (B,H,W) or (B,1,H,W) in [0,1]: min-max normalise raw maps first (the reference normalises in
    its inference code; ``bench.wsol.method_explain`` does it here). At threshold τ the mask is binarised
    as m > τ·max(m), strict and relative to the image's maximum like the reference's
    ``cv2.threshold(THRESH_BINARY)`` at ``τ·max`` (which works on the map quantised to 8 bits; this uses
    the float values). Each 8-connected component gives its tight half-open box; the candidates are the
    largest component's box (MaxBoxAcc), or every component's box with ``multi_contour=True``
    (MaxBoxAccV2). IoU with every gt box as :func:`box_iou` (``unclipped_area`` likewise); the best over
    candidates and gt boxes is kept. An empty binarisation (an all-zero mask, or τ·max above every
    pixel) has no box and scores 0.
    thresholds: increasing from 0, below 1 (default :func:`cam_thresholds` (), 0..0.99 by 0.01).
    Returns (B,T) float64 in [0,1] on the masks' device; a NaN row for an image without gt boxes.
    Rows of different batches concatenate: :func:`box_accuracy` reads the stacked (N,T) rows.
    """
    m = _as_masks(masks).double().cpu()
    t = _as_thresholds(thresholds)
    batch_size, steps = len(m), len(t)
    gt, area, valid = _gt_geometry(gt_boxes, batch_size, tuple(m.shape[1:]), unclipped_area, m.device)
    levels = t[None, :] * m.flatten(1).amax(1, keepdim=True)  # (B,T): τ·max(m)
    boxes, owner = [np.zeros((0, 4))], []
    for i, (image, cuts) in enumerate(zip(m.numpy(), levels.numpy())):
        for j, cut in enumerate(cuts):
            found = _component_boxes(image > cut, multi_contour)
            boxes.append(found)
            owner += [i * steps + j] * len(found)
    pred = torch.from_numpy(np.concatenate(boxes))
    owner = torch.tensor(owner, dtype=torch.long)
    image = owner // steps
    best = _pairwise_iou(pred, gt[image], area[image]).masked_fill(~valid[image], 0.0).amax(1)  # N >= 1 (padded)
    curve = torch.zeros(batch_size * steps, dtype=torch.float64).scatter_reduce(0, owner, best, "amax")
    curve = curve.view(batch_size, steps).masked_fill(~valid.any(1, keepdim=True), math.nan)
    return curve.to(masks.device)


def box_accuracy(ious: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """BoxAcc(τ) = 100 · mean over images of 1[IoU(τ) ≥ δ] (Choe et al. CVPR 2020, §4.1; ≥ as wsolevaluation).

    ious (N,T) from :func:`box_iou_curve` (batches concatenated); rows of images without gt boxes (NaN)
    are left out. δ = ``iou_threshold`` in (0,1]. Returns (T,) float64 in percent; its max over τ is
    MaxBoxAcc(δ). All NaN when no row is defined.
    """
    if not isinstance(ious, Tensor) or ious.dim() != 2:
        got = tuple(ious.shape) if isinstance(ious, Tensor) else type(ious).__name__
        raise ValueError(f"ious must be a tensor (N,T), one IoU curve per image, got {got}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    defined = ious[~ious.isnan().any(1)].double()
    if not len(defined):
        return torch.full((ious.shape[1],), math.nan, dtype=torch.float64)
    return 100.0 * (defined >= iou_threshold).double().mean(0)


class MaxBoxAcc:
    """MaxBoxAcc / MaxBoxAccV2 (Choe et al. "Evaluating WSOL methods right", CVPR 2020, §4.1;
    wsolevaluation ``BoxEvaluator``), accumulated over a dataset.

    Keeps each image's IoU curve (:func:`box_iou_curve`), so accumulators of dataset shards
    :meth:`merge` into the one-pass result. MaxBoxAcc = ``MaxBoxAcc().compute(0.5)``; MaxBoxAccV2 =
    the mean over δ in :data:`IOU_THRESHOLDS_V2` of ``MaxBoxAcc(multi_contour=True).compute(δ)``, each δ
    with its own best threshold.
    """

    def __init__(self, thresholds: Sequence[float] | Tensor | None = None, multi_contour: bool = False,
                 unclipped_area: bool = False) -> None:
        self.thresholds = _as_thresholds(thresholds)
        self.multi_contour = multi_contour
        self.unclipped_area = unclipped_area
        self.curves: list[Tensor] = []

    def update(self, masks: Tensor, gt_boxes: Sequence[Tensor]) -> None:
        """Add a batch: masks (B,H,W) or (B,1,H,W) in [0,1], gt_boxes list of B half-open (N_b,4)."""
        self.curves.append(box_iou_curve(masks, gt_boxes, self.thresholds, self.multi_contour,
                                         self.unclipped_area).cpu())

    def merge(self, other: MaxBoxAcc) -> None:
        """Append the images of ``other`` (same thresholds and options), e.g. another shard."""
        same = (torch.equal(self.thresholds, other.thresholds) and self.multi_contour == other.multi_contour
                and self.unclipped_area == other.unclipped_area)
        if not same:
            raise ValueError("MaxBoxAcc.merge needs the same thresholds, multi_contour and unclipped_area")
        self.curves += other.curves

    @property
    def ious(self) -> Tensor:
        """Every image's IoU curve so far, (N,T) float64 (NaN rows: images without gt boxes)."""
        return torch.cat([self.thresholds.new_zeros(0, len(self.thresholds)), *self.curves])

    def compute(self, iou_threshold: float = 0.5) -> float:
        """MaxBoxAcc(δ) = max over τ of :func:`box_accuracy`, in percent 0-100; NaN without images."""
        return float(box_accuracy(self.ious, iou_threshold).max())
