"""Ground-truth ambiguities of deliberative explanations (Wang & Vasconcelos, NeurIPS 2019, §5): which parts (CUB)
or objects (ADE20K) two classes have in common.

- CUB: each of the 15 parts is tied to attribute groups of ``class_attribute_labels_continuous.txt``
  (:data:`CUB_PART_GROUPS`). Per group, a softmax over the class's raw percentages; per class pair, the
  Endres-Schindelin divergence D = Σ p log(2p/(p+q)) + q log(2q/(p+q)) (twice Jensen-Shannon); per part, the
  mean D over its groups. A part is common to (a, b) when that mean is <= the 20th percentile of all
  C·C·15 values (diagonal zeros included).
- ADE20K: the fraction of each scene class's training images that contain each object; fractions < 0.3 count
  as 0; the similarity of (a, b) under object o is the mean of the two fractions when both are > 0, else 0;
  o is common when its similarity is >= the 99th percentile of all C·C·O values and > 0 (the second condition
  only matters when fewer than 1 % of the values are positive, where the percentile alone is 0 and would make
  every object common).
"""
from __future__ import annotations

import numpy as np

from saliencylab.data.cub import CUB_ATTRIBUTES, CUB_PART_GROUPS, CUB_PARTS

PART_PERCENTILE = 20.0
OBJECT_MIN_FRACTION = 0.3
OBJECT_PERCENTILE = 99.0


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def endres_schindelin(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Σ_i p_i log(2p_i/(p_i+q_i)) + q_i log(2q_i/(p_i+q_i)) over the last axis (natural log; 0·log 0 = 0)."""
    mean = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / mean), 0.0) + np.where(q > 0, q * np.log(q / mean), 0.0)
    return terms.sum(axis=-1)


def part_dissimilarity(attributes: np.ndarray) -> np.ndarray:
    """(C,C,15): per class pair and part, the mean Endres-Schindelin divergence of the part's attribute groups;
    ``attributes`` (C,312) are the classes' attribute percentages (``class_attribute_labels_continuous.txt``)."""
    attributes = np.asarray(attributes, dtype=np.float64)
    if attributes.ndim != 2 or attributes.shape[1] != CUB_ATTRIBUTES:
        raise ValueError(f"expected a (classes, {CUB_ATTRIBUTES}) attribute table, got shape {attributes.shape}")
    out = np.zeros((len(attributes), len(attributes), len(CUB_PARTS)))
    for part, groups in enumerate(CUB_PART_GROUPS):
        for first, last in groups:
            p = _softmax(attributes[:, first - 1:last])
            out[:, :, part] += endres_schindelin(p[:, None], p[None, :]) / len(groups)
    return out


def common_parts(attributes: np.ndarray, percentile: float = PART_PERCENTILE) -> np.ndarray:
    """(C,C,15) bool: part j is common to classes (a, b) when its dissimilarity is <= the ``percentile``-th
    percentile of every value of :func:`part_dissimilarity` (numpy's linear interpolation)."""
    dissimilarity = part_dissimilarity(attributes)
    return dissimilarity <= np.percentile(dissimilarity, percentile)


def object_fractions(objects_per_image: list[set[int]], labels: list[int], num_classes: int,
                     num_objects: int) -> np.ndarray:
    """(C,O): the fraction of each class's images whose segmentation holds object o+1 (ids 1..O; 0 is unlabelled)."""
    counts = np.zeros((num_classes, num_objects))
    images = np.zeros(num_classes)
    for objects, label in zip(objects_per_image, labels):
        images[label] += 1
        present = [o - 1 for o in objects if 1 <= o <= num_objects]
        counts[label, present] += 1
    return counts / np.maximum(images, 1)[:, None]


def common_objects(fractions: np.ndarray, min_fraction: float = OBJECT_MIN_FRACTION,
                   percentile: float = OBJECT_PERCENTILE) -> np.ndarray:
    """(C,C,O) bool from the class-object fractions (C,O) (:func:`object_fractions`): see the module docstring.
    Object o of the last axis is object id o+1."""
    kept = np.where(fractions < min_fraction, 0.0, fractions)
    both = (kept[:, None] > 0) & (kept[None, :] > 0)
    similarity = np.where(both, (kept[:, None] + kept[None, :]) / 2, 0.0)
    return (similarity >= np.percentile(similarity, percentile)) & (similarity > 0)
