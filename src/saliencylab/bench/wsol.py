"""WSOL evaluation of masking-based saliency (spec 001 §4): one mask per image -> the paper's table.

Per image: LE, OM, F1, F1a, SM/SM1/SM2, classifier and crop correctness, mask statistics, all from
:mod:`saliencylab.metrics.wsol`; :meth:`WSOLScores.summary` averages them into the columns of
spec §4.4 (LE, OM, F1 as fractions, top1 and sm_acc in percent, as the original prints them).
Optionally (``max_box_acc=True``) MaxBoxAcc and MaxBoxAccV2 (Choe et al. CVPR 2020), dataset-level
numbers in percent from each image's IoU curve over a threshold sweep.
Data: batches of single-label Samples with ground-truth boxes (``ImageNetDataset`` with a box
file); PxAP takes samples with a segmentation (``OpenImagesDataset``).

Box convention. ``Sample.boxes`` hold inclusive pixel corners (types.py); the metrics take
half-open boxes. ``boxes_inclusive=True`` (the default) converts with ``inclusive_to_half_open``
(x2 + 1, y2 + 1): right for the synthetic sets, whose boxes are the rendered objects' inclusive
corners. ImageNetDataset keeps the original's mapped integers, which the original code used as
half-open ends (no +1); pass ``boxes_inclusive=False`` together with ``one_pixel_smaller=True``
and ``unclipped_area=True`` to reproduce its numbers on real ImageNet boxes.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saliencylab.maps import normalize_minmax
from saliencylab.methods.base import Method, scoped_eval
from saliencylab.metrics import ground_truth, wsol
from saliencylab.models.classifier import Classifier
from saliencylab.targets import PAD, from_multi_hot
from saliencylab.types import Batch

Explain = Callable[[Batch], Tensor]
"""explain(batch) -> one mask per image, (B,1,H,W) or (B,H,W) float in [0,1]."""

COLUMNS = ("LE", "OM", "F1", "F1a", "SM", "SM1", "SM2", "sm_acc", "top1", "binarized", "avg_mask", "std_mask",
           "entropy", "tv", "images", "seconds")
"""The keys of :meth:`WSOLScores.summary`, in the order of spec §4.4."""
BOX_COLUMNS = ("MaxBoxAcc", "MaxBoxAccV2@30", "MaxBoxAccV2@50", "MaxBoxAccV2@70", "MaxBoxAccV2")
"""The keys :meth:`WSOLScores.summary` adds after :data:`COLUMNS` when MaxBoxAcc is on (percent)."""
LOWER_IS_BETTER = ("LE", "OM", "SM")
HIGHER_IS_BETTER = ("F1", "F1a", "SM2", "sm_acc", "top1", "PxAP", *BOX_COLUMNS)
BASELINES = (*wsol.BASELINES, "ground_truth")


@dataclass
class WSOLScores:
    """Per-image WSOL scores of one method (or baseline) over a dataset.

    values[name]: one (B,) float tensor per batch; batch_std: (std_mask, batch size) per batch;
    seconds spent in ``explain`` (0 for baselines); images scored. box_v1 / box_v2: None, or the
    MaxBoxAcc accumulators of the largest component's box / of every component's box (their ``ious``
    are the per-image (N,T) IoU curves; accumulators of shards ``merge``).
    """

    values: dict[str, list[Tensor]] = field(default_factory=dict)
    batch_std: list[tuple[float, int]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    box_v1: wsol.MaxBoxAcc | None = None
    box_v2: wsol.MaxBoxAcc | None = None

    def add(self, **values: Tensor) -> None:
        for name, value in values.items():
            self.values.setdefault(name, []).append(value.detach().float().cpu())

    def per_image(self) -> dict[str, Tensor]:
        """Every per-image score over the dataset, (N,) each: LE, OM, F1, F1a, SM, SM1, SM2,
        sm_correct, correct (top-1 of the clean image) in {0,1}, binarized, avg_mask, entropy, tv."""
        return {name: torch.cat(parts) for name, parts in self.values.items()}

    def summary(self) -> dict[str, float]:
        """The table row: the keys of :data:`COLUMNS`. Means over images; sm_acc and top1 in percent;
        std_mask averaged over batches with batch-size weights, skipping batches of one image
        (their std is undefined); NaN when no batch had two images. With the box accumulators, then
        :data:`BOX_COLUMNS`: MaxBoxAcc (IoU ≥ 0.5), MaxBoxAccV2 at δ = 30, 50, 70 % and their mean."""
        if not self.images:
            raise ValueError("no images were scored: the batches were empty")
        means = {name: float(value.mean()) for name, value in self.per_image().items()}
        defined = [(std, size) for std, size in self.batch_std if not math.isnan(std)]
        weight = sum(size for _, size in defined)
        means["sm_acc"], means["top1"] = 100 * means.pop("sm_correct"), 100 * means.pop("correct")
        means["std_mask"] = sum(std * size for std, size in defined) / weight if weight else math.nan
        means["images"], means["seconds"] = self.images, self.seconds
        row = {name: means[name] for name in COLUMNS}
        if self.box_v1 is not None and self.box_v2 is not None:
            v2 = [self.box_v2.compute(delta) for delta in wsol.IOU_THRESHOLDS_V2]
            row.update(zip(BOX_COLUMNS, [self.box_v1.compute(0.5), *v2, sum(v2) / len(v2)]))
        return row


def method_explain(method: Method, normalize: bool = True) -> Explain:
    """explain(batch): ``method``'s map for each image's label class, min-max normalised to [0,1].

    ``normalize=False`` keeps the raw maps, for methods whose maps already are masks in [0,1]
    (``masker``: the original scores its sigmoid output as it is). Returns (B,1,H,W).
    """
    def explain(batch: Batch) -> Tensor:
        maps = method.attribute(batch.images, single_labels(batch))
        return normalize_minmax(maps) if normalize else maps
    return explain


def single_labels(batch: Batch) -> Tensor:
    """The one class of each image, (B,) int64 on the batch's device; ValueError unless single-label."""
    targets = from_multi_hot(batch.labels)
    for image_id, row in zip(batch.image_ids, targets):
        classes = row[row != PAD].tolist()
        if len(classes) != 1:
            raise ValueError(f"WSOL is single-label: image {image_id!r} has {len(classes)} labels {classes}; "
                             "use a single-label dataset such as ImageNetDataset")
    return targets[:, 0].to(batch.images.device)


