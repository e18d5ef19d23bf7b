"""Second-order attribution: the gradient-Hessian map of deliberative explanations (Wang & Vasconcelos, NeurIPS 2019)."""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Passes, captured_output, math_attention, register, selected_scores
from saliencylab.methods.cam import LayerCAM, grid, probe, single_output, upsample
from saliencylab.models.classifier import Classifier, Layout


def location_quadratic_forms(score: Tensor, activation: Tensor, layout: Layout,
                             location_batch: int) -> tuple[Tensor, Tensor]:
    """Gradient grid g = dS/dA (N,C,h,w) and q[n,h,w] = A_:hw^T H_hw A_:hw, H_hw the Hessian block of one location.

    score: scalar built from ``activation``, a raw layer output read as (N,C,h,w) through ``layout``,
    with a graph. Each location's block is reached with one Hessian-vector product H·v, v = A masked
    to that location (built on the grid, mapped back to the raw layout: prefix tokens get 0);
    ``location_batch`` products run at once (batched VJPs), never one double-backward per Hessian entry.
    """
    (grad,) = torch.autograd.grad(score, activation, create_graph=True)
    values = layout.to_grid(activation.detach())
    n, _, h, w = values.shape
    quadratic = torch.zeros(n, h * w, device=values.device, dtype=values.dtype)
    if not grad.requires_grad:  # the score is linear in A above the layer (e.g. GAP -> linear): H = 0
        return layout.to_grid(grad.detach()), quadratic.view(n, h, w)
    for start in range(0, h * w, location_batch):
        locations = torch.arange(start, min(start + location_batch, h * w), device=values.device)
        onehot = torch.zeros(len(locations), 1, 1, h * w, device=values.device, dtype=values.dtype)
        onehot[torch.arange(len(locations)), 0, 0, locations] = 1.0
        vectors = (values.unsqueeze(0) * onehot.view(len(locations), 1, 1, h, w)).flatten(0, 1)  # (L·N,C,h,w)
        vectors = layout.from_grid(vectors).unflatten(0, (len(locations), n))  # (L,N,*raw)
        (products,) = torch.autograd.grad(grad, activation, grad_outputs=vectors, is_grads_batched=True,
                                          retain_graph=True)
        quadratic[:, locations] = (products * vectors).flatten(2).sum(2).T
    return layout.to_grid(grad.detach()), quadratic.view(n, h, w)


@register("gradient_hessian")
class GradientHessian(LayerCAM):
    """Gradient-Hessian map ("2ndG", Wang & Vasconcelos, 'Deliberative Explanations: visualizing network insecurities', NeurIPS 2019): Σ_k A_k·max(0, g_k) + ½|A_hwᵀ H_hw A_hw|.

    g = dS/dA at ``layer`` (read as a (N,C,h,w) grid in its layout, like the CAMs); H_hw is the
    Hessian of S restricted to the channels of one location (cross-location terms ignored, as in
    the paper), reached with one Hessian-vector product per location, ``max_batch`` locations at a
    time, under the math attention kernel (double backward through ViT/Swin attention).
    ``clip_gradient=False`` uses g unclipped (the paper clips it for difficulty scores). Upsampled
    bilinearly; raw values.
    """

    def __init__(self, classifier: Classifier, *, layer: str = "auto", clip_gradient: bool = True,
                 max_batch: int = 64) -> None:
        super().__init__(classifier, layer=layer, max_batch=max_batch)
        self.clip_gradient = clip_gradient

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        inputs = images.detach().requires_grad_(True)
        with torch.enable_grad(), math_attention(), captured_output(self.classifier.layer(self.layer)) as outputs:
            score = selected_scores(self.classifier, self.classifier(inputs), classes).sum()
            activation = single_output(outputs, self.layer)
            layout = self.classifier.read_layout(self.layer, activation, images.shape[-2:])
            grad, quadratic = location_quadratic_forms(score, activation, layout, self.max_batch)
        first = layout.to_grid(activation.detach()) * (grad.clamp_min(0) if self.clip_gradient else grad)
        return upsample(first.sum(1) + 0.5 * quadratic.abs(), images.shape[-2:])

    def passes(self, height: int, width: int) -> Passes:
        """One forward and backward, plus one Hessian-vector product (about two backward passes) per location."""
        h, w = grid(self.classifier, self.layer, probe(self.classifier, self.layer, height, width),
                    (height, width)).shape[-2:]
        return Passes(forward=1, backward=1 + 2 * h * w)
