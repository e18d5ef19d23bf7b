"""Score explanations against ground truth: the protocol that turns maps into per-(image, target) scores.

Two families, as in the source papers:
- localisation metrics (pointing games, energy) take each target's **raw** map and that
  class's pixels (spec 002; TorchRay skips classes whose boxes are all difficult);
- the NN-Explainer segmentation suite (spec 000 §6) takes per-target maps min-max normalised
  to [0,1], merged by pixel-wise max over the image's targets, against the union of all
  objects; VOID pixels are left out. ``saliency_metric`` scores the merged mask with the
  classifier, over the image's distinct target classes.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saliencylab import metrics
from saliencylab.maps import merge_max, normalize_minmax
from saliencylab.metrics import ground_truth
from saliencylab.models.classifier import Classifier
from saliencylab.targets import PAD, from_multi_hot
from saliencylab.types import Batch

LOCALIZATION = ("pointing_game", "pointing_game_plain", "stochastic_pointing_game", "energy")
SEGMENTATION = ("mean_f1", "soft_f1", "soft_accuracy", "discrete_iou", "soft_iou", "pixel_auc", "overlap",
                "background_coverage", "object_coverage")
MODEL = ("saliency_metric",)
ALL_METRICS = LOCALIZATION + SEGMENTATION + MODEL
CLASS_MEAN = ("pointing_game",)
TOLERANCE_FRACTION = 0.04
"""Pointing tolerance as a fraction of the shorter image side: TorchRay's 15 px on VOC images,
whose shorter side is typically 375 px (15/375 = 0.04), so small images are not scored leniently."""
"""Metrics whose protocol averages per class first (TorchRay); the others average over pairs."""


def _pad(x: Tensor, width: int, value: float) -> Tensor:
    """Pad (N,K) to (N,width) on the right with ``value``."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


@dataclass
class Scores:
    """Per-pair scores of one method over a dataset.

    values[name]: (N,K) for localisation metrics (one per image and target), (N,1) for the
    per-image ones; targets (N,K) class indices (-1 padding); seconds spent explaining.
    """

    values: dict[str, list[Tensor]] = field(default_factory=dict)
    targets: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0

    def add(self, name: str, value: Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().cpu())

    def stacked(self) -> tuple[dict[str, Tensor], Tensor]:
        """Values and targets of all batches, padded to the largest K (NaN scores, -1 targets)."""
        width = max(t.shape[1] for t in self.targets)
        values = {k: torch.cat([_pad(x, width if k in LOCALIZATION else 1, torch.nan) for x in v])
                  for k, v in self.values.items()}
        return values, torch.cat([_pad(t, width, PAD) for t in self.targets])

    def summary(self, num_classes: int) -> dict[str, float]:
        """One number per metric of ALL_METRICS: class mean for CLASS_MEAN metrics, NaN-mean over pairs
        otherwise, NaN for metrics that were not scored."""
        values, targets = self.stacked()
        out: dict[str, float] = {}
        for name in ALL_METRICS:
            value = values.get(name)
            if value is None:
                out[name] = float("nan")
            elif name in CLASS_MEAN:
                out[name] = metrics.class_mean(value, targets, num_classes)[1]
            else:
                defined = value[~value.isnan()]
                out[name] = float(defined.mean()) if defined.numel() else float("nan")
        return out


def score_batch(classifier: Classifier, batch: Batch, maps: Tensor, targets: Tensor, scores: Scores,
                seed: int = 0, original_protocol: bool = False) -> None:
    """Add the scores of maps (B,K,H,W) for ``targets`` (B,K) on ``batch`` to ``scores``."""
    if batch.segmentation is None:
        raise ValueError("evaluation needs segmentation ground truth; use a split whose images all have one "
                         "(VOC: ImageSets/Segmentation)")
    targets = targets.to(maps.device)
    class_masks = ground_truth.class_masks_from_segmentation(batch.segmentation, targets)
    skip = ground_truth.all_difficult(batch.box_labels, batch.difficult, targets)
    tolerance = TOLERANCE_FRACTION * min(maps.shape[-2:])
    scores.add("pointing_game", metrics.pointing_game(maps, class_masks, tolerance=tolerance, skip=skip))
    scores.add("pointing_game_plain", metrics.pointing_game_plain(maps, class_masks))
    generator = torch.Generator(device=maps.device).manual_seed(seed + scores.images)
    scores.add("stochastic_pointing_game",
               metrics.stochastic_pointing_game(maps, class_masks, tolerance=tolerance, skip=skip,
                                                generator=generator))
    scores.add("energy", metrics.energy(maps, class_masks))
    merged = merge_max(normalize_minmax(maps))
    score_masks(classifier, batch, merged, targets, scores, original_protocol)


def score_masks(classifier: Classifier, batch: Batch, masks: Tensor, targets: Tensor, scores: Scores,
                original_protocol: bool = False) -> None:
    """Add the segmentation-suite and saliency scores of per-image masks (B,1,H,W) in [0,1].

    ``original_protocol=True`` reproduces the NN-Explainer code's quirks (spec 000 §6): VOID
    borders count as object instead of being left out, and the saliency metric sums the
    probability of each object instance's class (a class with two instances counts twice).
    """
    objects = ground_truth.foreground(batch.segmentation)
    void = ground_truth.void_mask(batch.segmentation)
    if original_protocol:
        objects, void = objects | void, None
        targets = torch.nn.utils.rnn.pad_sequence(list(batch.box_labels), batch_first=True, padding_value=PAD)
    for name in SEGMENTATION:
        scores.add(name, metrics.get(name).fn(masks, objects.float(), ignore=void))
    scores.add("saliency_metric", metrics.saliency_metric(classifier, batch.images, masks, targets).unsqueeze(1))


def evaluate(explain: Callable[[Batch, Tensor], Tensor], classifier: Classifier, batches: Iterable[Batch],
             device: torch.device | str = "cpu", per_image_masks: bool = False,
             original_protocol: bool = False) -> Scores:
    """Explain every batch for its ground-truth classes and score the maps.

    ``explain(batch, targets)`` returns maps (B,K,H,W) (e.g. ``method.attribute(batch.images,
    targets)``), or with ``per_image_masks=True`` one mask (B,1,H,W) in [0,1] per image (the
    reference rows of :data:`REFERENCES`), which gets only the segmentation suite.
    ``original_protocol``: see :func:`score_masks`.
    """
    scores = Scores()
    for batch in batches:
        batch = batch.to(device)
        targets = from_multi_hot(batch.labels)
        start = time.perf_counter()
        maps = explain(batch, targets)
        if maps.is_cuda:
            torch.cuda.synchronize()
        scores.seconds += time.perf_counter() - start
        if per_image_masks:
            score_masks(classifier, batch, maps, targets.to(maps.device), scores, original_protocol)
        else:
            score_batch(classifier, batch, maps, targets, scores, original_protocol=original_protocol)
        scores.targets.append(targets)
        scores.images += len(batch)
    return scores


REFERENCES: dict[str, Callable[[Batch], Tensor]] = {
    "0": lambda batch: torch.zeros_like(batch.images[:, :1]),
    "0.5": lambda batch: torch.full_like(batch.images[:, :1], 0.5),
    "1": lambda batch: torch.ones_like(batch.images[:, :1]),
    "ideal": lambda batch: ground_truth.foreground(batch.segmentation).float(),
}
"""The NN-Explainer table's reference masks (spec 000 §6): constants and the ground truth itself."""