def _gt_boxes(batch: Batch, boxes_inclusive: bool) -> list[Tensor]:
    """The half-open ground-truth boxes of each image, (N_b,4) each; ValueError for an image without one."""
    for image_id, boxes in zip(batch.image_ids, batch.boxes):
        if not len(boxes):
            raise ValueError(f"WSOL needs ground-truth boxes, but image {image_id!r} has none; load the data with "
                             "its boxes (ImageNetDataset(..., boxes_file=<val_bboxes.json>))")
    return [wsol.inclusive_to_half_open(b) if boxes_inclusive else b for b in batch.boxes]


@torch.no_grad()
def _top1_correct(classifier: Classifier, images: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: the classifier's top-1 class on the clean images equals the label."""
    with scoped_eval(classifier):
        return classifier(images).argmax(1) == labels


def _prepared(classifier: Classifier, batches: Iterable[Batch], boxes_inclusive: bool,
              device: torch.device | str) -> Iterator[tuple[Batch, Tensor, list[Tensor], Tensor]]:
    """(batch on device, labels (B,), half-open gt boxes, top-1 correct (B,) bool) per batch."""
    for batch in batches:
        batch = batch.to(device)
        labels = single_labels(batch)
        gt = _gt_boxes(batch, boxes_inclusive)
        yield batch, labels, gt, _top1_correct(classifier, batch.images, labels)


def _masks(masks: Tensor, batch: Batch) -> Tensor:
    """Check explain's output against the batch -> (B,H,W)."""
    if isinstance(masks, Tensor) and masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    expected = (len(batch), *batch.images.shape[-2:])
    if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"explain(batch) must return one mask per image, (B,1,H,W) or (B,H,W) with (B,H,W) = "
                         f"{expected}, got {got}")
    return masks.detach()


def _new_scores(max_box_acc: bool, cam_curve_interval: float, multi_contour: bool, unclipped_area: bool) -> WSOLScores:
    """Empty scores, with MaxBoxAcc (largest component) and MaxBoxAccV2 accumulators if ``max_box_acc``."""
    if not max_box_acc:
        return WSOLScores()
    thresholds = wsol.cam_thresholds(cam_curve_interval)
    return WSOLScores(box_v1=wsol.MaxBoxAcc(thresholds, False, unclipped_area),
                      box_v2=wsol.MaxBoxAcc(thresholds, multi_contour, unclipped_area))


