"""Reduce per-(image, target) scores to per-class numbers."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from saliencylab.targets import PAD, as_targets


def class_mean(scores: Tensor, targets: Tensor, num_classes: int,
               unseen_as_zero: bool = False) -> tuple[Tensor, float]:
    """Mean score of each class and the mean of those class means (TorchRay's pointing protocol).

    scores (B,K) with NaN = undefined (skipped, empty gt, padded); targets (B,K), -1 = padding.
    Returns per_class (C,) float32 (NaN for a class with no defined score) and the mean over
    classes that have one. TorchRay clamps its denominators to >= 1, so unseen classes count as
    0 and the mean runs over all C classes: ``unseen_as_zero=True`` reproduces that.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (B,K), got {tuple(scores.shape)}")
    targets = as_targets(targets, scores.shape[0], num_classes=num_classes).to(scores.device)
    if targets.shape != scores.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the shape of scores {tuple(scores.shape)}")
    defined = (targets != PAD) & ~scores.isnan()
    classes = targets[defined]
    totals = torch.zeros(num_classes, device=scores.device).index_add_(0, classes, scores[defined].float())
    counts = torch.bincount(classes, minlength=num_classes)
    per_class = totals / counts
    if unseen_as_zero:
        per_class = per_class.nan_to_num(nan=0.0)
    seen = ~per_class.isnan()
    mean = float(per_class[seen].mean()) if seen.any() else math.nan
    return per_class, mean
