"""Difficulty scores and the attributions of deliberative explanations (Wang & Vasconcelos, NeurIPS 2019, §3-4).

A difficulty score s(x) is a scalar per image: the classifier's confidence score 1 − max p, its entropy, or a
hardness predictor's output. Attributions are read at one named layer A (N,C,h,w) of the network computing the
score (the classifier for confidence and entropy, the hardness predictor for its own score):

- class attribution a_c = Σ_k A_k · ∂logit_c/∂A_k (negatives set to 1e-7), for each of the top-5 classes;
- difficulty attribution by ``gradient``: Σ_k A_k · max(0, ∂s/∂A_k);
- ``integrated_gradients``: Σ_k (A(x) − A(x'))_k · max(0, ḡ_k), clipped at 0, ḡ the gradient averaged over 51
  points x' + (i/50)(x − x') from the black image x' (the class maps then use Σ_k (A(x) − A(x'))_k · ḡ_c,k);
- ``second_order`` ("2ndG"): the gradient map + ½|A_hwᵀ H_hw A_hw|, H_hw the Hessian block of one location,
  reached by Hessian-vector products (:func:`saliencylab.methods.hessian.location_quadratic_forms`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from saliencylab.insecurity.maps import insecurities
from saliencylab.methods.base import math_attention
from saliencylab.methods.cam import single_output
from saliencylab.methods.hessian import location_quadratic_forms
from saliencylab.models.classifier import Classifier, Layout, captured_output, check_images, scoped_eval

ATTRIBUTIONS = ("gradient", "integrated_gradients", "second_order")
"""Difficulty attributions: gradient (baseline), integrated gradients, gradient-Hessian "2ndG" (proposed)."""
IG_POINTS = 51
"""Integrated gradients: points x' + (i/50)(x − x'), i = 0..50, averaged uniformly (the original's setting)."""
NEGATIVE_CLASS_EVIDENCE = 1e-7
"""Class attributions below 0 are set to this (so products of two class maps stay positive)."""
TOP_CLASSES = 5

Score = Callable[[Tensor], Tensor]
"""A network's output (N,D) -> one score per image (N,) (or K per image, (N,K), for class scores)."""


def confidence_score(logits: Tensor) -> Tensor:
    """1 − max_c softmax(logits)_c, (N,) in [0, 1 − 1/C]: the classifier's own difficulty ("cs")."""
    return 1 - logits.softmax(dim=1).amax(dim=1)


def entropy_score(logits: Tensor) -> Tensor:
    """−Σ_c p_c log p_c of p = softmax(logits), (N,) in [0, log C] (natural log)."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def hardness_logit(outputs: Tensor) -> Tensor:
    """The hardness predictor's pre-sigmoid output (N,1) -> (N,), the score the review-time scripts explain."""
    return outputs[:, 0]


def hardness_probability(outputs: Tensor) -> Tensor:
    """The hardness predictor's sigmoid output (N,) in (0,1), the score the official scripts explain."""
    return outputs[:, 0].sigmoid()


@contextmanager
def _layer_graph(network: Classifier, layer: str, images: Tensor) -> Iterator[tuple[Tensor, Tensor, Layout]]:
    """Forward ``images`` with a graph: (outputs (N,D), the raw activation of ``layer``, its layout), eval mode."""
    check_images(images)
    inputs = images.detach().requires_grad_(True)  # frozen weights: the graph must start at the input
    with scoped_eval(network), torch.enable_grad(), math_attention(), \
            captured_output(network.layer(layer)) as captured:
        outputs = network(inputs)
        activation = single_output(captured, layer)
        yield outputs, activation, network.read_layout(layer, activation, images.shape[-2:])


def top_classes(classifier: Classifier, images: Tensor, count: int = TOP_CLASSES) -> Tensor:
    """The ``count`` classes of highest softmax probability per image, (N,count) long, most probable first."""
    with scoped_eval(classifier), torch.no_grad():
        return classifier(images).topk(count, dim=1).indices


def class_attributions(classifier: Classifier, images: Tensor, classes: Tensor, layer: str,
                       integrated: bool = False) -> Tensor:
    """a_c (N,K,h,w) for ``classes`` (N,K): Σ_k A_k · ∂logit_c/∂A_k, negatives set to 1e-7.

    ``integrated``: Σ_k (A(x) − A(x'))_k · ḡ_c,k with ḡ averaged over the 51 integrated-gradients points.
    """
    def logits(outputs: Tensor) -> Tensor:
        return outputs.gather(1, classes)

    activation, grads = (integrated_layer_gradients if integrated else layer_gradients)(
        classifier, images, layer, logits)
    maps = (activation.unsqueeze(1) * grads).sum(2)
    return maps.masked_fill(maps < 0, NEGATIVE_CLASS_EVIDENCE)


def layer_gradients(network: Classifier, images: Tensor, layer: str, score: Score) -> tuple[Tensor, Tensor]:
    """Activation grid A (N,C,h,w) of ``layer`` and ∂score/∂A: (N,C,h,w) for a score (N,), (N,K,C,h,w) for
    scores (N,K) (one backward per column, one forward)."""
    with _layer_graph(network, layer, images) as (outputs, activation, layout):
        values = score(outputs)
        columns = values.unsqueeze(1) if values.dim() == 1 else values
        grads = torch.stack([layout.to_grid(torch.autograd.grad(columns[:, k].sum(), activation,
                                                                retain_graph=k + 1 < columns.shape[1])[0])
                             for k in range(columns.shape[1])], 1)
    return layout.to_grid(activation.detach()), grads if values.dim() == 2 else grads[:, 0]


def integrated_layer_gradients(network: Classifier, images: Tensor, layer: str, score: Score,
                               points: int = IG_POINTS) -> tuple[Tensor, Tensor]:
    """(A(x) − A(x') (N,C,h,w), ḡ shaped as in :func:`layer_gradients`): x' the black image, ḡ = ∂score/∂A
    averaged over the ``points`` images x' + i/(points−1)·(x − x'), one batch of N per point (so ``score`` sees
    the rows of ``images``)."""
    steps = [layer_gradients(network, alpha * images, layer, score) for alpha in torch.linspace(0, 1, points).tolist()]
    return steps[-1][0] - steps[0][0], torch.stack([grad for _, grad in steps]).mean(0)


def difficulty_attribution(network: Classifier, images: Tensor, layer: str, score: Score,
                           attribution: str = "second_order", location_batch: int = 64) -> Tensor:
    """a_s (N,h,w) >= 0 of the difficulty ``score`` of ``network`` at ``layer`` by ``attribution`` (ATTRIBUTIONS).

    ``second_order`` runs ``location_batch`` Hessian-vector products at a time.
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    if attribution == "integrated_gradients":
        delta, grad = integrated_layer_gradients(network, images, layer, score)
        return (delta * grad.clamp_min(0)).sum(1).clamp_min(0)
    if attribution == "gradient":
        activation, grad = layer_gradients(network, images, layer, score)
        return (activation * grad.clamp_min(0)).sum(1)
    with _layer_graph(network, layer, images) as (outputs, activation, layout):
        grad, quadratic = location_quadratic_forms(score(outputs).sum(), activation, layout, location_batch)
    return (layout.to_grid(activation.detach()) * grad.clamp_min(0)).sum(1) + 0.5 * quadratic.abs()


def explain_insecurities(classifier: Classifier, images: Tensor, layer: str, difficulty_network: Classifier,
                         score: Score, attribution: str = "second_order",
                         difficulty_layer: str | None = None) -> tuple[Tensor, list[dict[tuple[int, int], Tensor]]]:
    """The top-5 classes (N,5) of ``images`` and, per image, its insecurity maps (slot pair -> (H,W)).

    Class maps come from ``classifier`` at ``layer`` (integrated when ``attribution`` is integrated gradients, else
    gradient × activation); the difficulty map from ``score`` of ``difficulty_network`` (the classifier itself for
    the confidence score and entropy, the hardness predictor for its score) at ``difficulty_layer`` (default
    ``layer``) by ``attribution``; see :mod:`saliencylab.insecurity.maps`.
    """
    classes = top_classes(classifier, images)
    class_maps = class_attributions(classifier, images, classes, layer,
                                    integrated=attribution == "integrated_gradients")
    difficulty = difficulty_attribution(difficulty_network, images, difficulty_layer or layer, score, attribution)
    size = tuple(images.shape[-2:])
    return classes, [insecurities(class_maps[i], difficulty[i], size) for i in range(len(images))]
