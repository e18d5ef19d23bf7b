"""Deliberative explanations (paper 003): difficulty scores, attributions, insecurity maps, ground truth and
evaluation, on hand-built inputs with known answers."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from saliencylab import Classifier
from saliencylab.insecurity.attribution import (ATTRIBUTIONS, class_attributions, confidence_score,
                                                difficulty_attribution, entropy_score, explain_insecurities,
                                                hardness_logit, hardness_probability, integrated_layer_gradients,
                                                layer_gradients)
from saliencylab.insecurity.evaluate import (hardest, object_curve, object_iou, part_curve, part_precision_recall,
                                             at_keypoints,
                                             precision_at_recall)
from saliencylab.data.cub import CUB_PART_GROUPS
from saliencylab.insecurity.ground_truth import (common_objects, common_parts, endres_schindelin,
                                                 object_fractions)
from saliencylab.insecurity.maps import (NO_CLASS, atom_mask, candidate_pairs, insecurities, insecurity_map,
                                         location_top_classes, top_fraction)


# ---------------------------------------------------------------- difficulty scores

def test_confidence_and_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])
    torch.testing.assert_close(confidence_score(logits), torch.tensor([0.25, 0.5]))
    expected = torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)])
    torch.testing.assert_close(entropy_score(logits), expected)


def test_hardness_scores_read_the_single_output():
    outputs = torch.tensor([[0.0], [math.log(3.0)]])
    torch.testing.assert_close(hardness_logit(outputs), torch.tensor([0.0, math.log(3.0)]))
    torch.testing.assert_close(hardness_probability(outputs), torch.tensor([0.5, 0.75]))


# ---------------------------------------------------------------- attributions

class LinearHead(nn.Module):
    """features = a fixed 1x1 conv (3 -> 2 channels) on a 2x2 grid (stride 2), GAP, linear head W (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, stride=2, bias=False)
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(2, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class SquareHead(nn.Module):
    """features = the same 1x1 conv; output = Σ_hw (v · A_hw)², so each location's Hessian block is 2 v vᵀ."""

    def __init__(self) -> None:
        super().__init__()
        self.features = LinearHead().features
        self.v = torch.tensor([1.0, -2.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.features(x) * self.v.view(1, 2, 1, 1)).sum(1) ** 2).flatten(1).sum(1, keepdim=True)


def _classifier(model: nn.Module) -> Classifier:
    return Classifier(model, (0, 0, 0), (1, 1, 1), layers={"features": "features"})


def _activation(images: torch.Tensor) -> torch.Tensor:
    rgb = images[:, :, ::2, ::2]
    return torch.stack([rgb[:, 0], rgb[:, 1] + rgb[:, 2]], 1)


def test_class_attribution_is_activation_times_gradient_with_negatives_at_1e7():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 4, 4)
    maps = class_attributions(_classifier(LinearHead()), images, torch.tensor([[0, 1, 2], [2, 1, 0]]), "features")
    a = _activation(images)
    weights = torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, 0.5]]) / 4  # GAP over 2x2: dlogit/dA = W / 4
    expected = torch.einsum("nkhw,ck->nchw", a, weights)
    expected = torch.stack([expected[0, [0, 1, 2]], expected[1, [2, 1, 0]]])
    expected = torch.where(expected < 0, torch.tensor(1e-7), expected)
    torch.testing.assert_close(maps, expected)
    assert (maps == 1e-7).any() and (maps > 1e-7).any()


def test_difficulty_gradient_integrated_and_second_order_by_hand():
    torch.manual_seed(1)
    images = torch.rand(2, 3, 4, 4)
    a = _activation(images)
    v = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    va = (a * v).sum(1)  # (N,2,2)
    grad = 2 * va.unsqueeze(1) * v  # ds/dA at each location
    network, score = _classifier(SquareHead()), hardness_logit
    gradient = difficulty_attribution(network, images, "features", score, "gradient")
    torch.testing.assert_close(gradient, (a * grad.clamp_min(0)).sum(1))
    second = difficulty_attribution(network, images, "features", score, "second_order", location_batch=3)
    torch.testing.assert_close(second, gradient + 0.5 * (2 * va ** 2))  # A_hwᵀ (2 v vᵀ) A_hw = 2 (v·A_hw)²
    # linear in A: along the path A(α) = αA, ds/dA = 2α(v·A)v; the mean over α = i/50 is (v·A)v
    integrated = difficulty_attribution(network, images, "features", score, "integrated_gradients")
    torch.testing.assert_close(integrated, (a * (va.unsqueeze(1) * v).clamp_min(0)).sum(1).clamp_min(0))


