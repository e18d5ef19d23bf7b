"""Image perturbations shared by the methods and the training schemes: Gaussian blurs and fills.

Images are (N,C,H,W) floats, in [0,1] or normalised: the functions act per channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

FILLS = ("mean", "black", "blur")
EPS32 = 1.1920929e-07


def blur(images: Tensor, sigma: float, radius: int | None = None) -> Tensor:
    """Gaussian blur with std ``sigma`` px, kernel 2·radius+1 (default radius ⌈3σ⌉), reflect padding.

    The radius is capped below the image's shorter side, as reflect padding needs.
    """
    radius = min(math.ceil(3 * sigma) if radius is None else radius, min(images.shape[-2:]) - 1)
    return gaussian_blur(images, [2 * radius + 1] * 2, [sigma] * 2)


def blur_zero_padded(images: Tensor, sigma: float) -> Tensor:
    """TorchRay's ``imsmooth``: separable Gaussian of half-width ⌈4σ⌉, kernel summing to 1, zero padding.

    Borders fade to 0 (in normalised space: to the mean colour); ``sigma <= 0`` returns the images.
    """
    if sigma <= 0:
        return images
    half = math.ceil(4 * sigma)
    taps = torch.arange(-half, half + 1, dtype=images.dtype, device=images.device) / (math.sqrt(2) * sigma + EPS32)
    kernel = (-taps * taps).exp()
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.conv2d(images, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(half, 0), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, half), groups=channels)


def fill_images(images: Tensor, fill: str, mean: Tensor, blur_sigma: float) -> Tensor:
    """What removed pixels become (N,3,H,W) for images (N,3,H,W) in [0,1]: ``"mean"`` the colour ``mean`` (3,)
    (the classifier's: zero after normalisation), ``"black"``, or ``"blur"`` (:func:`blur` of std ``blur_sigma``)."""
    if fill == "mean":
        return mean.to(images).view(1, 3, 1, 1).expand_as(images)
    if fill == "black":
        return torch.zeros_like(images)
    if fill == "blur":
        return blur(images, blur_sigma)
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
