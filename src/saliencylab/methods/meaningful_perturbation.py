"""Meaningful perturbation (Fong & Vedaldi, 'Interpretable Explanations of Black Boxes by Meaningful
Perturbation', ICCV 2017), and the mask helpers iGOS++ shares with it.

Each (image, target) pair optimises its own mask; all of a chunk's masks form one batched
parameter tensor, and the losses are summed over independent pairs, so Adam (element-wise)
gives the same result batched as one at a time. The noise is drawn from ``seed`` on the CPU
and shared by all pairs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register
from saliencylab.models.classifier import Classifier
from saliencylab.perturb import blur
from saliencylab.targets import check_class_range


def tv_norm(masks: Tensor, beta: float) -> Tensor:
    """Σ over both axes of mean |neighbour difference|^β: (N,) for masks (N,1,h,w)."""
    rows = (masks[..., :-1, :] - masks[..., 1:, :]).abs().pow(beta).flatten(1).mean(1)
    cols = (masks[..., :, :-1] - masks[..., :, 1:]).abs().pow(beta).flatten(1).mean(1)
    return rows + cols


def upsample_corners(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(N,1,h,w) -> (N,1,H,W), bilinear with aligned corners (``nn.UpsamplingBilinear2d``, as both references)."""
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=True)


def class_probability(classifier: Classifier, images: Tensor, classes: Tensor) -> Tensor:
    """Softmax probability (N,) of classes (N,)."""
    logits = classifier(images)
    check_class_range(classes, logits.shape[1])
    return logits.softmax(dim=1).gather(1, classes.view(-1, 1)).squeeze(1)


@register("meaningful_perturbation")
class MeaningfulPerturbation(Method):
    """Meaningful perturbation (Fong & Vedaldi, 2017): min_m λ1‖1−m‖₁ + λ2 TV_β(m) + p_c(m·x + (1−m)·blur(x) + noise).

    The deletion game; the map is 1 − m upsampled (1 = deleted = salient), in [0,1]. m is a
    ``mask_size``² (28, paper) mask initialised to 1, upsampled bilinearly (aligned corners),
    optimised by Adam (``lr=0.1``, paper and re-implementation) for ``max_iter=300`` (paper)
    iterations and clamped to [0,1] after each step. Coefficients from the common PyTorch
    re-implementation (jacobgil/pytorch-explain-black-box): ``l1=0.01``, ``tv=0.2``,
    ``tv_beta=3`` (the paper's β; its λ1 = 1e-4, λ2 = 1e-2 are for a sum, not a mean); L1 and TV
    are means over the low-resolution mask; p_c is the softmax probability. Blur: Gaussian
    ``blur_sigma=10`` px (paper's σ0; the re-implementation averages a 11×11 σ=5 Gaussian and a
    median blur). Noise: N(0, ``noise``=0.2) in [0,1] space added to the perturbed image each
    iteration (re-implementation), one (3,H,W) draw per iteration from ``seed``, shared by all pairs.
    """

    output_range = "unit"

    def __init__(self, classifier: Classifier, *, max_iter: int = 300, lr: float = 0.1, l1: float = 0.01,
                 tv: float = 0.2, tv_beta: float = 3.0, mask_size: int = 28, blur_sigma: float = 10.0,
                 noise: float = 0.2, seed: int = 0, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if max_iter < 1 or lr <= 0 or mask_size < 2 or blur_sigma <= 0:
            raise ValueError(f"need max_iter >= 1, lr > 0, mask_size >= 2, blur_sigma > 0; got max_iter={max_iter}, "
                             f"lr={lr}, mask_size={mask_size}, blur_sigma={blur_sigma}")
        if l1 < 0 or tv < 0 or tv_beta <= 0 or noise < 0:
            raise ValueError(f"need l1, tv, noise >= 0 and tv_beta > 0; got l1={l1}, tv={tv}, tv_beta={tv_beta}, "
                             f"noise={noise}")
        self.max_iter, self.lr, self.l1, self.tv, self.tv_beta = max_iter, lr, l1, tv, tv_beta
        self.mask_size, self.blur_sigma, self.noise, self.seed = mask_size, blur_sigma, noise, seed

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        size = images.shape[-2:]
        background = blur(images, self.blur_sigma)
        generator = torch.Generator().manual_seed(self.seed)
        mask = torch.ones(len(images), 1, self.mask_size, self.mask_size, device=images.device, requires_grad=True)
        optimizer = torch.optim.Adam([mask], lr=self.lr)
        for _ in range(self.max_iter):
            noise = (torch.randn(1, 3, *size, generator=generator) * self.noise).to(images)
            with torch.enable_grad():
                up = upsample_corners(mask, size)
                perturbed = images * up + background * (1 - up) + noise
                loss = (self.l1 * (1 - mask).abs().flatten(1).mean(1) + self.tv * tv_norm(mask, self.tv_beta)
                        + class_probability(self.classifier, perturbed, classes))
                optimizer.zero_grad()
                loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
        return 1 - upsample_corners(mask.detach(), size).squeeze(1)

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=self.max_iter, backward=self.max_iter)
