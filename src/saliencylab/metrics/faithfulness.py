"""Perturbation faithfulness: MoRF / LeRF curves and AOPC, deletion / insertion, and POMPOM, batched on tensors.

- **MoRF / LeRF and AOPC** (Samek et al. 2017, "Evaluating the visualization of what a deep neural network
  has learned"; as used by Rio-Torto et al. 2020, "Understanding the decisions of CNNs: an in-model
  approach"): the map is cut into p×p patches scored by their mean; at step k the k most (MoRF) or least
  (LeRF) relevant patches are replaced by a perturbation; f(x^(k)) is the softmax probability of the
  target class. AOPC = 1/(L+1) Σ_{k=0..L} (f(x^(0)) − f(x^(k))).
- **Deletion / insertion** (Petsiuk et al. 2018, "RISE", Sec. 4.1): pixels are removed from the image
  (deletion, into black) or inserted into a blurred copy (insertion), most relevant first, a fixed number
  per step; the score is the area under the probability curve.
- **POMPOM** (Rio-Torto et al. 2020): the share of pixels outside the ground-truth mask whose explanation
  value exceeds ε.

Every curve is computed for all (image, step) pairs at once, in chunks of ``max_batch`` images through the
classifier, so one image's curve does not depend on the batch it came in. Images are (N,3,H,W) in [0,1].
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.perturb import blur

PERTURBATIONS = ("black", "white", "gray", "blur", "uniform")
"""What perturbed pixels become: 0, 1, 0.5, the Gaussian-blurred image, uniform random RGB per pixel."""
BLUR_SIGMA_224 = 5.0
"""Std (px) of the blur perturbation at 224 px, scaled with the image's shorter side (RISE's insertion blur)."""
POMPOM_EPS = 1e-6

Scores = Callable[[Tensor], Tensor]
"""score_fn(images (N,3,H,W) in [0,1]) -> class probabilities (N,C)."""


def perturbed_images(images: Tensor, perturbation: str, *, seed: int = 0, blur_sigma: float | None = None) -> Tensor:
    """(N,3,H,W): the fully perturbed version of each image (a patch takes its pixels from it).

    ``blur``: Gaussian of std ``blur_sigma`` px (default BLUR_SIGMA_224 scaled to the image);
    ``uniform``: image i draws its noise from a generator seeded ``seed + i`` (so image i's noise does not
    depend on the batch; pass the index of the batch's first image in ``seed``).
    """
    if perturbation == "black":
        return torch.zeros_like(images)
    if perturbation == "white":
        return torch.ones_like(images)
    if perturbation == "gray":
        return torch.full_like(images, 0.5)
    if perturbation == "blur":
        sigma = BLUR_SIGMA_224 * min(images.shape[-2:]) / 224 if blur_sigma is None else blur_sigma
        return blur(images, sigma)
    if perturbation == "uniform":
        noise = [torch.rand(images.shape[1:], generator=torch.Generator().manual_seed(seed + i))
                 for i in range(len(images))]
        return torch.stack(noise).to(images) if noise else torch.empty_like(images)
    raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")


def patch_ranks(maps: Tensor, patch: int, *, most_relevant_first: bool = True) -> Tensor:
    """(N,H,W) long: the rank of each pixel's patch, 0 for the first perturbed.

    maps (N,H,W); patches are ``patch``×``patch`` cells of a grid from the top-left corner (edge cells may be
    smaller), scored by the mean map value over their pixels and ordered by it, descending for MoRF and
    ascending for LeRF; ties keep grid (row-major) order.
    """
    if patch < 1:
        raise ValueError(f"patch must be >= 1 px, got {patch}")
    n, height, width = maps.shape
    padded = F.pad(maps[:, None].float(), (0, -width % patch, 0, -height % patch))
    counts = F.avg_pool2d(F.pad(torch.ones_like(maps[:1, None]).float(), (0, -width % patch, 0, -height % patch)),
                          patch)
    means = (F.avg_pool2d(padded, patch) / counts)[:, 0]
    grid = means.shape[-2:]
    keys = -means.flatten(1) if most_relevant_first else means.flatten(1)
    order = keys.sort(dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=maps.device).expand_as(order))
    cells = ranks.view(n, *grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return cells[:, :height, :width]


def pixel_ranks(maps: Tensor) -> Tensor:
    """(N,H,W) long: each pixel's rank by map value, descending (0 = most relevant); ties in row-major order."""
    order = (-maps.flatten(1).float()).sort(dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=maps.device).expand_as(order))
    return ranks.view_as(maps)


