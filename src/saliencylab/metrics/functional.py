"""Metrics as pure tensor functions.

Common inputs:
  maps   (B,K,H,W) float, one explanation per (image, target); maps of padded targets are NaN.
  gt     (B,K,H,W) bool or float in [0,1], the ground truth of each (image, target).
  ignore (B,K,H,W) or (B,1,H,W) bool, pixels left out of every sum (e.g. VOID), optional.
Every metric returns one score per (image, target): (B,K) float32 on the maps' device.
NaN means undefined (padded target or NaN map, empty ground truth, skipped pair); a metric
never turns an undefined case into 0 or 1. Aggregate with :mod:`saliencylab.metrics.aggregate`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliencylab.models.classifier import check_images
from saliencylab.targets import PAD, as_targets

EPS_F1 = 1e-10
"""Stabiliser of the NN-Explainer F1 formulas (Stalder et al. 2022)."""
EPS_IOU = 1e-15
"""Stabiliser of the NN-Explainer IoU formulas (Stalder et al. 2022)."""
F1_THRESHOLDS = (0.25, 0.5, 0.75)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SALIENCY_MIN_AREA = 0.05
"""Area floor of the saliency metric (Dabkowski & Gal 2017)."""


# ---------------------------------------------------------------- validation and shared helpers

def _check_maps(maps: Tensor, unit: bool = False) -> None:
    if not isinstance(maps, Tensor) or not maps.dtype.is_floating_point:
        raise TypeError(f"maps must be a float tensor (B,K,H,W), got "
                        f"{maps.dtype if isinstance(maps, Tensor) else type(maps).__name__}")
    if maps.dim() != 4:
        raise ValueError(f"maps must have shape (B,K,H,W), got {tuple(maps.shape)}; "
                         "for one map per image add the target axis with maps[:, None]")
    if unit and maps.numel():
        low, high = (float(v) for v in maps.nan_to_num(nan=0.0).aminmax())  # one pass; NaN (undefined) is no error
        if low < 0.0 or high > 1.0:
            finite = maps[~maps.isnan()]
            raise ValueError(
                f"this metric needs masks in [0,1], got values in [{float(finite.min()):.4g}, "
                f"{float(finite.max()):.4g}]; rescale raw maps first, e.g. saliencylab.maps.normalize_minmax")


def _check_gt(maps: Tensor, gt: Tensor) -> Tensor:
    """Validate gt against maps; return it as float32 on the maps' device."""
    if gt.shape != maps.shape:
        raise ValueError(f"gt must have the shape of maps {tuple(maps.shape)}, got {tuple(gt.shape)}")
    gt = gt.to(maps.device, torch.float32)
    if gt.numel() and not (0.0 <= float(gt.min()) and float(gt.max()) <= 1.0):  # NaN fails both comparisons
        raise ValueError(f"gt must be bool or hold values in [0,1], got values in [{float(gt.min()):.4g}, "
                         f"{float(gt.max()):.4g}]; build it with saliencylab.metrics.ground_truth "
                         "(class_masks_from_segmentation, class_masks_from_boxes)")
    return gt


def _check_bool(maps: Tensor, mask: Tensor | None, name: str, shapes: list[tuple[int, ...]]) -> Tensor | None:
    """Validate an optional bool tensor (ignore / skip) of one of ``shapes``; move it to the maps' device."""
    if mask is None:
        return None
    if tuple(mask.shape) not in shapes or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape {' or '.join(map(str, shapes))} "
                         f"for maps {tuple(maps.shape)}, got {tuple(mask.shape)} {mask.dtype}")
    return mask.to(maps.device)


def _check_ignore(maps: Tensor, ignore: Tensor | None) -> Tensor | None:
    return _check_bool(maps, ignore, "ignore", [tuple(maps.shape), (maps.shape[0], 1, *maps.shape[2:])])


def _sum(x: Tensor) -> Tensor:
    """Sum over pixels: (B,K,H,W) -> (B,K)."""
    return x.flatten(2).sum(-1)


def _nan_maps(maps: Tensor) -> Tensor:
    """(B,K) bool: the map holds a NaN (padded target or failed explanation)."""
    return maps.isnan().flatten(2).any(-1)


def _undefined(score: Tensor, undefined: Tensor) -> Tensor:
    return score.float().masked_fill(undefined, math.nan)