def _add(scores: WSOLScores, masks: Tensor, gt: list[Tensor], correct: Tensor, sm: dict[str, Tensor],
         **localization: Tensor) -> None:
    """Add one batch: localisation scores (B,), SM results, clean top-1 correctness, mask statistics and
    the box sweeps' IoU curves."""
    scores.add(**localization, SM=sm["sm"], SM1=sm["sm1"], SM2=sm["sm2"], sm_correct=sm["sm_correct"],
               correct=correct, binarized=wsol.binarized_fraction(masks), avg_mask=wsol.avg_mask(masks),
               entropy=wsol.mask_entropy(masks), tv=wsol.mask_tv(masks))
    scores.batch_std.append((float(wsol.std_mask(masks)), len(masks)))
    scores.images += len(masks)
    for accumulator in (scores.box_v1, scores.box_v2):
        if accumulator is not None:
            accumulator.update(masks, gt)


def _score_boxes(scores: WSOLScores, reference: Classifier, batch: Batch, labels: Tensor, gt: list[Tensor],
                 masks: Tensor, boxes: Tensor, correct: Tensor, om_correct: Tensor, unclipped_area: bool) -> None:
    """Score masks (B,H,W) in [0,1] with their predicted half-open boxes (B,4)."""
    size = tuple(masks.shape[-2:])
    with scoped_eval(reference):
        sm = wsol.saliency_metric_wsol(reference, batch.images, boxes, labels)
    _add(scores, masks, gt, correct, sm,
         LE=wsol.localization_error(boxes, gt, size, unclipped_area),
         OM=wsol.official_localization_error(boxes, gt, om_correct, size, unclipped_area),
         F1=wsol.soft_f1(masks, gt, unclipped_area), F1a=wsol.soft_f1_average(masks, gt, unclipped_area))


def _score_ground_truth(scores: WSOLScores, reference: Classifier, batch: Batch, labels: Tensor, gt: list[Tensor],
                        correct: Tensor, unclipped_area: bool) -> None:
    """The ``ground_truth`` row: each gt box is its own prediction; SM and sm_correct are averaged over an
    image's boxes (clipped to the image); the mask statistics use the union of the clipped boxes."""
    height, width = batch.images.shape[-2:]
    result = wsol.ground_truth_localization(gt, (height, width), unclipped_area)
    clipped = torch.cat([torch.minimum(b.clamp(min=0), b.new_tensor([width, height, width, height])) for b in gt])
    owner = torch.cat([torch.full((len(b),), i, device=clipped.device) for i, b in enumerate(gt)])
    with scoped_eval(reference):
        sm = wsol.saliency_metric_wsol(reference, batch.images[owner], clipped, labels[owner])
    count = torch.bincount(owner, minlength=len(gt)).float()
    sm = {k: torch.zeros_like(count).index_add_(0, owner, v) / count for k, v in sm.items()}
    rectangles = wsol.box_to_mask(clipped, (height, width)).float()
    masks = torch.zeros(len(gt), height, width, device=clipped.device).index_add_(0, owner, rectangles).clamp(max=1)
    _add(scores, masks, gt, correct, sm, LE=result["localization_error"], OM=result["localization_error"],
         F1=result["soft_f1"], F1a=result["soft_f1_average"])


