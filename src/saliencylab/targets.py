"""Targets: the one typed form of "which classes to explain".

Every method and metric takes targets as a LongTensor ``(B,K)`` of class indices in
``0..C-1``; ``-1`` pads rows of ragged multi-label targets (their maps are NaN).
The helpers below build that form from the usual shorthands; anything else is an error.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

PAD: int = -1
"""Target value of a padding slot."""


def as_targets(targets: int | Tensor | list, batch_size: int, num_classes: int | None = None) -> Tensor:
    """Return targets as LongTensor (B,K) from an int, a (B,) or (B,K) integer tensor, or a list.

    Multi-hot label tensors are rejected (ambiguous with class indices): use
    :func:`from_multi_hot`. Raises ValueError naming what was expected.
    """
    if isinstance(targets, bool):
        raise TypeError("targets must be a class index, not a bool")
    if isinstance(targets, int):
        out = torch.full((batch_size, 1), targets, dtype=torch.long)
    elif isinstance(targets, (list, tuple)):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
            raise TypeError("a list of targets must hold one int class index per image; "
                            "for several classes per image pass a LongTensor (B,K) padded with -1")
        out = torch.tensor(targets, dtype=torch.long).reshape(-1, 1)
    elif isinstance(targets, Tensor):
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TypeError(
                f"targets must be an integer tensor of class indices, got dtype {targets.dtype}; "
                "for multi-hot labels use saliencylab.targets.from_multi_hot(labels)")
        if targets.dim() == 0:
            out = torch.full((batch_size, 1), int(targets), dtype=torch.long)
        elif targets.dim() == 1:
            out = targets.long().reshape(-1, 1)
        elif targets.dim() == 2:
            out = targets.long()
        else:
            raise ValueError(f"targets must have shape (B,) or (B,K), got {tuple(targets.shape)}")
    else:
        raise TypeError(f"targets must be an int, a list of ints or an integer tensor, got {type(targets).__name__}")
    if out.shape[0] != batch_size:
        raise ValueError(f"targets hold {out.shape[0]} rows but the batch has {batch_size} images")
    if out.numel() and int(out.min()) < PAD:
        raise ValueError(f"target class indices must be >= 0 (or {PAD} for padding), got {int(out.min())}")
    if num_classes is not None and out.numel():
        check_class_range(out, num_classes)
    return out.cpu()


def check_class_range(classes: Tensor, num_classes: int, model: str = "a classifier") -> None:
    """ValueError when a class index in ``classes`` (any shape, -1 padding allowed) is >= ``num_classes``."""
    if int(classes.max()) >= num_classes:
        raise ValueError(f"target class {int(classes.max())} is out of range for {model} with "
                         f"{num_classes} classes (expected 0..{num_classes - 1})")


def from_multi_hot(labels: Tensor) -> Tensor:
    """Multi-hot labels (B,C) (bool or 0/1) -> LongTensor (B,K), K = most positives in a row, -1 padded."""
    if labels.dim() != 2:
        raise ValueError(f"multi-hot labels must have shape (B,C), got {tuple(labels.shape)}")
    positive = labels.detach().cpu() > 0.5
    k = max(int(positive.sum(1).max()) if positive.numel() else 0, 1)
    out = torch.full((labels.shape[0], k), PAD, dtype=torch.long)
    for row, present in enumerate(positive):
        classes = present.nonzero().flatten()
        out[row, : len(classes)] = classes
    return out


@torch.no_grad()
def top_k_predicted(scores_fn: Callable[[Tensor], Tensor], images: Tensor, k: int = 1) -> Tensor:
    """The k highest-scoring classes of ``scores_fn(images)`` as LongTensor (B,k), best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return scores_fn(images).topk(k, dim=1).indices.cpu()


def valid_pairs(targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten non-padded entries of (B,K) targets into (image index, slot index, class), each (N,)."""
    rows, slots = (targets != PAD).nonzero(as_tuple=True)
    return rows, slots, targets[rows, slots]
