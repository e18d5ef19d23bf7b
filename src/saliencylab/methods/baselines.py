"""Model-free baselines for tables: what a score means is clearer next to what no model gives."""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register
from saliencylab.models.classifier import Classifier


class Baseline(Method):
    """A map that ignores the model and the target: the same for every (image, target) of a given size."""

    output_range = "unit"
    per_class = False

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        return self.map(height, width, images.device).expand(*targets.shape, height, width).clone()

    def map(self, height: int, width: int, device: torch.device) -> Tensor:
        """(H,W) float32 map."""
        raise NotImplementedError

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=0, backward=0)


@register("center")
class Center(Baseline):
    """Centre prior (TorchRay's ``center`` baseline): an isotropic Gaussian peaked at the image centre.

    σ = ``sigma`` × the shorter side. Its arg-max is the centre pixel, so its pointing game
    equals TorchRay's centre point (69.6 % on VOC07 test, as TorchRay reports).
    """

    def __init__(self, classifier: Classifier, *, sigma: float = 0.25, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma

    def map(self, height: int, width: int, device: torch.device) -> Tensor:
        y = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
        x = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
        spread = self.sigma * min(height, width)
        return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * spread ** 2))


@register("constant")
class Constant(Baseline):
    """A constant map of ``value`` (the NN-Explainer table's 0 / 0.5 / 1 columns)."""

    def __init__(self, classifier: Classifier, *, value: float = 0.5, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        self.value = value
        self.output_range = "unit" if 0 <= value <= 1 else "raw"

    def map(self, height: int, width: int, device: torch.device) -> Tensor:
        return torch.full((height, width), float(self.value), device=device)


@register("random")
class Random(Baseline):
    """Uniform noise in [0,1) from ``seed``; one draw per image size, shared by all images and targets."""

    def __init__(self, classifier: Classifier, *, seed: int = 0, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        self.seed = seed

    def map(self, height: int, width: int, device: torch.device) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(height, width, generator=generator).to(device)
