"""Class activation maps from a feature layer: Grad-CAM and its element-wise variant."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.methods.base import Method, captured_output, register, selected_scores
from saliencylab.models.classifier import Classifier


def layer_activation_and_gradient(classifier: Classifier, layer: str, images: Tensor,
                                  classes: Tensor) -> tuple[Tensor, Tensor]:
    """Activation A (N,C',h,w) of ``layer`` and d score[class] / dA, one class per row."""
    module = classifier.layer(layer)
    inputs = images.detach().requires_grad_(True)  # frozen weights: the graph must start at the input
    with torch.enable_grad(), captured_output(module) as outputs:
        logits = classifier(inputs)
        if len(outputs) != 1:
            raise ValueError(f"layer {layer!r} ran {len(outputs)} times in one forward pass; "
                             "choose a layer that runs exactly once")
        activation = outputs[0]
        if not isinstance(activation, Tensor) or activation.dim() != 4:
            raise ValueError(f"layer {layer!r} must output a (N,C,h,w) tensor for a CAM")
        score = selected_scores(classifier, logits, classes).sum()
        (grad,) = torch.autograd.grad(score, activation)
    return activation.detach(), grad


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N,h,w) -> (N,H,W), bilinear with half-pixel centres (as OpenCV's resize)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


class LayerCAM(Method):
    """Shared base of CAM methods on one feature layer (``layer="auto"``: the classifier's first named layer)."""

    def __init__(self, classifier: Classifier, *, layer: str = "auto", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        classifier.layer(layer)  # fail now, not at the first batch, when the layer does not exist
        self.layer = layer

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        activation, grad = layer_activation_and_gradient(self.classifier, self.layer, images, classes)
        return upsample(self.combine(activation, grad), images.shape[-2:])

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        """(N,C',h,w) activation and gradient -> (N,h,w) map."""
        raise NotImplementedError


@register("gradcam")
class GradCAM(LayerCAM):
    """Grad-CAM (Selvaraju et al., 2017): ReLU(Σ_k mean_hw(dS/dA_k) · A_k), upsampled bilinearly.

    Raw, not min-max normalised (pytorch-grad-cam normalises per image; use
    ``saliencylab.maps.normalize_minmax`` for the same).
    """

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        weights = grad.mean(dim=(2, 3), keepdim=True)
        return (weights * activation).sum(1).relu()


@register("gradcam_elementwise")
class GradCAMElementwise(LayerCAM):
    """Element-wise Grad-CAM (spec 002, HiResCAM-like): ReLU(Σ_k dS/dA_k ⊙ A_k), upsampled bilinearly.

    The map used by consistent-interpretation training; it keeps the gradient's spatial layout.
    """

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        return (grad * activation).sum(1).relu()
