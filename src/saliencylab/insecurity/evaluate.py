"""Evaluation of insecurities against ground-truth ambiguities (Wang & Vasconcelos, "Deliberative Explanations",
NeurIPS 2019, §5, and the review-time evaluation scripts).

Each insecurity (a, b) of an image is cut to its top-ρ pixels R (:func:`..maps.top_fraction`) and compared with
what classes a and b have in common:

- CUB parts: C = the visible keypoints of the parts common to (a, b), P = every visible keypoint;
  recall = |R ∩ C| / |C|, precision = |R ∩ C| / |R ∩ P| (undefined when R holds no keypoint). Insecurities with no
  visible common keypoint are left out. Recall is averaged over an image's insecurities and then over images,
  precision likewise with NaN-means: one (precision, recall) point per ρ, a PR curve over ρ = 0.01..0.99.
- ADE20K objects: IoU of R with the union of the pixels of the objects common to (a, b); insecurities whose common
  objects cover no pixel of the image are left out (their IoU would be 0 whatever R is). Averaged over
  insecurities, then images; the scalar is the mean over ρ ∈ {.1, .3, .5, .7, .9}.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from saliencylab.insecurity.maps import fraction_thresholds

PART_FRACTIONS = tuple(round(0.01 * i, 2) for i in range(1, 100))
"""ρ of the CUB precision-recall curves."""
OBJECT_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""ρ whose IoUs are averaged for the ADE20K scalar."""
RECALL_GRID = tuple(round(0.10 + 0.01 * i, 2) for i in range(35))
"""Recalls 0.10..0.44 at which the original interpolates precision before averaging runs."""

Insecurities = dict[tuple[int, int], Tensor]
"""One image's insecurity maps: (slot a, slot b) of its top-K classes -> (H,W)."""


def part_precision_recall(inside: Tensor, visible: Tensor, common: Tensor) -> tuple[float, float]:
    """(precision, recall) of a region given which keypoints it holds, ``inside`` (P,) bool, their ``visible``
    (P,) and ``common`` (P,) flags; recall NaN without a visible common keypoint, precision NaN when the region
    holds no visible keypoint."""
    inside = inside & visible
    wanted = visible & common
    hits = float((inside & wanted).sum())
    recall = hits / float(wanted.sum()) if wanted.any() else math.nan
    precision = hits / float(inside.sum()) if inside.any() else math.nan
    return precision, recall


def at_keypoints(values: Tensor, keypoints: Tensor) -> Tensor:
    """(P,): ``values`` (H,W) (a map, or a region) at each keypoint (P,2) (x, y pixels, rounded, clamped)."""
    height, width = values.shape
    return values[keypoints[:, 1].round().long().clamp(0, height - 1),
                  keypoints[:, 0].round().long().clamp(0, width - 1)]


def object_iou(region: Tensor, objects: Tensor, common: Sequence[int]) -> float:
    """IoU of a region (H,W) bool with the pixels of ``objects`` (H,W) (object ids) whose id is in ``common``;
    NaN when those objects cover no pixel."""
    truth = torch.isin(objects, torch.as_tensor(list(common), dtype=objects.dtype, device=objects.device))
    if not truth.any():
        return math.nan
    return float((region & truth).sum()) / float((region | truth).sum())


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def part_curve(insecurities: Sequence[Insecurities], classes: Sequence[Tensor], keypoints: Sequence[Tensor],
               visible: Sequence[Tensor], common: np.ndarray,
               fractions: Sequence[float] = PART_FRACTIONS) -> dict[str, list[float]]:
    """The CUB PR curve: per ρ of ``fractions``, precision and recall averaged over insecurities then images.

    Per image i: ``insecurities[i]`` (slot pair -> map), ``classes[i]`` (K,) the class id of each slot,
    ``keypoints[i]`` (P,2), ``visible[i]`` (P,); ``common`` (C,C,P) bool from :func:`..ground_truth.common_parts`.
    Insecurities with no visible common keypoint are left out; images with none left give NaN and are skipped.
    Each region is the top-ρ cut of :func:`..maps.top_fraction`, read at the keypoints only.
    """
    per_image = []  # per image: (fractions, insecurities) precision and recall
    for maps, slots, points, seen in zip(insecurities, classes, keypoints, visible):
        scores = []
        for (a, b), insecurity in maps.items():
            shared = torch.from_numpy(common[int(slots[a]), int(slots[b])])
            if not (shared & seen).any():
                continue
            inside = at_keypoints(insecurity, points)[None, :] > fraction_thresholds(insecurity, fractions)[:, None]
            scores.append([part_precision_recall(row, seen, shared) for row in inside])
        per_image.append([(_mean([s[f][0] for s in scores]), _mean([s[f][1] for s in scores]))
                          for f in range(len(fractions))])
    return {"fractions": list(fractions),
            "precision": [_mean([image[f][0] for image in per_image]) for f in range(len(fractions))],
            "recall": [_mean([image[f][1] for image in per_image]) for f in range(len(fractions))]}


def precision_at_recall(curve: dict[str, list[float]], recalls: Sequence[float] = RECALL_GRID) -> list[float]:
    """The curve's precision linearly interpolated at ``recalls`` (NaN outside the recalls the curve reaches)."""
    points = sorted((r, p) for r, p in zip(curve["recall"], curve["precision"])
                    if not (math.isnan(r) or math.isnan(p)))
    if not points:
        return [math.nan] * len(recalls)
    r, p = np.array(points).T
    return np.interp(recalls, r, p, left=math.nan, right=math.nan).tolist()


def object_curve(insecurities: Sequence[Insecurities], classes: Sequence[Tensor], objects: Sequence[Tensor],
                 common: np.ndarray, fractions: Sequence[float] = OBJECT_FRACTIONS) -> dict[str, list[float]]:
    """The ADE20K IoU per ρ of ``fractions``, averaged over insecurities then images; ``objects[i]`` (H,W) object
    ids (0 unlabelled, 1..O); ``common`` (C,C,O) bool from :func:`..ground_truth.common_objects` (axis o = id o+1)."""
    per_image = []
    for maps, slots, labelled in zip(insecurities, classes, objects):
        scores = []
        for (a, b), insecurity in maps.items():
            ids = (np.flatnonzero(common[int(slots[a]), int(slots[b])]) + 1).tolist()
            if ids:
                scores.append([object_iou(insecurity > t, labelled, ids)
                               for t in fraction_thresholds(insecurity, fractions)])
        per_image.append([_mean([s[f] for s in scores]) for f in range(len(fractions))])
    return {"fractions": list(fractions), "iou": [_mean([image[f] for image in per_image])
                                                  for f in range(len(fractions))]}


def hardest(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` largest difficulty ``scores`` (N,), hardest first (the images explained)."""
    return scores.argsort(descending=True, stable=True)[:count]
