"""Losses of the trained explainers of NN-Explainer
(Stalder et al., 'What You See is What You Classify: Black Box Attributions', NeurIPS 2022), as pure tensor functions.

Shapes: seg_logits (B,C,H,W) explainer logits for every class; labels (B,C) multi-hot;
masks m, n (B,1,H,W) in [0,1]; classifier logits (B,C).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.perturb import blur_zero_padded

ALTERNATIVES = ("blur", "color", "random")


def aggregate_masks(seg_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Target mask m and non-target mask n, each (B,1,H,W) (``extract_masks`` in the NN-Explainer authors' released code).

    m_b = sigmoid(max_{c: y_bc=1} S_bc) and n_b = sigmoid(max_{c: y_bc=0} S_bc): the pixel-wise
    max of the logits, then the sigmoid (equal to the max of the per-class sigmoids). A row with
    no label gets m = 0 (the original would crash on the empty max); a row with every label gets
    n = 0. Both are exact zeros with zero gradient.
    """
    if seg_logits.dim() != 4 or labels.shape != seg_logits.shape[:2]:
        raise ValueError(f"seg_logits must be (B,C,H,W) and labels (B,C), got {tuple(seg_logits.shape)} "
                         f"and {tuple(labels.shape)}")
    positive = (labels > 0.5)[:, :, None, None]
    low = torch.tensor(float("-inf"), dtype=seg_logits.dtype, device=seg_logits.device)
    target = torch.where(positive, seg_logits, low).amax(dim=1, keepdim=True)
    non_target = torch.where(positive, low, seg_logits).amax(dim=1, keepdim=True)
    return target.sigmoid(), non_target.sigmoid()


def entropy_loss(logits: Tensor) -> Tensor:
    """mean over B×C of p·log p, p = softmax(logits).clamp(min=1e-16) (Stalder et al. 2022).

    This is minus the softmax entropy divided by C; minimising it maximises the entropy of the
    prediction on the masked-out image. Its minimum, for a uniform softmax, is -log(C)/C.
    """
    p = logits.softmax(dim=-1).clamp(min=1e-16)
    return (p * p.log()).mean()


def total_variation(mask: Tensor, squared: bool = False) -> Tensor:
    """mean over b,i,j of |m_ij − m_i,j+1| + |m_ij − m_i+1,j| with reflect padding (Stalder et al. 2022).

    The reflect-padded neighbour of the last column (row) is the one before it, so the last
    difference repeats the previous one. ``squared=True``: squared differences (the RT-saliency
    TV² of §4). mask (B,1,H,W) (any channel count: the mean runs over channels too), H,W >= 2.
    """
    padded = F.pad(mask, (1, 1, 1, 1), mode="reflect")
    dx = padded[..., 1:-1, 2:] - mask
    dy = padded[..., 2:, 1:-1] - mask
    if squared:
        return (dx.square() + dy.square()).mean()
    return (dx.abs() + dy.abs()).mean()


def class_area_loss(seg_logits: Tensor, labels: Tensor, min_area: float = 0.05, max_area: float = 0.3) -> Tensor:
    """ClassArea of Stalder et al. 2022: the sorted one-sided hinge on every label-class mask.

    For each image b and label class c: v = sigmoid(S_bc) sorted descending, r_min = 1 on the first
    ⌊N·min_area⌋ ranks (else 0), r_max = 1 on the first ⌊N·max_area⌋ ranks; l_bc = mean_k
    relu(r_min_k − v_k) + relu(v_k − r_max_k). Summed over label classes, averaged over the batch.
    N = H·W of the actual mask (the original hard-codes 224², which equals this at 224 px only).
    """
    batch, classes, height, width = seg_logits.shape
    n = height * width
    k_min, k_max = int(n * min_area), int(n * max_area)
    values = seg_logits.flatten(2).sigmoid().sort(dim=-1, descending=True).values  # (B,C,N)
    ranks = torch.arange(n, device=seg_logits.device)
    r_min = (ranks < k_min).to(values.dtype)
    r_max = (ranks < k_max).to(values.dtype)
    per_class = ((r_min - values).relu() + (values - r_max).relu()).mean(dim=-1)  # (B,C)
    return (per_class * (labels > 0.5).to(per_class.dtype)).sum(dim=1).mean()


