"""Post-processing of attribution maps: normalisation and merging, kept apart from the methods."""
from __future__ import annotations

import torch
from torch import Tensor


def _check(maps: Tensor) -> None:
    if maps.dim() != 4:
        raise ValueError(f"maps must have shape (B,K,H,W), got {tuple(maps.shape)}")


def normalize_minmax(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Rescale each (image, target) map to [0,1]: (m − min) / (max − min + eps). NaN maps stay NaN.

    A constant map becomes 0 (pytorch-grad-cam's convention, eps 1e-7).
    """
    _check(maps)
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    high = flat.amax(dim=2, keepdim=True)
    return ((flat - low) / (high - low + eps)).view_as(maps)


def normalize_max(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Divide each map by its largest absolute value; signs are kept, range [-1,1]."""
    _check(maps)
    scale = maps.flatten(2).abs().amax(dim=2).clamp_min(eps)
    return maps / scale[..., None, None]


def normalize_sum(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Clamp at 0 and divide by the sum, so each map is a distribution over pixels (as Pillai & Pirsiavash 2021 evaluate)."""
    _check(maps)
    positive = maps.clamp_min(0)
    return positive / positive.flatten(2).sum(dim=2).clamp_min(eps)[..., None, None]


def merge_max(maps: Tensor) -> Tensor:
    """Pixel-wise max over an image's targets, ignoring NaN (padded) maps: (B,K,H,W) -> (B,1,H,W).

    The NN-Explainer evaluation merges per-class masks this way. An image whose maps are all
    NaN gives a NaN map.
    """
    _check(maps)
    valid = ~maps.isnan()
    merged = maps.nan_to_num(nan=-torch.inf).amax(dim=1, keepdim=True)
    return torch.where(valid.any(dim=1, keepdim=True), merged, torch.nan)


def to_unit(maps: Tensor, output_range: str) -> Tensor:
    """Maps in [0,1]: as they are when the method's ``output_range`` is ``"unit"`` (a mask), else min-max normalised."""
    return maps if output_range == "unit" else normalize_minmax(maps)