def test_second_order_needs_the_sigmoid_above_a_piecewise_linear_head():
    torch.manual_seed(4)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2), nn.ReLU())
    model.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 1))
    network, images = _classifier(model), torch.rand(2, 3, 4, 4)
    gradient = difficulty_attribution(network, images, "features", hardness_logit, "gradient")
    second = difficulty_attribution(network, images, "features", hardness_logit, "second_order")
    torch.testing.assert_close(second, gradient)  # the logit is piecewise linear in A: zero Hessian
    # s = σ(z): H_hw = σ''(z) ∇z_hw ∇z_hwᵀ, so 2ndG adds ½|σ''(z)| (∇z_hw · A_hw)²
    with torch.no_grad():
        activation = model.features(images)
    a = activation.clone().requires_grad_(True)
    z = model.head(a)[:, 0]
    (dz,) = torch.autograd.grad(z.sum(), a)
    sigma = z.detach().sigmoid()
    curvature = (sigma * (1 - sigma) * (1 - 2 * sigma)).view(-1, 1, 1)
    first = (activation * ((sigma * (1 - sigma)).view(-1, 1, 1, 1) * dz).clamp_min(0)).sum(1)
    expected = first + 0.5 * (curvature * (dz * activation).sum(1) ** 2).abs()
    torch.testing.assert_close(difficulty_attribution(network, images, "features", hardness_probability,
                                                      "second_order"), expected)


def test_integrated_class_maps_of_a_linear_head_equal_the_gradient_maps():
    torch.manual_seed(2)
    images = torch.rand(1, 3, 4, 4)
    classifier, classes = _classifier(LinearHead()), torch.tensor([[1, 0, 2]])
    torch.testing.assert_close(class_attributions(classifier, images, classes, "features", integrated=True),
                               class_attributions(classifier, images, classes, "features"))


# ---------------------------------------------------------------- insecurity maps on a hand-built 3x3 stack

# five class maps on a 3x3 grid; the top-3 slots per location are spelled out in TOP below
STACK = torch.tensor([
    [[9, 9, 1], [1, 1, 1], [9, 1, 1]],
    [[8, 1, 8], [8, 1, 1], [1, 9, 1]],
    [[7, 8, 9], [1, 9, 1], [1, 1, 9]],
    [[1, 7, 7], [9, 8, 1], [8, 8, 8]],
    [[1, 1, 1], [7, 7, 9], [7, 7, 7]],
], dtype=torch.float32) / 10 + torch.arange(5).view(5, 1, 1) * 1e-3  # break ties towards higher slots
DIFFICULTY = torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.5, 1.0, 2.0]])
TOP = torch.tensor([
    [[0, 0, NO_CLASS], [1, 2, 2], [0, 1, 2]],
    [[1, 2, NO_CLASS], [3, 3, 3], [3, 3, 3]],
    [[2, 3, NO_CLASS], [4, 4, 4], [4, 4, 4]],
])


def test_top_classes_per_location_sorted_with_a_separate_sentinel():
    torch.testing.assert_close(location_top_classes(STACK, DIFFICULTY), TOP)


def test_candidate_pairs_are_the_distinct_pairs_of_unmasked_locations():
    assert candidate_pairs(TOP) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    # with slot 0 as the mask (the review-time code), location (0,2) would add the pair (0,0) and (0,·) pairs
    assert all(NO_CLASS not in pair for pair in candidate_pairs(TOP))