def evaluate_wsol(explain: Explain, classifier: Classifier, batches: Iterable[Batch], *,
                  reference_classifier: Classifier | None = None, one_pixel_smaller: bool = False,
                  unclipped_area: bool = False, boxes_inclusive: bool = True, max_box_acc: bool = False,
                  cam_curve_interval: float = 0.01, multi_contour: bool = True,
                  device: torch.device | str = "cpu") -> WSOLScores:
    """Score ``explain``'s masks (one per image, in [0,1]) on batches of single-label Samples with boxes.

    Boxes come from the masks (binarised at their mean, largest 4-connected component); OM's and
    top1's correctness is ``classifier``'s top-1 on the clean image; SM runs ``reference_classifier``
    (default ``classifier``; the original uses a pretrained ResNet-50) on the box crops.
    ``one_pixel_smaller`` and ``unclipped_area`` reproduce the original's arithmetic (see
    metrics.wsol); ``boxes_inclusive``: see the module docstring. Classifiers must be on ``device``.
    For a registered method pass ``method_explain(method)``.
    ``max_box_acc``: also sweep thresholds 0, ``cam_curve_interval``, ... < 1 for MaxBoxAcc and
    MaxBoxAccV2 (``metrics.wsol.box_iou_curve``; V2 takes every component's box unless
    ``multi_contour=False``); ``unclipped_area`` applies to them too, ``one_pixel_smaller`` does not.
    """
    reference = classifier if reference_classifier is None else reference_classifier
    scores = _new_scores(max_box_acc, cam_curve_interval, multi_contour, unclipped_area)
    for batch, labels, gt, correct in _prepared(classifier, batches, boxes_inclusive, device):
        start = time.perf_counter()
        masks = explain(batch)
        if isinstance(masks, Tensor) and masks.is_cuda:
            torch.cuda.synchronize(masks.device)
        scores.seconds += time.perf_counter() - start
        masks = _masks(masks, batch)
        boxes = wsol.predicted_boxes(masks, one_pixel_smaller)
        _score_boxes(scores, reference, batch, labels, gt, masks, boxes, correct, correct, unclipped_area)
    return scores


def evaluate_wsol_baseline(name: str, classifier: Classifier, batches: Iterable[Batch], *,
                           reference_classifier: Classifier | None = None, unclipped_area: bool = False,
                           boxes_inclusive: bool = True, max_box_acc: bool = False, cam_curve_interval: float = 0.01,
                           multi_contour: bool = True, device: torch.device | str = "cpu") -> WSOLScores:
    """The special rows of the original (spec §4.4), scored like :func:`evaluate_wsol`.

    ``max``: the whole image; ``min``: the empty mask and box; ``center``: the centre square
    (``metrics.wsol.baseline``); ``ground_truth``: each gt box as its own prediction
    (``metrics.wsol.ground_truth_localization``). OM counts every image as correctly classified for
    every special row, as the original, so OM = LE; top1 is still ``classifier``'s accuracy.
    ``max_box_acc`` and its options as :func:`evaluate_wsol` (``ground_truth`` sweeps the union of its
    clipped boxes).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown WSOL baseline {name!r}; expected one of {BASELINES}")
    reference = classifier if reference_classifier is None else reference_classifier
    scores = _new_scores(max_box_acc, cam_curve_interval, multi_contour, unclipped_area)
    for batch, labels, gt, correct in _prepared(classifier, batches, boxes_inclusive, device):
        if name == "ground_truth":
            _score_ground_truth(scores, reference, batch, labels, gt, correct, unclipped_area)
            continue
        masks, boxes = wsol.baseline(name, len(batch), batch.images.shape[-2:], batch.images.device)
        _score_boxes(scores, reference, batch, labels, gt, masks, boxes, correct, torch.ones_like(correct),
                     unclipped_area)
    return scores


def pxap(explain: Explain, batches: Iterable[Batch], *, thresholds: Sequence[float] | Tensor | None = None,
         device: torch.device | str = "cpu") -> float:
    """PxAP in percent (0-100) of ``explain``'s masks against the samples' segmentation.

    Ground truth: pixels of any class (>= 0); VOID pixels (OpenImagesDataset's ignore region) are
    left out; ``thresholds``: see ``metrics.wsol.PxAP`` (default 0, 0.01, ..., 0.99).
    """
    metric = wsol.PxAP(thresholds)
    for batch in batches:
        batch = batch.to(device)
        if batch.segmentation is None:
            raise ValueError("PxAP needs a segmentation for every image (OpenImagesDataset); "
                             f"batch {batch.image_ids[:3]} has none")
        masks = _masks(explain(batch), batch)
        metric.update(masks, ground_truth.foreground(batch.segmentation), ground_truth.void_mask(batch.segmentation))
    return metric.compute()


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def wsol_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per method (its summary dict), one column per key in order of first
    appearance (e.g. the summary's, then an added "PxAP"); ↓ marks lower-is-better columns, ↑
    higher-is-better; a missing or non-finite value prints as "–"."""
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    titles = [f"{c} ↓" if c in LOWER_IS_BETTER else f"{c} ↑" if c in HIGHER_IS_BETTER else c for c in columns]
    lines = ["| method | " + " | ".join(titles) + " |", "|---" + "|---:" * len(columns) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines) + "\n"