@dataclass(frozen=True)
class LossWeights:
    """λ_e, λ_tv, λ_a, λ_m, λ_n and the ClassArea bounds; defaults are the argparser defaults of the NN-Explainer authors' released code."""

    entropy_weight: float = 1.0
    tv_weight: float = 1.0
    class_area_weight: float = 1.0
    mask_area_weight: float = 0.1
    non_target_area_weight: float = 0.3
    min_area: float = 0.05
    max_area: float = 0.3

    @classmethod
    def of(cls, weights: "LossWeights | Mapping[str, float] | None") -> "LossWeights":
        if weights is None:
            return cls()
        if isinstance(weights, cls):
            return weights
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in weights.items()})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def explainer_loss(classifier_logits_in: Tensor, classifier_logits_out: Tensor, labels: Tensor, m: Tensor,
                   n: Tensor, seg_logits: Tensor,
                   weights: LossWeights | Mapping[str, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The NN-Explainer loss of Stalder et al. 2022; returns (total, unweighted terms).

    L = BCE(F(m⊙x), y) + λ_e·Lent(F((1−m)⊙x)) + λ_tv·(TV(m)+TV(n)) + λ_a·ClassArea(S,y)
        + λ_m·mean(m) + λ_n·mean(n).
    Terms: classification, entropy, tv, class_area, mask_area, non_target_area.
    """
    w = LossWeights.of(weights)
    terms = {
        "classification": F.binary_cross_entropy_with_logits(classifier_logits_in, labels),
        "entropy": entropy_loss(classifier_logits_out),
        "tv": total_variation(m) + total_variation(n),
        "class_area": class_area_loss(seg_logits, labels, w.min_area, w.max_area),
        "mask_area": m.mean(),
        "non_target_area": n.mean(),
    }
    total = (terms["classification"] + w.entropy_weight * terms["entropy"] + w.tv_weight * terms["tv"]
             + w.class_area_weight * terms["class_area"] + w.mask_area_weight * terms["mask_area"]
             + w.non_target_area_weight * terms["non_target_area"])
    return total, terms


def fcnn_loss(teacher_seg: Tensor, student_seg: Tensor, labels: Tensor,
              weights: LossWeights | Mapping[str, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The self-explaining InterpretableFCNN loss of Stalder et al. 2022; returns (total, unweighted terms).

    Class logits are the spatial means of the seg logits. L = BCE(t,y) + BCE(s,y) + mean|t−s|
    + λ_tv(TV(t_m)+TV(s_m)) + λ_a(ClassArea(t_seg)+ClassArea(s_seg)) + λ_m(mean t_m + mean s_m)
    + λ_n(mean t_n + mean s_n) + mean|t_m − s_m| (coherency, unweighted). λ_e is unused.
    """
    w = LossWeights.of(weights)
    t_logits, s_logits = teacher_seg.mean(dim=(2, 3)), student_seg.mean(dim=(2, 3))
    t_mask, t_non = aggregate_masks(teacher_seg, labels)
    s_mask, s_non = aggregate_masks(student_seg, labels)
    terms = {
        "classification": F.binary_cross_entropy_with_logits(t_logits, labels)
        + F.binary_cross_entropy_with_logits(s_logits, labels),
        "logit_consistency": (t_logits - s_logits).abs().mean(),
        "tv": total_variation(t_mask) + total_variation(s_mask),
        "class_area": class_area_loss(teacher_seg, labels, w.min_area, w.max_area)
        + class_area_loss(student_seg, labels, w.min_area, w.max_area),
        "mask_area": t_mask.mean() + s_mask.mean(),
        "non_target_area": t_non.mean() + s_non.mean(),
        "coherency": (t_mask - s_mask).abs().mean(),
    }
    total = (terms["classification"] + terms["logit_consistency"] + w.tv_weight * terms["tv"]
             + w.class_area_weight * terms["class_area"] + w.mask_area_weight * terms["mask_area"]
             + w.non_target_area_weight * terms["non_target_area"] + terms["coherency"])
    return total, terms


def rt_saliency_loss(classifier_logits_preserved: Tensor, classifier_logits_destroyed: Tensor, labels: Tensor,
                     m: Tensor, *, area_weight: float = 1.0, tv_weight: float = 10.0,
                     destroyer_weight: float = 5.0, destroyer_power: float = 0.3) -> tuple[Tensor, dict[str, Tensor]]:
    """The adapted Real-Time-Saliency loss of Stalder et al. 2022; returns (total, unweighted terms).

    L = 10·TV²(m) + λ_area·mean(m) + L_pres + 5·L_destr^0.3, with
    L_pres = −(1/N_pos) Σ_{y_bc=1} log σ(F(x_p))_bc and L_destr = (1/N_pos) Σ_{y_bc=1} σ(F(x_d))_bc,
    N_pos the number of positive labels in the batch (at least 1: a batch without labels gives
    L_pres = L_destr = 0). λ_area = 1.0 is the README's tuned value (the paper's 1e-3 "led to bad
    results"). L_destr is clamped at 1e-8 before the power so its gradient stays finite.
    Terms: tv, area, preserver, destroyer.
    """
    positive = (labels > 0.5).to(classifier_logits_preserved.dtype)
    n_pos = positive.sum().clamp(min=1.0)
    preserver = -(F.logsigmoid(classifier_logits_preserved) * positive).sum() / n_pos
    destroyer = (classifier_logits_destroyed.sigmoid() * positive).sum() / n_pos
    terms = {"tv": total_variation(m, squared=True), "area": m.mean(), "preserver": preserver, "destroyer": destroyer}
    total = (tv_weight * terms["tv"] + area_weight * terms["area"] + preserver
             + destroyer_weight * destroyer.clamp(min=1e-8).pow(destroyer_power))
    return total, terms


def alternative_image(images_normalized: Tensor, generator: torch.Generator | None = None, mode: str = "random", *,
                      sigma: float = 10.0, noise_std: float = 0.11, offset: float = 0.33,
                      color_noise_mean_bug: bool = False) -> Tensor:
    """The RT-saliency alternative image A of Stalder et al. 2022, in normalised space.

    "blur": Gaussian blur, σ=10 (:func:`saliencylab.perturb.blur_zero_padded`). "color": per-pixel N(0, noise_std) plus a
    per-image, per-channel U(−offset, offset). ``color_noise_mean_bug=True`` reproduces the
    original's ``normal_(0.11)`` (mean 0.11, std 1). "random": one of the two for the whole
    batch, drawn with ``generator`` (the original's ``random.choice``).
    """
    if mode not in ALTERNATIVES:
        raise ValueError(f"mode must be one of {ALTERNATIVES}, got {mode!r}")
    device = images_normalized.device
    draw_on = generator.device if generator is not None else device  # draw where the generator lives
    if mode == "random":
        mode = ALTERNATIVES[int(torch.randint(2, (1,), generator=generator, device=draw_on))]
    if mode == "blur":
        return blur_zero_padded(images_normalized, sigma)
    batch, channels = images_normalized.shape[:2]
    mean, std = (noise_std, 1.0) if color_noise_mean_bug else (0.0, noise_std)
    dtype = images_normalized.dtype
    noise = torch.randn(images_normalized.shape, generator=generator, device=draw_on, dtype=dtype).to(device)
    shift = torch.rand((batch, channels, 1, 1), generator=generator, device=draw_on, dtype=dtype).to(device)
    return mean + std * noise + (2 * shift - 1) * offset


# ---------------------------------------------------------------- in-model explainer (Rio-Torto et al. 2020)

def sparsity(explanation: Tensor) -> Tensor:
    """(B,) mean |ẑ| of each map (B,1,H,W) (Rio-Torto et al. 2020, the penalised l1 norm)."""
    return explanation.abs().flatten(1).mean(1)


def contiguity(explanation: Tensor) -> Tensor:
    """(B,) total variation of each map (B,1,H,W): mean |ẑ_{i+1,j} − ẑ_ij| + mean |ẑ_{i,j+1} − ẑ_ij|, each mean over
    its own (H−1)·W or H·(W−1) differences, per sample (the PyTorch original; its Keras twin mixed the batch)."""
    vertical = (explanation[..., 1:, :] - explanation[..., :-1, :]).abs().flatten(1).mean(1)
    horizontal = (explanation[..., :, 1:] - explanation[..., :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal


def explanation_loss(explanation: Tensor, beta: float, gamma: float = 0.0, mask: Tensor | None = None) -> Tensor:
    """(B,) unsupervised β·sparsity + (1−β)·contiguity, plus, with a ground-truth ``mask`` (B,1,H,W) (the hybrid
    loss), γ·|Σ(1−z)ẑ / (Σ(1−z) + 1e-6)|: the mean explanation outside the mask."""
    loss = beta * sparsity(explanation) + (1 - beta) * contiguity(explanation)
    if mask is None:
        return loss
    outside = 1 - mask.float()
    return loss + gamma * ((outside * explanation).flatten(1).sum(1) / (outside.flatten(1).sum(1) + 1e-6)).abs()


def joint_loss(logits: Tensor, labels: Tensor, explanation_losses: Tensor, alpha: float,
               class_weights: Tensor | None = None) -> Tensor:
    """α·CE(logits (B,C), labels (B,)) + (1−α)·mean of the explanation losses (B,); ``class_weights`` (C,) weigh CE."""
    return alpha * F.cross_entropy(logits, labels, weight=class_weights) + (1 - alpha) * explanation_losses.mean()


def balanced_class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """scikit-learn's "balanced" weights (C,): n / (C · count of the class) for labels (N,); 0 for absent classes."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
