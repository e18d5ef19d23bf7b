"""Target helpers and map post-processing: exact values."""
import math

import pytest
import torch

from saliencylab.maps import merge_max, normalize_max, normalize_minmax, normalize_sum
from saliencylab.targets import as_targets, from_multi_hot, top_k_predicted, valid_pairs


def test_as_targets_from_every_accepted_form():
    assert as_targets(3, 2).tolist() == [[3], [3]]
    assert as_targets([1, 0], 2).tolist() == [[1], [0]]
    assert as_targets(torch.tensor(2), 2).tolist() == [[2], [2]]
    assert as_targets(torch.tensor([4, 5]), 2).tolist() == [[4], [5]]
    assert as_targets(torch.tensor([[4, -1], [0, 1]]), 2).tolist() == [[4, -1], [0, 1]]


@pytest.mark.parametrize("targets, error, match", [
    (torch.tensor([[1.0, 0.0]]), TypeError, "from_multi_hot"),
    (torch.tensor([[True]]), TypeError, "from_multi_hot"),
    (torch.zeros(1, 1, 1, dtype=torch.long), ValueError, r"\(B,\) or \(B,K\)"),
    ("cat", TypeError, "int, a list of ints or an integer tensor"),
    ([0.5], TypeError, "one int class index per image"),
    (True, TypeError, "not a bool"),
    (7, ValueError, r"out of range for a classifier with 5 classes \(expected 0..4\)"),
    (-2, ValueError, ">= 0"),
])
def test_as_targets_rejects_everything_else(targets, error, match):
    with pytest.raises(error, match=match):
        as_targets(targets, 1, num_classes=5)


def test_from_multi_hot_pads_ragged_rows():
    labels = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert from_multi_hot(labels).tolist() == [[1, 2], [0, -1], [-1, -1]]
    rows, slots, classes = valid_pairs(from_multi_hot(labels))
    assert rows.tolist() == [0, 0, 1] and slots.tolist() == [0, 1, 0] and classes.tolist() == [1, 2, 0]


def test_top_k_predicted_orders_by_score():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.9, 0.0, 0.5]])
    assert top_k_predicted(lambda x: scores, torch.zeros(2, 3, 4, 4), k=2).tolist() == [[1, 2], [0, 2]]


def test_normalize_minmax_and_constant_maps():
    maps = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = normalize_minmax(maps, eps=0.0 + 1e-12)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert out[0, 1].abs().max() == 0  # constant -> 0
    assert normalize_minmax(torch.full((1, 1, 2, 2), math.nan)).isnan().all()


def test_normalize_max_and_sum():
    maps = torch.tensor([[[[-2.0, 1.0], [0.5, 0.0]]]])
    torch.testing.assert_close(normalize_max(maps), torch.tensor([[[[-1.0, 0.5], [0.25, 0.0]]]]))
    torch.testing.assert_close(normalize_sum(maps), torch.tensor([[[[0.0, 2 / 3], [1 / 3, 0.0]]]]))


def test_merge_max_ignores_padded_maps():
    maps = torch.tensor([[[[0.1, 0.9]], [[0.5, 0.2]], [[math.nan, math.nan]]],
                         [[[math.nan, math.nan]], [[math.nan, math.nan]], [[math.nan, math.nan]]]])
    merged = merge_max(maps)
    assert merged.shape == (2, 1, 1, 2)
    torch.testing.assert_close(merged[0, 0], torch.tensor([[0.5, 0.9]]))
    assert merged[1].isnan().all()
    with pytest.raises(ValueError, match=r"\(B,K,H,W\)"):
        merge_max(torch.zeros(2, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_images_with_nan_or_inf_are_refused(bad):
    from saliencylab.models.classifier import check_images

    images = torch.rand(2, 3, 8, 8)
    images[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="finite values in \\[0,1\\]"):
        check_images(images)
