"""Metrics: pure tensor functions (one score per (image, target), NaN = undefined) and their catalogue."""
from saliencylab.metrics import functional, ground_truth, wsol
from saliencylab.metrics.aggregate import class_mean
from saliencylab.metrics.functional import (
    background_coverage,
    discrete_f1,
    discrete_iou,
    energy,
    mean_f1,
    object_coverage,
    overlap,
    pixel_auc,
    pointing_game,
    pointing_game_plain,
    saliency_metric,
    soft_accuracy,
    soft_f1,
    soft_iou,
    stochastic_pointing_game,
)
from saliencylab.metrics.registry import Metric, get, names

__all__ = [
    "Metric", "background_coverage", "class_mean", "discrete_f1", "discrete_iou", "energy", "functional",
    "get", "ground_truth", "mean_f1", "names", "object_coverage", "overlap", "pixel_auc", "pointing_game",
    "pointing_game_plain", "saliency_metric", "soft_accuracy", "soft_f1", "soft_iou",
    "stochastic_pointing_game", "wsol",
]
