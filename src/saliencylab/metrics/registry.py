"""The metric registry: one call signature, declared needs and direction; the benchmark engine dispatches on them.

Every registered metric is a function ``fn(inputs: MetricInputs) -> Tensor`` returning one row of
scores per image: ``(B,K)`` aligned with the targets (``per="target"``), ``(B,1)`` (``per="image"``),
``(B,T)`` per-image statistics that only make sense over a whole dataset (``per="dataset"``,
e.g. PxAP's pixel histograms), reduced by the metric's ``reduce``, or ``(B,K,T)`` a curve per target
(``per="curve"``, e.g. MoRF), whose ``summary`` makes it one score per target. NaN means undefined.

Adding a metric = a tensor function (e.g. in ``metrics/functional.py``) + one ``@register`` here
(its direction, what it needs, how it aggregates) + its known-answer test.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from saliencylab.maps import merge_max, normalize_minmax
from saliencylab.metrics import functional as F
from saliencylab.metrics import faithfulness, ground_truth, wsol
from saliencylab.metrics.aggregate import class_mean
from saliencylab.models.classifier import Classifier, scoped_eval
from saliencylab.targets import PAD
from saliencylab.types import Batch

NEEDS = {
    "masks": "per-class ground-truth pixels: a segmentation, or boxes filled when the dataset has only boxes",
    "segmentation": "a pixel segmentation of every image",
    "boxes": "ground-truth boxes of every image",
    "single_label": "exactly one label per image (WSOL protocol)",
    "model": "the classifier",
}
"""What a metric may need besides the maps; the engine checks the dataset provides it before running."""
PER = ("target", "image", "dataset", "curve")
TOLERANCE_FRACTION = 0.04
"""Default pointing tolerance as a fraction of the shorter image side: TorchRay's 15 px on VOC
images, whose shorter side is typically 375 px (15/375 = 0.04), so small images are not scored leniently."""


@dataclass
class MetricInputs:
    """Everything a metric may read for one batch; derived quantities are computed once, on first use.

    maps (B,K,H,W) raw maps of each target (NaN for padded targets); targets (B,K) class indices,
    -1 padding; batch: the images in [0,1] and their annotations; classifier: the explained model.
    ``maps_are_masks``: the method's maps already are masks in [0,1] (used as they are, not min-max
    normalised). ``seed`` seeds stochastic metrics (the engine derives it from the position of the
    batch's first image, so results do not depend on sharding). ``options``: protocol switches
    (``tolerance`` px, ``boxes_inclusive``, ``one_pixel_smaller``, ``unclipped_area``, ``original_protocol``;
    for reference rows ``reference`` and ``reference_box``; the faithfulness metrics' ``perturbation``
    (default "blur"), ``patch`` px (16), ``steps`` (100), ``causal_steps`` (224), ``signed`` (false: patches
    and pixels are ordered by |map|) and ``faithfulness_batch`` (64 images per classifier pass)).
    """

    maps: Tensor
    targets: Tensor
    batch: Batch
    classifier: Classifier | None = None
    maps_are_masks: bool = False
    seed: int = 0
    options: dict[str, object] = field(default_factory=dict)

    @cached_property
    def size(self) -> tuple[int, int]:
        return tuple(self.maps.shape[-2:])

    @cached_property
    def class_masks(self) -> Tensor:
        """(B,K,H,W) bool pixels of each target's class: from the segmentation, else the filled boxes."""
        return ground_truth.class_masks(self.batch, self.targets)

    @cached_property
    def skip(self) -> Tensor:
        """(B,K) bool: target classes whose boxes are all difficult (TorchRay's pointing game skips them)."""
        return ground_truth.all_difficult(self.batch.box_labels, self.batch.difficult, self.targets)

    @cached_property
    def tolerance(self) -> float:
        """Pointing tolerance in pixels: ``options["tolerance"]``, else TOLERANCE_FRACTION of the shorter side."""
        return float(self.options.get("tolerance") or TOLERANCE_FRACTION * min(self.size))

    @cached_property
    def mask(self) -> Tensor:
        """(B,1,H,W) in [0,1]: each target's map min-max normalised (masks as they are), merged by max."""
        return merge_max(self.maps if self.maps_are_masks else normalize_minmax(self.maps))

    @cached_property
    def original_protocol(self) -> bool:
        """``options["original_protocol"]``: the NN-Explainer code's quirks (VOID borders count as object, the
        saliency metric sums the probability of every object instance's class, duplicates included)."""
        return bool(self.options.get("original_protocol", False))

    @cached_property
    def objects(self) -> Tensor:
        """(B,1,H,W) float: pixels of any object (segmentation); VOID too under the original protocol."""
        objects = ground_truth.foreground(self.batch.segmentation)
        return (objects | ground_truth.void_mask(self.batch.segmentation) if self.original_protocol else objects).float()

    @cached_property
    def void(self) -> Tensor | None:
        """(B,1,H,W) bool: VOID pixels, left out of the segmentation suite (None under the original protocol)."""
        return None if self.original_protocol else ground_truth.void_mask(self.batch.segmentation)

    @cached_property
    def mask_classes(self) -> Tensor:
        """(B,K') classes whose probability the saliency metric sums: the targets, or one entry per object
        instance under the original protocol (-1 padded)."""
        if not self.original_protocol:
            return self.targets
        return torch.nn.utils.rnn.pad_sequence(list(self.batch.box_labels), batch_first=True, padding_value=PAD)

    @cached_property
    def label(self) -> Tensor:
        """(B,) the one class of each image; ValueError naming the image unless single-label."""
        for image_id, row in zip(self.batch.image_ids, self.targets):
            classes = row[row != PAD].tolist()
            if len(classes) != 1:
                raise ValueError(f"WSOL metrics are single-label: image {image_id!r} has {len(classes)} targets "
                                 f"{classes}; use a single-label dataset such as ImageNet-format metadata")
        return self.targets[:, 0]

    @cached_property
    def correct(self) -> Tensor:
        """(B,) bool: the classifier's top-1 on the clean image is the label."""
        with torch.no_grad(), scoped_eval(self.classifier):
            return self.classifier(self.batch.images).argmax(1) == self.label.to(self.batch.images.device)

    @cached_property
    def counted_correct(self) -> Tensor:
        """(B,) bool: :attr:`correct`, or every image for a reference row (``options["reference"]``): the
        original scores WSOL's special rows (center, max, min, ground truth) as if classified correctly, so OM = LE."""
        if self.options.get("reference"):
            return torch.ones(len(self.batch), dtype=torch.bool, device=self.batch.images.device)
        return self.correct

    @cached_property
    def wsol_mask(self) -> Tensor:
        """(B,H,W) in [0,1]: the label's map (min-max normalised unless it already is a mask)."""
        _ = self.label
        return self.mask[:, 0]

    @cached_property
    def gt_boxes(self) -> list[Tensor]:
        """Half-open ground-truth boxes per image (``options["boxes_inclusive"]``, default True, converts)."""
        for image_id, boxes in zip(self.batch.image_ids, self.batch.boxes):
            if not len(boxes):
                raise ValueError(f"WSOL metrics need ground-truth boxes, but image {image_id!r} has none")
        if self.options.get("boxes_inclusive", True):
            return [wsol.inclusive_to_half_open(b) for b in self.batch.boxes]
        return list(self.batch.boxes)

    @cached_property
    def predicted_boxes(self) -> Tensor:
        """(B,4) half-open box of each mask's largest component, binarised at its mean; for a WSOL special
        row (``options["reference_box"]``) the box the original scores for it: max, min or center, or for
        ground_truth the image's largest ground-truth box clipped to the image (the original scores each one in turn)."""
        box = self.options.get("reference_box")
        if box == "ground_truth":
            height, width = self.size
            largest = torch.stack([b[wsol.box_area(b).argmax()] for b in self.gt_boxes]).float()
            return torch.minimum(largest.clamp(min=0), largest.new_tensor([width, height, width, height]))
        if box:
            return wsol.baseline(box, len(self.batch), self.size, self.maps.device)[1]
        return wsol.predicted_boxes(self.wsol_mask, bool(self.options.get("one_pixel_smaller", False)))

    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax (N,C) of the classifier on images (N,3,H,W) in [0,1], in eval mode (faithfulness metrics)."""
        with scoped_eval(self.classifier):
            return self.classifier(images).softmax(1)

    @cached_property
    def faithfulness(self) -> dict[str, object]:
        """Keyword arguments of the faithfulness curves from ``options`` (see the class docstring)."""
        return {"absolute": not _flag(self.options.get("signed", False)),
                "max_batch": int(self.options.get("faithfulness_batch", 64))}

    @cached_property
    def unclipped_area(self) -> bool:
        return bool(self.options.get("unclipped_area", False))

    @cached_property
    def box_saliency(self) -> dict[str, Tensor]:
        """WSOL's saliency metric of the predicted boxes: ``metrics.wsol.saliency_metric_wsol``'s (B,) results."""
        with scoped_eval(self.classifier):
            return wsol.saliency_metric_wsol(self.classifier, self.batch.images, self.predicted_boxes, self.label)


def _flag(value: object) -> bool:
    """An option's truth value: True, "true", "1", "yes" (as ``--option KEY=VALUE`` passes it)."""
    return value is True or str(value).lower() in ("true", "1", "yes")


Reduce = Callable[[Tensor, Tensor], float]
"""reduce(scores (N,W), targets (N,K)) -> one number for a dataset."""


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function and what the engine must know about it.

    fn(inputs) -> (B,K) / (B,1) / (B,T) scores (see ``per``); higher_is_better (None for a descriptive
    statistic with no better direction, such as the mean mask value); needs: keys of
    :data:`NEEDS`; per: "target", "image", "dataset" or "curve"; reduce: scores of a dataset -> one number
    (default: NaN-mean; ``class_mean`` for the TorchRay pointing protocol); description: one line;
    summary (curve metrics): curves (...,T) -> one score each (...), e.g. AOPC; by_default: scored when no metric
    is named (False for the faithfulness curves: hundreds of classifier passes per image).
    """

    name: str
    fn: Callable[[MetricInputs], Tensor]
    higher_is_better: bool | None
    needs: frozenset[str]
    per: str
    reduce: Reduce
    description: str
    summary: Callable[[Tensor], Tensor] | None = None
    by_default: bool = True

    @property
    def aggregation(self) -> str:
        return getattr(self.reduce, "__name__", "custom").removeprefix("reduce_")


def reduce_mean(scores: Tensor, _targets: Tensor) -> float:
    """NaN-mean over every defined score."""
    defined = scores[~scores.isnan()]
    return float(defined.double().mean()) if defined.numel() else math.nan


def reduce_class_mean(scores: Tensor, targets: Tensor) -> float:
    """Mean of per-class means (TorchRay's pointing protocol)."""
    valid = targets[targets != PAD]
    num_classes = int(valid.max()) + 1 if valid.numel() else 1
    return class_mean(scores, targets, num_classes)[1]


_REGISTRY: dict[str, Metric] = {}


def register(name: str, *, higher_is_better: bool | None, needs: set[str] | frozenset[str] = frozenset(),
             per: str = "target", reduce: Reduce = reduce_mean, description: str,
             summary: Callable[[Tensor], Tensor] | None = None, by_default: bool = True) -> Callable[[Callable[[MetricInputs], Tensor]], Callable[[MetricInputs], Tensor]]:
    """Decorator adding ``fn(inputs) -> scores`` to the registry under ``name``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"metric {name!r} needs unknown input(s) {sorted(unknown)}; known: {sorted(NEEDS)}")
    if per not in PER:
        raise ValueError(f"metric {name!r}: per must be one of {PER}, got {per!r}")
    if (per == "curve") != (summary is not None):
        raise ValueError(f"metric {name!r}: a summary is given exactly for per='curve' metrics")

    def add(fn: Callable[[MetricInputs], Tensor]) -> Callable[[MetricInputs], Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is already registered")
        _REGISTRY[name] = Metric(name, fn, higher_is_better, frozenset(needs), per, reduce, description, summary,
                                 by_default)
        return fn
    return add


def names() -> list[str]:
    """Every registered metric name, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Metric:
    """The metric called ``name``; KeyError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(_REGISTRY)}") from None


# ---------------------------------------------------------------- localisation (raw maps of each target)

@register("pointing_game", higher_is_better=True, needs={"masks"}, reduce=reduce_class_mean,
          description="TorchRay pointing game: arg-max within the tolerance of the class's pixels; per-class mean")
def _pointing_game(inputs: MetricInputs) -> Tensor:
    return F.pointing_game(inputs.maps, inputs.class_masks, tolerance=inputs.tolerance, skip=inputs.skip)


@register("pointing_game_plain", higher_is_better=True, needs={"masks"},
          description="Quantus pointing game: a maximum of the map lies on the class's pixels, no tolerance")
def _pointing_game_plain(inputs: MetricInputs) -> Tensor:
    return F.pointing_game_plain(inputs.maps, inputs.class_masks)


@register("stochastic_pointing_game", higher_is_better=True, needs={"masks"},
          description="fraction of 100 pixels drawn from the map within the tolerance of the class's pixels")
def _stochastic_pointing_game(inputs: MetricInputs) -> Tensor:
    return F.stochastic_pointing_game(inputs.maps, inputs.class_masks, tolerance=inputs.tolerance, skip=inputs.skip,
                                      seed=inputs.seed)


@register("energy", higher_is_better=True, needs={"masks"},
          description="energy pointing game / content heatmap: share of the positive map mass on the class's pixels")
def _energy(inputs: MetricInputs) -> Tensor:
    return F.energy(inputs.maps, inputs.class_masks)


# ---------------------------------------------------------------- NN-Explainer segmentation suite (merged mask)

def _segmentation_metric(name: str, fn: Callable[..., Tensor], higher_is_better: bool, description: str) -> None:
    """Register a suite metric: the merged mask (B,1,H,W) against the union of all objects, VOID left out."""
    register(name, higher_is_better=higher_is_better, needs={"segmentation"}, per="image",
             description=description)(lambda inputs: fn(inputs.mask, inputs.objects, ignore=inputs.void))


for _name, _fn, _higher, _description in [
    ("mean_f1", F.mean_f1, True, "discrete F1 of merged mask and objects, mean over thresholds 0.25/0.5/0.75"),
    ("soft_f1", F.soft_f1, True, "F1 with soft counts of merged mask and objects"),
    ("soft_accuracy", F.soft_accuracy, True, "mean(m·s + (1−m)(1−s))"),
    ("discrete_iou", F.discrete_iou, True, "IoU of mask and objects binarised, mean over thresholds 0.1…0.9"),
    ("soft_iou", F.soft_iou, True, "Σmin(m,s) / Σmax(m,s)"),
    ("pixel_auc", F.pixel_auc, True, "ROC AUC of mask values as a pixel classifier of the objects"),
    ("overlap", F.overlap, True, "1 − mean|s − m|"),
    ("background_coverage", F.background_coverage, False, "mask mass outside the objects relative to the background area"),
    ("object_coverage", F.object_coverage, True, "share of the objects covered by the mask"),
]:
    _segmentation_metric(_name, _fn, _higher, _description)


@register("saliency_metric", higher_is_better=False, needs={"model"}, per="image",
          description="log(max(area, 0.05)) − log Σ softmax of the target classes on the masked image")
def _saliency_metric(inputs: MetricInputs) -> Tensor:
    with scoped_eval(inputs.classifier):
        return F.saliency_metric(inputs.classifier, inputs.batch.images, inputs.mask, inputs.mask_classes).unsqueeze(1)


# ---------------------------------------------------------------- WSOL (one mask per single-label image, boxes)

@register("localization_error", higher_is_better=False, needs={"boxes", "single_label"}, per="image",
          description="WSOL LE: the mask's box has IoU <= 0.5 with every ground-truth box")
def _localization_error(inputs: MetricInputs) -> Tensor:
    return wsol.localization_error(inputs.predicted_boxes, inputs.gt_boxes, inputs.size,
                                   inputs.unclipped_area).unsqueeze(1)


@register("official_localization_error", higher_is_better=False, needs={"boxes", "single_label", "model"},
          per="image", description="WSOL OM: LE, or the classifier's top-1 is wrong")
def _official_localization_error(inputs: MetricInputs) -> Tensor:
    return wsol.official_localization_error(inputs.predicted_boxes, inputs.gt_boxes, inputs.counted_correct,
                                            inputs.size, inputs.unclipped_area).unsqueeze(1)


@register("box_f1", higher_is_better=True, needs={"boxes", "single_label"}, per="image",
          description="WSOL F1: soft F1 of the mask against the ground-truth boxes' union")
def _box_f1(inputs: MetricInputs) -> Tensor:
    return wsol.soft_f1(inputs.wsol_mask, inputs.gt_boxes, inputs.unclipped_area).unsqueeze(1)


@register("box_f1_average", higher_is_better=True, needs={"boxes", "single_label"}, per="image",
          description="WSOL F1a: soft F1 of the mask against each ground-truth box, averaged")
def _box_f1_average(inputs: MetricInputs) -> Tensor:
    return wsol.soft_f1_average(inputs.wsol_mask, inputs.gt_boxes, inputs.unclipped_area).unsqueeze(1)


@register("saliency_metric_wsol", higher_is_better=False, needs={"boxes", "single_label", "model"}, per="image",
          description="WSOL SM: log area of the mask's box − log p(label) on the box crop resized to the image")
def _saliency_metric_wsol(inputs: MetricInputs) -> Tensor:
    return inputs.box_saliency["sm"].unsqueeze(1)


@register("box_crop_accuracy", higher_is_better=True, needs={"boxes", "single_label", "model"}, per="image",
          description="WSOL sm_acc: the classifier's top-1 on the mask's box crop is the label")
def _box_crop_accuracy(inputs: MetricInputs) -> Tensor:
    return inputs.box_saliency["sm_correct"].float().unsqueeze(1)


@register("classifier_top1", higher_is_better=True, needs={"single_label", "model"}, per="image",
          description="the classifier's top-1 on the clean image is the label (WSOL top1; the same for every row)")
def _classifier_top1(inputs: MetricInputs) -> Tensor:
    return inputs.correct.float().unsqueeze(1)


def reduce_f1_per_class(scores: Tensor, _targets: Tensor) -> float:
    """CF1: per-class F1 averaged over classes, from per-image counts [tp | fp | fn] (each C wide)."""
    return float(F.multilabel_f1(*scores.nan_to_num(nan=0.0).sum(0).chunk(3))[0])


def reduce_f1_overall(scores: Tensor, _targets: Tensor) -> float:
    """OF1: F1 of the counts pooled over classes, from per-image counts [tp | fp | fn] (each C wide)."""
    return float(F.multilabel_f1(*scores.nan_to_num(nan=0.0).sum(0).chunk(3))[1])


def _label_counts(inputs: MetricInputs) -> Tensor:
    """(B,3C) per image: true positives, false positives, false negatives per class at logit > 0."""
    with torch.no_grad(), scoped_eval(inputs.classifier):
        return F.label_counts(inputs.classifier(inputs.batch.images), inputs.batch.labels).flatten(1)


for _name, _reduce, _description in [
    ("classifier_f1_per_class", reduce_f1_per_class, "the classifier's per-class F1 at logit > 0, averaged over classes "
                                                      "(CF1, the COCO score of Pillai & Pirsiavash 2021; the same for every row)"),
    ("classifier_f1_overall", reduce_f1_overall, "the classifier's overall F1 at logit > 0 of the counts pooled over "
                                                  "classes (OF1; the same for every row)"),
]:
    register(_name, higher_is_better=True, needs={"model"}, per="dataset", reduce=_reduce,
             description=_description)(_label_counts)


def reduce_pxap(scores: Tensor, _targets: Tensor) -> float:
    """PxAP in percent from per-image pixel histograms (positives then negatives per threshold bin)."""
    histograms = scores.nan_to_num(nan=0.0).sum(0).round().long()
    return wsol.PxAP.from_histograms(*histograms.chunk(2)).compute()


@register("pxap", higher_is_better=True, needs={"segmentation"}, per="dataset", reduce=reduce_pxap,
          description="PxAP (Choe et al. 2020): pixel average precision of the mask over the dataset, in percent")
def _pxap(inputs: MetricInputs) -> Tensor:
    gt, void = inputs.objects[:, 0] > 0, ground_truth.void_mask(inputs.batch.segmentation)[:, 0]
    return torch.stack([wsol.pxap_histograms(inputs.mask[i, :1], gt[i:i + 1], void[i:i + 1]) for i in range(len(inputs.maps))])


def _mask_statistic(name: str, fn: Callable[[Tensor], Tensor], description: str) -> None:
    """Register a WSOL mask statistic (no better direction): ``fn(masks (B,H,W)) -> (B,)``."""
    register(name, higher_is_better=None, needs={"single_label"}, per="image",
             description=description)(lambda inputs: fn(inputs.wsol_mask).unsqueeze(1))


for _name, _fn, _description in [
    ("binarized_fraction", wsol.binarized_fraction, "WSOL: share of pixels above the mask's mean"),
    ("mask_mean", wsol.avg_mask, "WSOL avg_mask: the mean mask value"),
    ("mask_entropy", wsol.mask_entropy, "WSOL entropy column: mean per-pixel −m·log2(m)"),
    ("mask_tv", wsol.mask_tv, "WSOL: mean squared neighbour differences of the mask"),
]:
    _mask_statistic(_name, _fn, _description)


def reduce_max_box_acc(scores: Tensor, _targets: Tensor) -> float:
    """MaxBoxAcc in percent: the best threshold's share of images whose box has IoU >= 0.5."""
    return float(wsol.box_accuracy(scores, 0.5).max())


def reduce_max_box_acc_v2(scores: Tensor, _targets: Tensor) -> float:
    """MaxBoxAccV2 in percent: MaxBoxAcc at IoU 0.3, 0.5 and 0.7 (each its own best threshold), averaged."""
    return sum(float(wsol.box_accuracy(scores, delta).max()) for delta in wsol.IOU_THRESHOLDS_V2) / 3


@register("max_box_acc", higher_is_better=True, needs={"boxes", "single_label"}, per="dataset",
          reduce=reduce_max_box_acc,
          description="MaxBoxAcc (Choe et al. 2020): best box accuracy at IoU 0.5 over mask thresholds, largest component")
def _max_box_acc(inputs: MetricInputs) -> Tensor:
    return wsol.box_iou_curve(inputs.wsol_mask, inputs.gt_boxes, unclipped_area=inputs.unclipped_area)


@register("max_box_acc_v2", higher_is_better=True, needs={"boxes", "single_label"}, per="dataset",
          reduce=reduce_max_box_acc_v2,
          description="MaxBoxAccV2 (Choe et al. 2020): MaxBoxAcc at IoU 0.3/0.5/0.7 averaged, every component a candidate")
def _max_box_acc_v2(inputs: MetricInputs) -> Tensor:
    return wsol.box_iou_curve(inputs.wsol_mask, inputs.gt_boxes, multi_contour=True,
                              unclipped_area=inputs.unclipped_area)


# ---------------------------------------------------------------- faithfulness (perturbation curves; the classifier)

def _patch_curves(inputs: MetricInputs, most_relevant_first: bool) -> Tensor:
    """MoRF or LeRF curves (B,K,L+1) of the batch under ``options`` (patch, steps, perturbation)."""
    return faithfulness.morf_curves(inputs.probabilities, inputs.batch.images, inputs.maps, inputs.targets,
                                    patch=int(inputs.options.get("patch", 16)), steps=int(inputs.options.get("steps", 100)),
                                    perturbation=str(inputs.options.get("perturbation", "blur")), seed=inputs.seed,
                                    most_relevant_first=most_relevant_first, **inputs.faithfulness)


register("aopc_morf", higher_is_better=True, needs={"model"}, per="curve", summary=faithfulness.aopc, by_default=False,
         description="AOPC of the MoRF curve (Samek et al. 2017): patches of the map's highest mean perturbed first"
         )(lambda inputs: _patch_curves(inputs, True))
register("aopc_lerf", higher_is_better=False, needs={"model"}, per="curve", summary=faithfulness.aopc, by_default=False,
         description="AOPC of the LeRF curve: patches of the map's lowest mean perturbed first"
         )(lambda inputs: _patch_curves(inputs, False))


def _causal_metric(mode: str, higher_is_better: bool, description: str) -> None:
    """Register Petsiuk et al.'s deletion or insertion AUC."""
    register(f"{mode}_auc", higher_is_better=higher_is_better, needs={"model"}, per="curve",
             summary=faithfulness.area_under_curve, by_default=False, description=description)(
        lambda inputs: faithfulness.causal_curves(inputs.probabilities, inputs.batch.images, inputs.maps,
                                                  inputs.targets, mode=mode,
                                                  steps=int(inputs.options.get("causal_steps", 224)),
                                                  **inputs.faithfulness))


_causal_metric("deletion", False, "deletion AUC (Petsiuk et al. 2018): most relevant pixels turned black first")
_causal_metric("insertion", True, "insertion AUC (Petsiuk et al. 2018): most relevant pixels put back into a blurred image first")


@register("pompom", higher_is_better=False, needs={"masks"},
          description="POMPOM (Rio-Torto et al. 2020): share of pixels outside the class's mask with a map value > 1e-6")
def _pompom(inputs: MetricInputs) -> Tensor:
    maps = inputs.maps
    if not inputs.maps_are_masks:  # raw maps: |map| relative to its peak, so ε does not depend on the map's scale
        peak = maps.abs().flatten(2).amax(-1)[..., None, None]
        maps = torch.where(peak > 0, maps.abs() / peak, maps * 0)  # NaN maps stay NaN
    return faithfulness.pompom(maps, inputs.class_masks)
