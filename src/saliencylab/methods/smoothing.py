"""SmoothGrad-style averaging of any registered method over noisy copies of the image."""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, build, register
from saliencylab.models.classifier import Classifier

VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register("smoothgrad")
class SmoothGrad(Method):
    """SmoothGrad (Smilkov et al., 2017): mean over n of M(x + εₙ), εₙ ~ N(0, noise²), M any registered method.

    ``base`` names the wrapped method (default ``"gradient"``), built with ``base_kwargs`` (its
    ``max_batch`` defaults to ours). ``samples=50`` and ``noise=0.15`` (std as a fraction of the
    [0,1] input range) follow the paper's 50 samples and 10–20 % noise. ``variant``:
    ``"smoothgrad"`` mean of the maps, ``"smoothgrad_sq"`` mean of their squares, ``"vargrad"``
    their variance (population, E[M²] − E[M]², as Captum's ``NoiseTunnel``).

    One (samples,3,H,W) noise tensor is drawn from ``seed`` and shared by every image, so results
    do not depend on the batch. Noisy images are NOT clamped to [0,1] (as Captum and the paper):
    the wrapped method runs on them through ``attribute_targets``, which skips the [0,1] input check.
    Deviation from Captum: the squares and variance are taken of the base method's maps, which are
    already reduced over RGB (Captum squares the per-channel attributions before any reduction).
    The output range, class-agnosticism and training are those of the wrapped method (squares and
    variances are non-negative).
    """

    output_range = "nonnegative"  # the default base, gradient

    def __init__(self, classifier: Classifier, *, base: str = "gradient", base_kwargs: dict | None = None,
                 samples: int = 50, noise: float = 0.15, variant: str = "smoothgrad", seed: int = 0,
                 max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0 (a std as a fraction of the [0,1] range), got {noise}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.inner = build(base, classifier, **{"max_batch": max_batch, **(base_kwargs or {})})
        self.base, self.base_kwargs, self.samples, self.noise, self.variant, self.seed = (
            base, base_kwargs, samples, noise, variant, seed)
        self.output_range = self.inner.output_range if variant == "smoothgrad" else "nonnegative"
        self.per_class, self.trained = self.inner.per_class, self.inner.trained

    def noise_tensor(self, height: int, width: int) -> Tensor:
        """The (samples,3,H,W) noise shared by all images, drawn on the CPU from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.samples, 3, height, width, generator=generator) * self.noise

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        noise = self.noise_tensor(height, width).to(images)
        total = torch.zeros((batch, targets.shape[1], height, width), dtype=torch.float32, device=images.device)
        squares = torch.zeros_like(total)
        per_chunk = max(1, self.max_batch // max(batch, 1))  # samples per call: about max_batch noisy images
        for chunk in noise.split(per_chunk):
            noisy = (images.unsqueeze(0) + chunk.unsqueeze(1)).flatten(0, 1)  # sample-major (s·B + b)
            maps = self.inner.attribute_targets(noisy, targets.repeat(len(chunk), 1))
            maps = maps.view(len(chunk), batch, *maps.shape[1:])
            total += maps.sum(0)
            squares += maps.square().sum(0)
        mean, mean_sq = total / self.samples, squares / self.samples
        if self.variant == "smoothgrad":
            return mean
        if self.variant == "smoothgrad_sq":
            return mean_sq
        return mean_sq - mean.square()

    def passes(self, height: int, width: int) -> Passes:
        inner = self.inner.passes(height, width)
        return Passes(forward=self.samples * inner.forward, backward=self.samples * inner.backward)