def test_atom_mask_and_insecurity_map():
    expected = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(atom_mask(TOP, 0, 2), expected)
    torch.testing.assert_close(insecurity_map(STACK, DIFFICULTY, TOP, 0, 2),
                               STACK[0] * STACK[2] * DIFFICULTY * expected)
    assert torch.equal(atom_mask(TOP, 3, 4), torch.tensor([[0, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool))


def test_insecurities_upsample_bilinearly_every_pair():
    maps = insecurities(STACK, DIFFICULTY, (6, 6))
    assert list(maps) == candidate_pairs(TOP)
    small = insecurity_map(STACK, DIFFICULTY, TOP, 3, 4)
    # a 2x upsample with half-pixel centres: the corner pixel equals the corner cell, (1,1) = ¾·¾ + ... blend
    assert maps[(3, 4)][5, 5] == pytest.approx(float(small[2, 2]))
    assert maps[(3, 4)][1, 1] == pytest.approx(float(0.5625 * small[0, 0] + 0.1875 * small[0, 1]
                                                     + 0.1875 * small[1, 0] + 0.0625 * small[1, 1]))


def test_top_fraction_keeps_the_pixels_strictly_above_the_cut():
    values = torch.arange(100, dtype=torch.float32).view(10, 10)
    kept = top_fraction(values, 0.1)  # cut at sorted[-10] = 90: 91..99 kept
    assert int(kept.sum()) == 9 and bool(kept.view(-1)[91:].all())
    assert int(top_fraction(torch.zeros(4, 4), 0.5).sum()) == 0
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(values, 1.0)


def test_explain_insecurities_on_a_tiny_model():
    torch.manual_seed(3)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
    model.pool = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6))
    classifier = _classifier(model)
    images = torch.rand(2, 3, 16, 16)
    classes, maps = explain_insecurities(classifier, images, "features", classifier, confidence_score, ATTRIBUTIONS)
    assert classes.shape == (2, 5) and list(maps) == list(ATTRIBUTIONS)
    for attribution, per_attribution in maps.items():
        assert len(per_attribution) == 2
        # one pass for all attributions gives what each gives alone (shared class maps and gradient)
        _, alone = explain_insecurities(classifier, images, "features", classifier, confidence_score, [attribution])
        for per_image, expected in zip(per_attribution, alone[attribution]):
            assert list(per_image) == list(expected)
            for (a, b), insecurity in per_image.items():
                assert 0 <= a < b < 5 and insecurity.shape == (16, 16) and bool((insecurity >= 0).all())
                torch.testing.assert_close(insecurity, expected[(a, b)])


def test_integrated_gradients_batched_over_points_equal_one_point_at_a_time():
    torch.manual_seed(5)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
    model.pool = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6))
    classifier, images = _classifier(model), torch.rand(3, 3, 16, 16)
    classes = torch.tensor([[0, 1, 2], [5, 4, 3], [1, 3, 5]])

    def scores(outputs):
        return outputs.softmax(1).gather(1, classes)

    one_by_one = integrated_layer_gradients(classifier, images, "features", scores, points=7, max_rows=3)
    batched = integrated_layer_gradients(classifier, images, "features", scores, points=7, max_rows=15)  # 5, then 2
    for got, expected in zip(batched, one_by_one):
        torch.testing.assert_close(got, expected)
    # and each point's gradient is the plain per-point gradient (the definition, point by point)
    steps = [layer_gradients(classifier, alpha * images, "features", scores) for alpha in torch.linspace(0, 1, 7)]
    torch.testing.assert_close(batched[1], torch.stack([g for _, g in steps]).mean(0))
    torch.testing.assert_close(batched[0], steps[-1][0] - steps[0][0])


# ---------------------------------------------------------------- ground truth

