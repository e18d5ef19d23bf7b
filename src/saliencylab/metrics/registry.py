"""The metric catalogue: what each metric is called, needs and prefers."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from saliencylab.metrics import functional as F


@dataclass(frozen=True)
class Metric:
    """A metric's metadata around its tensor function.

    needs: what a run must provide besides maps: ``"seg"`` (segmentation masks), ``"boxes"``
    (boxes; the pointing family was defined on boxes but takes any gt mask, so segmentation
    masks from ``ground_truth.class_masks_from_segmentation`` serve as well) and ``"model"``
    (the classifier).
    """

    name: str
    fn: Callable[..., Tensor]
    higher_is_better: bool
    needs: frozenset[str]
    description: str


SEG = frozenset({"seg"})
BOXES = frozenset({"boxes"})

_METRICS = [
    Metric("pointing_game", F.pointing_game, True, BOXES,
           "TorchRay pointing game: arg-max within 15 px of the gt (per-class mean in the protocol)"),
    Metric("pointing_game_plain", F.pointing_game_plain, True, BOXES,
           "Quantus pointing game: a maximum of the map lies on the gt, no tolerance"),
    Metric("stochastic_pointing_game", F.stochastic_pointing_game, True, BOXES,
           "fraction of 100 points drawn from the map within 15 px of the gt"),
    Metric("energy", F.energy, True, BOXES,
           "energy pointing game / content heatmap: share of positive map mass inside the gt"),
    Metric("mean_f1", F.mean_f1, True, SEG, "discrete F1 of mask and gt, mean over thresholds 0.25/0.5/0.75"),
    Metric("soft_f1", F.soft_f1, True, SEG, "F1 with soft counts of mask and gt"),
    Metric("soft_accuracy", F.soft_accuracy, True, SEG, "mean(m·s + (1−m)(1−s))"),
    Metric("discrete_iou", F.discrete_iou, True, SEG, "IoU of mask and gt binarised, mean over thresholds 0.1…0.9"),
    Metric("soft_iou", F.soft_iou, True, SEG, "Σmin(m,s) / Σmax(m,s)"),
    Metric("pixel_auc", F.pixel_auc, True, SEG, "ROC AUC of mask values as a pixel classifier of the gt"),
    Metric("overlap", F.overlap, True, SEG, "1 − mean|s − m|"),
    Metric("background_coverage", F.background_coverage, False, SEG,
           "mask mass outside the object relative to the background area"),
    Metric("object_coverage", F.object_coverage, True, SEG, "share of the object covered by the mask"),
    Metric("saliency_metric", F.saliency_metric, False, frozenset({"model"}),
           "log(max(area, 0.05)) − log Σ softmax of the gt classes on the masked image"),
]
_BY_NAME = {metric.name: metric for metric in _METRICS}


def names() -> list[str]:
    """Every registered metric name, in catalogue order."""
    return list(_BY_NAME)


def get(name: str) -> Metric:
    """The metric called ``name``; KeyError listing the known names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(_BY_NAME)}") from None