# ---------------------------------------------------------------- pointing games

def _disk(tolerance: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Integer offsets (dy, dx), each (O,), strictly closer than ``tolerance`` (Euclidean) to the origin."""
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0 pixels, got {tolerance}")
    r = math.ceil(tolerance) - 1  # largest integer offset strictly below the tolerance
    steps = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    inside = dy * dy + dx * dx < tolerance * tolerance
    return dy[inside], dx[inside]


def _hits(gt: Tensor, points: Tensor, tolerance: float) -> Tensor:
    """gt (B,K,H,W) bool, points (B,K,S) flat pixel indices -> (B,K,S) bool: a gt pixel lies within the tolerance.

    Reads only the disk of radius < ``tolerance`` around each point (O(S·tolerance²) per pair), never the whole gt.
    """
    height, width = gt.shape[-2:]
    dy, dx = _disk(tolerance, gt.device)
    y = (points // width).unsqueeze(-1) + dy  # (B,K,S,O)
    x = (points % width).unsqueeze(-1) + dx
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    flat = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).flatten(2)
    return (gt.flatten(2).gather(-1, flat).view_as(inside) & inside).any(-1)


def _check_pointing(maps: Tensor, gt: Tensor, skip: Tensor | None, peak: bool = True) -> tuple[Tensor, Tensor]:
    """Validate pointing-game inputs; return gt as bool and the (B,K) undefined pairs: NaN maps, constant maps
    when the game points at the ``peak`` (an all-zero map has no maximum to point with), empty gt, skipped pairs."""
    _check_maps(maps)
    gt = _check_gt(maps, gt) > 0
    skip = _check_bool(maps, skip, "skip", [tuple(maps.shape[:2])])
    flat = maps.flatten(2)
    constant = (flat.amax(-1) == flat.amin(-1)) & peak
    undefined = _nan_maps(maps) | constant | ~gt.flatten(2).any(-1)
    return gt, undefined if skip is None else undefined | skip


def pointing_game(maps: Tensor, gt: Tensor, tolerance: float = 15.0, skip: Tensor | None = None) -> Tensor:
    """TorchRay's pointing game: 1.0 if the map's maximum lies within ``tolerance`` px of the gt, else 0.0.

    The point is the arg-max of the map (ties: the first pixel in row-major order, as
    ``np.argmax``); a hit is any gt pixel (gt > 0) at Euclidean distance strictly below
    ``tolerance`` from it (TorchRay default 15 px, in the pixels of the map, so evaluate maps at
    the original image size to match the protocol).
    Returns (B,K) in {0,1}; NaN where the map is NaN or constant (no maximum to point with; an all-zero
    map would otherwise score a hit at pixel 0 or on every gt), the gt is empty or ``skip`` (B,K) is True
    (TorchRay skips classes whose boxes are all difficult: :func:`ground_truth.all_difficult`).
    Source: TorchRay ``benchmark.pointing_game`` as Pillai & Pirsiavash (AAAI 2021) evaluate.
    The protocol's score is the mean of per-class accuracies: :func:`aggregate.class_mean`.
    """
    gt, undefined = _check_pointing(maps, gt, skip)
    points = maps.flatten(2).argmax(-1, keepdim=True)  # a NaN map points anywhere: its score is NaN
    return _undefined(_hits(gt, points, tolerance).squeeze(-1), undefined)


def pointing_game_plain(maps: Tensor, gt: Tensor) -> Tensor:
    """Quantus's pointing game: 1.0 if a maximum of the map lies on a gt pixel, else 0.0.

    No tolerance. As in Quantus, when several pixels tie for the maximum it is a hit if any of
    them is in the gt. Returns (B,K) in {0,1}; NaN where the map is NaN or constant, or the gt is empty.
    Source: Quantus ``PointingGame`` (non-weighted).
    """
    gt, undefined = _check_pointing(maps, gt, None)
    peaks = maps == maps.flatten(2).amax(-1)[..., None, None]
    return _undefined((peaks & gt).flatten(2).any(-1), undefined)


def stochastic_pointing_game(maps: Tensor, gt: Tensor, tolerance: float = 15.0, num_samples: int = 100,
                             generator: torch.Generator | None = None, seed: int = 0,
                             skip: Tensor | None = None) -> Tensor:
    """Stochastic pointing game: the fraction of points drawn from the map that hit the gt.

    The map clamped at 0 is a distribution over pixels; ``num_samples`` pixels are drawn with
    replacement (``torch.multinomial``) and each is scored by the :func:`pointing_game` rule
    (gt pixel within distance < ``tolerance``). Returns (B,K) in [0,1] (the paper reports ×100);
    NaN where the map is NaN, its positive part sums to 0, the gt is empty or ``skip`` is True.
    Draws come from ``generator`` (on the maps' device) or a fresh one seeded with ``seed``, so
    a call is reproducible; the draws of one pair depend on its position in the batch.
    Source: Pillai & Pirsiavash, 'Explainable Models with Consistent Interpretations' (AAAI 2021), where the draws were unseeded.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gt, undefined = _check_pointing(maps, gt, skip, peak=False)
    weights = maps.flatten(2).float().clamp(min=0).nan_to_num(nan=0.0)  # (B,K,HW)
    undefined = undefined | (weights.sum(-1) <= 0)
    weights = weights.masked_fill(undefined[..., None], 1.0)  # placeholder rows keep multinomial valid
    if generator is None:
        generator = torch.Generator(device=maps.device).manual_seed(seed)
    points = torch.multinomial(weights.flatten(0, 1), num_samples, replacement=True, generator=generator)
    hits = _hits(gt, points.view(*maps.shape[:2], num_samples), tolerance)
    return _undefined(hits.float().mean(-1), undefined)


def energy(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Energy pointing game / content heatmap: share of the positive map mass inside the gt.

    Σ(map⁺·gt) / Σ map⁺ over non-ignored pixels, with map⁺ = max(map, 0); soft gt weights the
    mass. Returns (B,K) in [0,1] (Pillai & Pirsiavash 2021 report ×100); NaN where the map is NaN, the gt is
    empty or map⁺ sums to 0. Source: Score-CAM's energy-based pointing game, Pillai & Pirsiavash 2021's
    Content Heatmap; Quantus ``AttributionLocalisation`` / ``RelevanceMassAccuracy``.
    """
    _check_maps(maps)
    gt = _check_gt(maps, gt)
    ignore = _check_ignore(maps, ignore)
    positive = maps.float().clamp(min=0).nan_to_num(nan=0.0)
    if ignore is not None:
        positive = positive.masked_fill(ignore, 0.0)
    total = _sum(positive)
    undefined = _nan_maps(maps) | (_sum(gt) == 0) | (total <= 0)
    return _undefined(_sum(positive * gt) / total, undefined)


def label_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,3,C) float: per image and class, whether it is a true positive, a false positive, a false negative of
    the prediction logit > 0; logits (B,C), multi-hot labels (B,C)."""
    predicted, truth = logits > 0, labels.to(logits.device) > 0.5
    return torch.stack([predicted & truth, predicted & ~truth, ~predicted & truth], 1).float()


def multilabel_f1(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class F1 averaged over classes (CF1) and overall F1 of pooled counts (OF1), from per-class counts (C,)
    of true positives, false positives and false negatives (the COCO classifier scores of Pillai & Pirsiavash
    2021). A class without any positive or prediction has F1 0 (its denominator is clamped to 1)."""
    per_class = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    overall = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
    return per_class.mean(), overall


# ---------------------------------------------------------------- NN-Explainer segmentation suite

def _prepare(maps: Tensor, gt: Tensor, ignore: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate masks and gt in [0,1]; return m (NaN -> 0), s, pixel weights w (0 = ignored) and undefined (B,K)."""
    _check_maps(maps, unit=True)
    s = _check_gt(maps, gt)
    ignore = _check_ignore(maps, ignore)
    w = torch.ones_like(s) if ignore is None else (~ignore).float().expand_as(s)
    undefined = _nan_maps(maps) | (_sum(w) == 0)
    return maps.float().nan_to_num(nan=0.0), s, w, undefined


def _binarize(x: Tensor, threshold: float) -> Tensor:
    return (x > threshold).float()


def _mean(x: Tensor, w: Tensor) -> Tensor:
    """Mean over non-ignored pixels: (B,K)."""
    return _sum(x * w) / _sum(w)


def _f1(m: Tensor, s: Tensor, w: Tensor) -> Tensor:
    tp = _sum(w * m * s)
    fp = _sum(w * m * (1 - s))
    fn = _sum(w * (1 - m) * s)
    precision = tp / (tp + fp + EPS_F1)
    recall = tp / (tp + fn + EPS_F1)
    f1 = 2 * precision * recall / (precision + recall + EPS_F1)
    return f1.masked_fill(_sum(w * s) == 0, math.nan)


def _iou(m: Tensor, s: Tensor, w: Tensor) -> Tensor:
    iou = _sum(w * torch.minimum(m, s)) / (_sum(w * torch.maximum(m, s)) + EPS_IOU)
    return iou.masked_fill(_sum(w * s) == 0, math.nan)


def discrete_f1(maps: Tensor, gt: Tensor, threshold: float = 0.5, ignore: Tensor | None = None) -> Tensor:
    """F1 of the positives after binarising **both** mask and gt at ``threshold`` (m > t, s > t).

    P = tp/(tp+fp+1e-10), R = tp/(tp+fn+1e-10), F1 = 2PR/(P+R+1e-10), counts over non-ignored
    pixels. Returns (B,K) in [0,1]. NaN where the map is NaN or the binarised gt is empty
    (deviation: the original's eps gives 0 there). Source: ``discrete_f1`` in the NN-Explainer authors' released code (Stalder et al. 2022).
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    return _undefined(_f1(_binarize(m, threshold), _binarize(s, threshold), w), undefined)


def mean_f1(maps: Tensor, gt: Tensor, thresholds: Sequence[float] = F1_THRESHOLDS,
            ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's "Mean F1": :func:`discrete_f1` averaged over ``thresholds`` (0.25, 0.5, 0.75).

    Returns (B,K) in [0,1]; thresholds where the binarised gt is empty are left out of the
    mean (a soft gt may vanish at high thresholds), NaN when none is defined.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    scores = torch.stack([_f1(_binarize(m, t), _binarize(s, t), w) for t in thresholds])
    return _undefined(scores.nanmean(0), undefined)


def soft_f1(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's "Cont F1": F1 with soft counts tp = Σm·s, fp = Σm(1−s), fn = Σ(1−m)s.

    Same P/R/F1 formulas as :func:`discrete_f1`. Returns (B,K) in [0,1]; NaN where the map is
    NaN or Σs = 0 (deviation: the original gives 0). Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``c_f1``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    return _undefined(_f1(m, s, w), undefined)


def soft_accuracy(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's "Accuracy": mean(m·s + (1−m)(1−s)) over non-ignored pixels.

    Returns (B,K) in [0,1], defined for an empty gt; NaN where the map is NaN or every pixel is
    ignored. Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``acc``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    return _undefined(_mean(m * s + (1 - m) * (1 - s), w), undefined)


def discrete_iou(maps: Tensor, gt: Tensor, thresholds: Sequence[float] = IOU_THRESHOLDS,
                 ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's "Discr. IOU": Σ(m>t ∧ s>t) / (Σ(m>t ∨ s>t) + 1e-15), averaged over t = 0.1…0.9.

    Returns (B,K) in [0,1]. Thresholds where the binarised gt is empty are left out of the mean
    (deviation: the original's eps counts them as 0); NaN when none is defined or the map is NaN.
    Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``d_IOUs``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    scores = torch.stack([_iou(_binarize(m, t), _binarize(s, t), w) for t in thresholds])
    return _undefined(scores.nanmean(0), undefined)


def soft_iou(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's "Cont. IOU" (Ruzicka similarity): Σmin(m,s) / (Σmax(m,s) + 1e-15).

    Returns (B,K) in [0,1]; NaN where the map is NaN or Σs = 0 (deviation: the original gives 0).
    Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``c_IOU``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    return _undefined(_iou(m, s, w), undefined)


def pixel_auc(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """ROC AUC of the mask values as a pixel classifier of the gt (positives: s > 0).

    Mann–Whitney form with average ranks for ties, equal to ``sklearn.metrics.roc_auc_score``:
    AUC = (Σ rank(positives) − P(P+1)/2) / (P·N) over non-ignored pixels. Returns (B,K) in
    [0,1] (a constant mask gives 0.5); NaN where the map is NaN or the gt holds a single class
    (the original's ``None``). Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``aucs``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    counted = w.flatten(2) > 0
    scores = m.flatten(2).masked_fill(~counted, math.inf)  # ignored pixels rank above every mask value
    ordered, order = scores.sort(-1)
    # Average rank (1-based) of each run of tied values, doubled to stay integer: first + last position + 2.
    position = torch.arange(ordered.shape[-1], device=ordered.device).expand_as(ordered)
    change = ordered[..., 1:] != ordered[..., :-1]
    first = position.where(F.pad(change, (1, 0), value=True), 0).cummax(-1).values
    last = position.where(F.pad(change, (0, 1), value=True), ordered.shape[-1] - 1).flip(-1).cummin(-1).values.flip(-1)
    positive = ((s.flatten(2) > 0) & counted).gather(-1, order)
    num_pos = positive.sum(-1)
    num_neg = counted.sum(-1) - num_pos
    twice_u = ((first + last + 2) * positive).sum(-1) - num_pos * (num_pos + 1)
    auc = twice_u.float() / (2 * num_pos * num_neg).float()
    return _undefined(auc, undefined | (num_pos == 0) | (num_neg == 0))


def overlap(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """NN-Explainer's second "Accuracy" row: 1 − mean|s − m| over non-ignored pixels.

    Returns (B,K) in [0,1], defined for an empty gt; NaN where the map is NaN or every pixel
    is ignored. Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``over``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    return _undefined(1 - _mean((s - m).abs(), w), undefined)


def background_coverage(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Mask outside the object: mean(max(m − s, 0)) / (1 − mean(s)); lower is better.

    Returns (B,K) in [0,1]; NaN where the map is NaN or mean(s) = 1, i.e. no background
    (deviation: the original gives 0). Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``background_c``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    background = 1 - _mean(s, w)
    return _undefined(_mean((m - s).clamp(min=0), w) / background, undefined | (background <= 0))


def object_coverage(maps: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Object covered by the mask: 1 − mean(max(s − m, 0)) / mean(s); higher is better.

    Returns (B,K) in [0,1]; NaN where the map is NaN or mean(s) = 0, i.e. an empty gt
    (deviation: the original gives 0). Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``mask_c``.
    """
    m, s, w, undefined = _prepare(maps, gt, ignore)
    area = _mean(s, w)
    return _undefined(1 - _mean((s - m).clamp(min=0), w) / area, undefined | (area <= 0))


# ---------------------------------------------------------------- model-based

@torch.no_grad()
def saliency_metric(classifier: nn.Module, images: Tensor, masks: Tensor, classes: Tensor) -> Tensor:
    """Dabkowski & Gal's saliency metric as adapted by NN-Explainer; lower is better.

    log(max(mean(m), 0.05)) − log(Σ_{c in classes} softmax(F(m⊙x))_c), where m⊙x keeps the
    image under the mask and fills the rest with ``classifier.mean`` (zero in normalised space).
    classifier: maps images (B,3,H,W) in [0,1] to logits (B,C) and has a ``mean`` (3,) attribute
    (a saliencylab Classifier); masks (B,1,H,W) in [0,1]; classes (B,K) padded with -1, where a
    class listed twice counts twice (VOC lists one entry per object instance).
    Returns (B,) float32, unbounded; NaN where the mask is NaN or no class is given.
    Source: the NN-Explainer authors' released code (Stalder et al. 2022), ``sal``.
    """
    check_images(images)
    _check_maps(masks, unit=True)
    if masks.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(f"masks must have shape (B,1,H,W) matching images {tuple(images.shape)}, "
                         f"got {tuple(masks.shape)}; merge per-target maps with saliencylab.maps.merge_max")
    fill = getattr(classifier, "mean", None)
    if not isinstance(fill, Tensor) or fill.numel() != 3:
        raise TypeError("saliency_metric needs classifier.mean, the (3,) normalisation mean in [0,1] space "
                        "(wrap the model in saliencylab.Classifier)")
    m = masks.float().nan_to_num(nan=0.0)
    masked = m * images + (1 - m) * fill.to(images).view(1, 3, 1, 1)
    probs = classifier(masked).float().softmax(-1)
    classes = as_targets(classes, images.shape[0], num_classes=probs.shape[1]).to(probs.device)
    present = classes != PAD
    mass = (probs.gather(1, classes.clamp(min=0)) * present).sum(-1)
    area = m.flatten(1).mean(-1).clamp(min=SALIENCY_MIN_AREA)
    undefined = masks.flatten(1).isnan().any(-1) | ~present.any(-1)
    return _undefined(area.log() - mass.log(), undefined)
