"""Insecurity maps (Wang & Vasconcelos, "Deliberative Explanations", NeurIPS 2019, §3.3): which class pairs an
image is unsure between, and where.

Per image, from the class maps a_c (K,h,w) of its top-K classes and the difficulty map a_s (h,w):
the top-3 of the K classes at each location (:func:`location_top_classes`; locations of zero difficulty get
:data:`NO_CLASS`, a sentinel apart from every class slot: the review-time code used slot 0, the top-1 class,
for both); the candidate ambiguities (a, b) = the pairs among each location's three (:func:`candidate_pairs`);
the atom mask m_ab = locations with both a and b among their three; the insecurity
I_ab = a_a · a_b · a_s · m_ab (:func:`insecurity_map`), upsampled bilinearly (:func:`insecurities`) and cut to
its top-ρ pixels (:func:`top_fraction`). Class indices here are *slots* of the top-K list, not class ids.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saliencylab.methods.cam import upsample

NO_CLASS = -1
"""Slot index of locations with no difficulty (a_s <= 0): they take part in no ambiguity."""
CLASSES_PER_LOCATION = 3


def location_top_classes(class_maps: Tensor, difficulty: Tensor, count: int = CLASSES_PER_LOCATION) -> Tensor:
    """(count,h,w) long: the slots of the ``count`` largest class maps (K,h,w) at each location, sorted ascending;
    NO_CLASS at locations where ``difficulty`` (h,w) <= 0."""
    if class_maps.dim() != 3 or difficulty.shape != class_maps.shape[1:]:
        raise ValueError(f"expected class maps (K,h,w) and a difficulty map (h,w), got {tuple(class_maps.shape)} "
                         f"and {tuple(difficulty.shape)}")
    if class_maps.shape[0] < count:
        raise ValueError(f"need at least {count} class maps, got {class_maps.shape[0]}")
    slots = class_maps.topk(count, dim=0).indices.sort(dim=0).values
    return slots.masked_fill(difficulty.unsqueeze(0) <= 0, NO_CLASS)


def candidate_pairs(top: Tensor) -> list[tuple[int, int]]:
    """The distinct slot pairs (a, b), a < b, among the classes of any one location of ``top`` (count,h,w), sorted."""
    pairs = set()
    for i in range(top.shape[0]):
        for j in range(i + 1, top.shape[0]):
            found = torch.stack([top[i], top[j]], -1).flatten(0, 1)
            found = found[(found != NO_CLASS).all(1)]
            pairs.update((int(a), int(b)) for a, b in found.unique(dim=0).tolist())
    return sorted(pairs)


def atom_mask(top: Tensor, a: int, b: int) -> Tensor:
    """(h,w) bool: locations whose classes (``top``, (count,h,w)) include both slots ``a`` and ``b``."""
    return (top == a).any(0) & (top == b).any(0)


def insecurity_map(class_maps: Tensor, difficulty: Tensor, top: Tensor, a: int, b: int) -> Tensor:
    """I_ab = a_a · a_b · a_s · m_ab, (h,w), for slots ``a``, ``b`` of ``class_maps`` (K,h,w)."""
    return class_maps[a] * class_maps[b] * difficulty * atom_mask(top, a, b)


def insecurities(class_maps: Tensor, difficulty: Tensor, size: tuple[int, int]) -> dict[tuple[int, int], Tensor]:
    """Every candidate ambiguity (a, b) -> its insecurity map upsampled bilinearly to ``size`` (H,W)."""
    top = location_top_classes(class_maps, difficulty)
    pairs = candidate_pairs(top)
    if not pairs:
        return {}
    maps = torch.stack([insecurity_map(class_maps, difficulty, top, a, b) for a, b in pairs])
    return dict(zip(pairs, upsample(maps, size)))


def fraction_thresholds(insecurity: Tensor, fractions: Sequence[float]) -> Tensor:
    """(F,): the cut of :func:`top_fraction` for each of ``fractions``, from one sort of the map."""
    if not all(0 < f < 1 for f in fractions):
        raise ValueError(f"kept fractions must be in (0,1), got {list(fractions)}")
    values = insecurity.flatten().sort().values
    counts = torch.tensor([max(1, int(f * values.numel())) for f in fractions])
    return values[values.numel() - counts]


def top_fraction(insecurity: Tensor, fraction: float) -> Tensor:
    """(H,W) bool: the top-ρ segmentation of an ``insecurity`` map (H,W), ρ = ``fraction`` in (0,1).

    As the original: the pixels strictly above the value at sorted position −⌊ρ·H·W⌋, so ⌊ρ·H·W⌋ − 1 pixels when
    the values are distinct, fewer when they tie at the cut (an all-zero map keeps none).
    """
    return insecurity > fraction_thresholds(insecurity, [fraction])[0]
