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

from collections.abc import Callable, Iterator, Sequence
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
    scores (N,K) (one forward, one backward batched over the K columns)."""
    with _layer_graph(network, layer, images) as (outputs, activation, layout):
        values = score(outputs)
        grads = _column_gradients(values.unsqueeze(1) if values.dim() == 1 else values, activation, layout)
    return layout.to_grid(activation.detach()), grads if values.dim() == 2 else grads[:, 0]


def _column_gradients(columns: Tensor, activation: Tensor, layout: Layout) -> Tensor:
    """(N,K,C,h,w): ∂columns[:, k]/∂A for each column of ``columns`` (N,K), as K vector-Jacobian products batched
    in one backward (each row's score depends on its own row of A only)."""
    count = columns.shape[1]
    if count == 1:
        grads = torch.autograd.grad(columns.sum(), activation)[0].unsqueeze(0)
    else:
        selectors = torch.eye(count, dtype=columns.dtype, device=columns.device)[:, None, :]
        (grads,) = torch.autograd.grad(columns, activation, is_grads_batched=True,
                                       grad_outputs=selectors.expand(-1, len(columns), -1).contiguous())
    return layout.to_grid(grads.flatten(0, 1)).unflatten(0, (count, len(columns))).transpose(0, 1)


def integrated_layer_gradients(network: Classifier, images: Tensor, layer: str, score: Score,
                               points: int = IG_POINTS, max_rows: int = 512) -> tuple[Tensor, Tensor]:
    """(A(x) − A(x') (N,C,h,w), ḡ shaped as in :func:`layer_gradients`): x' the black image, ḡ = ∂score/∂A
    averaged over the ``points`` images x' + i/(points−1)·(x − x'). Several points go through the network in one
    batch of at most ``max_rows`` images (at least one point); ``score`` is applied to each point's N rows, so it
    sees the rows of ``images``."""
    alphas = torch.linspace(0, 1, points, device=images.device)
    per_batch = max(1, max_rows // len(images))
    total, baseline, activation = None, None, None
    for chunk in alphas.split(per_batch):
        scaled = (chunk.view(-1, 1, 1, 1, 1) * images).flatten(0, 1)  # (P·N,3,H,W), point-major

        def point_scores(outputs: Tensor) -> Tensor:
            return torch.cat([score(rows) for rows in outputs.split(len(images))])

        grid, grads = layer_gradients(network, scaled, layer, point_scores)
        grids, grads = grid.unflatten(0, (len(chunk), len(images))), grads.unflatten(0, (len(chunk), len(images)))
        baseline = grids[0] if baseline is None else baseline
        activation = grids[-1]
        total = grads.sum(0) if total is None else total + grads.sum(0)
    return activation - baseline, total / points


def difficulty_attributions(network: Classifier, images: Tensor, layer: str, score: Score,
                             attributions: Sequence[str] = ("second_order",),
                             location_batch: int = 64) -> dict[str, Tensor]:
    """attribution -> a_s (N,h,w) >= 0 of the difficulty ``score`` of ``network`` at ``layer``, for each of
    ``attributions`` (of ATTRIBUTIONS). ``gradient`` and ``second_order`` share one forward and one gradient (the
    gradient map is 2ndG's first term); ``second_order`` runs ``location_batch`` Hessian-vector products at a time.
    """
    unknown = [a for a in attributions if a not in ATTRIBUTIONS]
    if unknown:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {unknown[0]!r}")
    maps = {}
    if "integrated_gradients" in attributions:
        delta, grad = integrated_layer_gradients(network, images, layer, score)
        maps["integrated_gradients"] = (delta * grad.clamp_min(0)).sum(1).clamp_min(0)
    if "second_order" in attributions:
        with _layer_graph(network, layer, images) as (outputs, activation, layout):
            grad, quadratic = location_quadratic_forms(score(outputs).sum(), activation, layout, location_batch)
        first = (layout.to_grid(activation.detach()) * grad.clamp_min(0)).sum(1)
        maps["second_order"] = first + 0.5 * quadratic.abs()
    elif "gradient" in attributions:
        activation, grad = layer_gradients(network, images, layer, score)
        first = (activation * grad.clamp_min(0)).sum(1)
    if "gradient" in attributions:
        maps["gradient"] = first
    return {attribution: maps[attribution] for attribution in attributions}


def difficulty_attribution(network: Classifier, images: Tensor, layer: str, score: Score,
                           attribution: str = "second_order", location_batch: int = 64) -> Tensor:
    """a_s (N,h,w) >= 0 of the difficulty ``score`` of ``network`` at ``layer`` by ``attribution`` (ATTRIBUTIONS);
    see :func:`difficulty_attributions`."""
    return difficulty_attributions(network, images, layer, score, (attribution,), location_batch)[attribution]


def explain_insecurities(classifier: Classifier, images: Tensor, layer: str, difficulty_network: Classifier,
                         score: Score, attributions: Sequence[str] = ("second_order",),
                         difficulty_layer: str | None = None
                         ) -> tuple[Tensor, dict[str, list[dict[tuple[int, int], Tensor]]]]:
    """The top-5 classes (N,5) of ``images`` and, per attribution of ``attributions``, per image, its insecurity
    maps (slot pair -> (H,W)).

    Class maps come from ``classifier`` at ``layer`` (integrated for integrated gradients, else gradient ×
    activation, computed once for gradient and 2ndG); the difficulty maps from ``score`` of
    ``difficulty_network`` (the classifier itself for the confidence score and entropy, the hardness predictor
    for its score) at ``difficulty_layer`` (default ``layer``); see :mod:`saliencylab.insecurity.maps`.
    """
    classes = top_classes(classifier, images)
    difficulty = difficulty_attributions(difficulty_network, images, difficulty_layer or layer, score, attributions)
    class_maps = {integrated: class_attributions(classifier, images, classes, layer, integrated=integrated)
                  for integrated in {attribution == "integrated_gradients" for attribution in attributions}}
    size = tuple(images.shape[-2:])
    return classes, {attribution: [insecurities(class_maps[attribution == "integrated_gradients"][i],
                                                difficulty[attribution][i], size) for i in range(len(images))]
                     for attribution in attributions}
