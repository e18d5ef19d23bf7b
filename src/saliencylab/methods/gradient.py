"""Gradient attributions."""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, register, selected_scores
from saliencylab.models.classifier import Classifier

REDUCTIONS = ("max_abs", "abs", "signed")


def input_gradient(classifier: Classifier, images: Tensor, classes: Tensor) -> Tensor:
    """d score[class] / d image for each row: (N,3,H,W). Leaves ``images`` and its .grad untouched."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = selected_scores(classifier, classifier(inputs), classes).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    return grad


def reduce_channels(values: Tensor, reduce: str) -> Tensor:
    """(N,3,H,W) -> (N,H,W): ``max_abs`` max over channels of |v|, ``abs`` sum of |v|, ``signed`` sum of v."""
    if reduce == "max_abs":
        return values.abs().amax(dim=1)
    if reduce == "abs":
        return values.abs().sum(dim=1)
    return values.sum(dim=1)


@register("gradient")
class Gradient(Method):
    """Vanilla gradient saliency (Simonyan et al., 2014): d score / d input.

    ``reduce``: ``"max_abs"`` (default; the paper and TorchRay: max over RGB of |grad|),
    ``"abs"`` (sum of |grad| over RGB) or ``"signed"`` (sum over RGB).
    """

    def __init__(self, classifier: Classifier, *, reduce: str = "max_abs", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        return reduce_channels(input_gradient(self.classifier, images, classes), self.reduce)
