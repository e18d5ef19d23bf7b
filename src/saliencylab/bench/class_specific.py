"""Class-specific evaluation of NN-Explainer (Stalder et al. 2022): does class k's mask keep class t?

For images containing class t, class k's mask is binarised at τ = 0.1 … 0.9, the image is kept
under it (mean-colour fill elsewhere, i.e. zero in normalised space) and the classifier's softmax
probability of t is averaged over τ and over the images of t. A class-specific explainer keeps
t only with its own mask: a high diagonal, a low off-diagonal. The "none" column is the
probability of t on the unmasked images.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from saliencylab.maps import normalize_minmax
from saliencylab.methods.base import Method
from saliencylab.types import Batch

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def _kept_probability(method: Method, images: Tensor, classes: Tensor, thresholds: Sequence[float],
                      normalize: bool) -> Tensor:
    """(B, K, K'): softmax prob of class classes[j] when keeping mask of class classes[k], mean over τ."""
    batch = images.shape[0]
    with torch.enable_grad():
        maps = method.attribute(images, classes.expand(batch, -1))  # (B,K,H,W)
    if normalize:
        maps = normalize_minmax(maps)
    total = torch.zeros(batch, len(classes), len(classes), device=images.device)
    for threshold in thresholds:
        keep = (maps > threshold).float().flatten(0, 1).unsqueeze(1)  # (B·K,1,H,W)
        repeated = images.repeat_interleave(len(classes), dim=0)
        probabilities = method.classifier(method.classifier.mask_images(repeated, keep)).softmax(1)
        total += probabilities[:, classes].view(batch, len(classes), len(classes))
    return total / len(thresholds)


def class_specific_matrix(method: Method, batches: Iterable[Batch], classes: Sequence[int],
                          thresholds: Sequence[float] = THRESHOLDS, normalize: bool = True,
                          device: torch.device | str = "cpu") -> Tensor:
    """Matrix (T, 1+T) in %: row t = images of class t; column 0 "none", column 1+k = class k's mask.

    ``normalize``: min-max normalise each map before thresholding (post-hoc methods, as the
    original does for Grad-CAM and RISE); trained explainers' sigmoid masks are used as they are.
    Rows of classes with no image are NaN.
    """
    class_index = torch.tensor(list(classes), device=device)
    sums = torch.zeros(len(classes), 1 + len(classes), device=device)
    counts = torch.zeros(len(classes), device=device)
    for batch in batches:
        batch = batch.to(device)
        present = batch.labels[:, class_index] > 0.5  # (B,T)
        chosen = present.any(1)
        if not chosen.any():
            continue
        images, present = batch.images[chosen], present[chosen].float()
        with torch.no_grad():
            unmasked = method.classifier(images).softmax(1)[:, class_index]  # (B,T)
        kept = _kept_probability(method, images, class_index, thresholds, normalize)  # (B,K mask,T target)
        sums[:, 0] += (present * unmasked).sum(0)
        sums[:, 1:] += torch.einsum("bt,bkt->tk", present, kept)
        counts += present.sum(0)
    return (100 * sums / counts[:, None]).cpu()