def replacement_curves(score_fn: Scores, images: Tensor, replacement: Tensor, classes: Tensor, ranks: Tensor,
                       counts: Sequence[int], *, max_batch: int = 64) -> Tensor:
    """(N,T) probability of class ``classes[i]`` after the pixels of rank < ``counts[t]`` take ``replacement``'s values.

    images, replacement (N,3,H,W); classes (N,) long; ranks (N,H,W) from :func:`patch_ranks` or
    :func:`pixel_ranks`; counts (T,) how many ranks are replaced at each step. All N·T images are built and
    classified in chunks of ``max_batch``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    n, steps = len(images), len(counts)
    counts_t = torch.as_tensor(list(counts), device=images.device)
    out = torch.empty(n * steps, device=images.device)
    pairs = torch.arange(n * steps, device=images.device)
    with torch.no_grad():
        for chunk in pairs.split(max_batch):
            image, step = chunk // steps, chunk % steps
            replaced = (ranks[image] < counts_t[step].view(-1, 1, 1)).unsqueeze(1)
            probabilities = score_fn(torch.where(replaced, replacement[image], images[image]))
            out[chunk] = probabilities.gather(1, classes[image].view(-1, 1)).squeeze(1).float()
    return out.view(n, steps)


def aopc(curves: Tensor) -> Tensor:
    """AOPC of perturbation curves (..., L+1) whose first value is the clean image: f(x⁰) − mean_k f(x^k)."""
    return curves[..., 0] - curves.mean(-1)


def area_under_curve(curves: Tensor) -> Tensor:
    """Area under curves (..., T) sampled evenly on [0,1], trapezoid rule (Petsiuk et al.'s ``auc``)."""
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


def _per_target(maps: Tensor, targets: Tensor, curve: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """Apply ``curve(maps (n,H,W), image indices (n,), classes (n,)) -> (n,T)`` to every valid (image, target)
    pair of maps (B,K,H,W) / targets (B,K); (B,K,T) with NaN rows for padded targets or NaN maps."""
    valid = (targets >= 0) & ~maps.isnan().flatten(2).any(-1)
    image, slot = valid.nonzero(as_tuple=True)
    curves = curve(maps[image, slot], image, targets[image, slot])
    out = torch.full((*targets.shape, curves.shape[-1]), math.nan, device=maps.device)
    out[image, slot] = curves.to(out)
    return out


def morf_curves(score_fn: Scores, images: Tensor, maps: Tensor, targets: Tensor, *, patch: int = 16,
                steps: int = 100, perturbation: str = "blur", most_relevant_first: bool = True,
                absolute: bool = True, seed: int = 0, max_batch: int = 64) -> Tensor:
    """(B,K,L+1) MoRF (or, with ``most_relevant_first=False``, LeRF) curves of maps (B,K,H,W) for targets (B,K).

    Step k (k = 0..L, L = min(``steps``, patch count)) replaces the k first patches by ``perturbation``;
    value = softmax probability of the target. ``absolute``: order patches by |map| (as Rio-Torto et al. do
    for the baselines' signed attributions). NaN rows for padded targets.
    """
    replacement = perturbed_images(images, perturbation, seed=seed)
    cells = math.ceil(images.shape[-2] / patch) * math.ceil(images.shape[-1] / patch)
    counts = range(min(steps, cells) + 1)

    def curve(pair_maps: Tensor, image: Tensor, classes: Tensor) -> Tensor:
        ranks = patch_ranks(pair_maps.abs() if absolute else pair_maps, patch, most_relevant_first=most_relevant_first)
        return replacement_curves(score_fn, images[image], replacement[image], classes, ranks, counts,
                                  max_batch=max_batch)
    return _per_target(maps, targets, curve)


def causal_curves(score_fn: Scores, images: Tensor, maps: Tensor, targets: Tensor, *, mode: str = "deletion",
                  steps: int = 224, absolute: bool = True, blur_sigma: float | None = None,
                  max_batch: int = 64) -> Tensor:
    """(B,K,T) deletion or insertion curves (Petsiuk et al. 2018) of maps (B,K,H,W) for targets (B,K).

    ``steps``: the image's H·W pixels are moved ⌈H·W/steps⌉ per step, most relevant first (224 steps = RISE's
    224 px per step at 224²), T = steps + 1 points including the start. Deletion turns pixels black;
    insertion starts from the blurred image (:func:`perturbed_images` ``"blur"``) and puts the pixels back.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    pixels = images.shape[-2] * images.shape[-1]
    per_step = math.ceil(pixels / steps)
    counts = [min(i * per_step, pixels) for i in range(math.ceil(pixels / per_step) + 1)]
    substrate = perturbed_images(images, "black" if mode == "deletion" else "blur", blur_sigma=blur_sigma)
    start, end = (images, substrate) if mode == "deletion" else (substrate, images)

    def curve(pair_maps: Tensor, image: Tensor, classes: Tensor) -> Tensor:
        ranks = pixel_ranks(pair_maps.abs() if absolute else pair_maps)
        return replacement_curves(score_fn, start[image], end[image], classes, ranks, counts, max_batch=max_batch)
    return _per_target(maps, targets, curve)


def pompom(maps: Tensor, masks: Tensor, *, eps: float = POMPOM_EPS) -> Tensor:
    """POMPOM (B,K): |#{outside-mask pixels with (1−z)·ẑ > ε}| / (#{(1−z) > ε} + ε) (Rio-Torto et al. 2020).

    maps (B,K,H,W) explanations ẑ (masks in [0,1], or maps scaled by the caller); masks (B,K,H,W) the
    ground-truth mask z (bool or [0,1]). 0 for an all-zero map, ≈1 for an all-one map; lower is better.
    NaN for NaN maps (padded targets).
    """
    outside = 1 - masks.float()
    meaningful = ((outside * maps) > eps).flatten(2).sum(-1).float()
    value = (meaningful / ((outside > eps).flatten(2).sum(-1).float() + eps)).abs()
    return value.masked_fill(maps.isnan().flatten(2).any(-1), math.nan)
