"""Class-specific confusion matrices (spec 000 §6) on a hand-built classifier and oracle masks."""
import math

import torch
from torch import nn

from saliencylab import Classifier
from saliencylab.bench.class_specific import class_specific_matrix
from saliencylab.methods.base import Method
from saliencylab.types import Batch


class HalfMeans(nn.Module):
    """logit_0 = 10 · mean of the left half, logit_1 = 10 · mean of the right half, logit_2 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        left, right = x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))
        return torch.stack([10 * left, 10 * right, torch.zeros_like(left)], dim=1)


class HalfOracle(Method):
    """Class 0's map is the left half, class 1's the right half, class 2's nothing."""

    def attribute_pairs(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(images.shape[0], *images.shape[-2:])
        half = images.shape[-1] // 2
        maps[classes == 0, :, :half] = 1
        maps[classes == 1, :, half:] = 1
        return maps


def batch_of(labels: list[list[float]]) -> Batch:
    n = len(labels)
    return Batch(images=torch.ones(n, 3, 4, 4), labels=torch.tensor(labels), boxes=[torch.zeros(0, 4)] * n,
                 box_labels=[torch.zeros(0, dtype=torch.long)] * n, difficult=[torch.zeros(0, dtype=torch.bool)] * n,
                 segmentation=None, image_ids=[str(i) for i in range(n)])


def test_class_specific_matrix_by_hand():
    classifier = Classifier(HalfMeans(), mean=(0, 0, 0), std=(1, 1, 1))
    batches = [batch_of([[1, 1, 0], [1, 0, 0]]), batch_of([[0, 0, 1]])]
    matrix = class_specific_matrix(HalfOracle(classifier), batches, classes=[0, 1], normalize=False)
    e10 = math.exp(10)
    unmasked_0 = 100 * e10 / (2 * e10 + 1)  # both halves visible: logits (10, 10, 0)
    kept_own = 100 * e10 / (e10 + 2)  # own half kept, the other filled with the mean (0): logits (10, 0, 0)
    kept_other = 100 / (e10 + 2)
    expected = torch.tensor([[unmasked_0, kept_own, kept_other],  # both images hold class 0
                             [unmasked_0, kept_other, kept_own]])  # one image holds class 1
    torch.testing.assert_close(matrix, expected, rtol=1e-4, atol=1e-4)


def test_rows_of_absent_classes_are_nan():
    classifier = Classifier(HalfMeans(), mean=(0, 0, 0), std=(1, 1, 1))
    matrix = class_specific_matrix(HalfOracle(classifier), [batch_of([[1, 0, 0]])], classes=[0, 1])
    assert not matrix[0].isnan().any() and matrix[1].isnan().all()