def test_endres_schindelin_by_hand():
    assert endres_schindelin(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(2 * math.log(2))
    assert endres_schindelin(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    p, q = np.array([0.75, 0.25]), np.array([0.25, 0.75])
    expected = 2 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert endres_schindelin(p, q) == pytest.approx(expected)


def test_common_parts_on_a_tiny_attribute_table():
    table = np.zeros((3, 312))
    table[2, 0] = 100.0  # class 2's bill shape differs: beak (part 1) is not common to (0,2) nor (1,2)
    table[1, 135] = 50.0  # class 1's eye colour differs: both eyes (parts 6 and 10)
    common = common_parts(table)
    expected = np.ones((3, 3, 15), dtype=bool)
    expected[[0, 2, 1, 2], [2, 0, 2, 1], 1] = False
    expected[[0, 1, 1, 2], [1, 0, 2, 1], 6] = False
    expected[[0, 1, 1, 2], [1, 0, 2, 1], 10] = False
    assert np.array_equal(common, expected)
    assert CUB_PART_GROUPS[6] == CUB_PART_GROUPS[10] == ((136, 149),)


def test_common_objects_by_cooccurrence():
    objects = [{1, 2}, {1}, {1, 3}, {2, 3}, {3}, {4}]
    labels = [0, 0, 0, 1, 1, 2]
    fractions = object_fractions(objects, labels, num_classes=3, num_objects=4)
    np.testing.assert_allclose(fractions, [[1, 1 / 3, 1 / 3, 0], [0, 0.5, 1, 0], [0, 0, 0, 1]])
    common = common_objects(fractions, percentile=90)
    # kept fractions (>= 0.3): class 0 {1: 1, 2: 1/3, 3: 1/3}, class 1 {2: .5, 3: 1}, class 2 {4: 1}; 48 values,
    # the 90th percentile lies among the diagonal's 1.0 entries and the off-diagonal (0,1) object 3: (1/3+1)/2
    similarity = np.zeros((3, 3, 4))
    kept = np.where(fractions < 0.3, 0, fractions)
    for a in range(3):
        for b in range(3):
            both = (kept[a] > 0) & (kept[b] > 0)
            similarity[a, b] = np.where(both, (kept[a] + kept[b]) / 2, 0)
    assert np.array_equal(common, (similarity >= np.percentile(similarity, 90)) & (similarity > 0))
    assert common[0, 0, 0] and common[2, 2, 3] and not common[0, 2].any()
    assert not common_objects(np.zeros((2, 3))).any()  # no positive similarity: nothing is common


# ---------------------------------------------------------------- evaluation

def test_part_precision_recall_by_hand():
    region = torch.zeros(5, 5, dtype=torch.bool)
    region[:2, :2] = True  # the top-left 2x2 block
    keypoints = torch.tensor([[0.0, 0.0], [1.2, 0.9], [4.0, 4.0], [0.6, 1.4], [3.0, 0.0]])
    visible = torch.tensor([True, True, True, False, True])
    common = torch.tensor([True, False, True, True, False])
    inside = at_keypoints(region, keypoints)
    assert inside.tolist() == [True, True, False, True, False]  # (1.2, 0.9) rounds to (1, 1)
    precision, recall = part_precision_recall(inside, visible, common)
    assert (precision, recall) == (0.5, 0.5)  # R holds parts 0 and 1 (3 is hidden); common visible: 0 and 2
    precision, recall = part_precision_recall(torch.zeros(5, dtype=torch.bool), visible, common)
    assert math.isnan(precision) and recall == 0.0
    assert math.isnan(part_precision_recall(inside, visible, torch.tensor([0, 0, 0, 1, 0]).bool())[1])


def test_object_iou_by_hand():
    objects = torch.tensor([[1, 1, 2], [0, 2, 2], [3, 3, 0]])
    region = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    assert object_iou(region, objects, [1, 2]) == pytest.approx(2 / 5)
    assert object_iou(region, objects, [3]) == 0.0
    assert math.isnan(object_iou(region, objects, [7]))


def test_curves_average_over_insecurities_then_images():
    # image 0: two insecurities on a 1x4 strip with 4 keypoints; image 1: one insecurity without common parts
    keypoints = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    visible = torch.ones(4, dtype=torch.bool)
    common = np.zeros((3, 3, 4), dtype=bool)
    common[0, 1, [0, 1]] = True
    common[0, 2, [3]] = True
    maps0 = {(0, 1): torch.tensor([[4.0, 3.0, 2.0, 1.0]]), (0, 2): torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    maps1 = {(1, 2): torch.tensor([[4.0, 3.0, 2.0, 1.0]])}
    slots = torch.tensor([0, 1, 2])
    curve = part_curve([maps0, maps1], [slots, slots], [keypoints] * 2, [visible] * 2, common, fractions=[0.5, 0.75])
    # ρ = .5: keep 1 pixel (cut at the 2nd largest): (0,1) keeps x=0 -> P 1, R .5; (0,2) keeps x=3 -> P 1, R 1
    # ρ = .75: keep 2 pixels: (0,1) x=0,1 -> P 1, R 1; (0,2) x=2,3 -> P .5, R 1
    assert curve["precision"] == [1.0, 0.75] and curve["recall"] == [0.75, 1.0]
    assert precision_at_recall(curve, [0.75, 0.875, 1.0, 0.5]) == pytest.approx([1.0, 0.875, 0.75, math.nan],
                                                                                   nan_ok=True)
    objects = torch.tensor([[1, 1, 2, 2]])
    common_objects_table = np.zeros((3, 3, 2), dtype=bool)
    common_objects_table[0, 1, 0] = True  # object 1 common to classes 0 and 1
    iou = object_curve([maps0, maps1], [slots, slots], [objects, objects], common_objects_table, fractions=[0.5])
    assert iou["iou"] == [0.5]  # image 0's (0,1) keeps x=0: IoU 1/2; the others have no common object


def test_hardest_sorts_descending():
    assert hardest(torch.tensor([0.1, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 2]
