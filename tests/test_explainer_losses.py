"""Explainer losses (spec 000 §2, §4, §5) against hand-computed numbers."""
import math

import pytest
import torch
import torch.nn.functional as F

from saliencylab.perturb import blur_zero_padded
from saliencylab.training.losses import (LossWeights, aggregate_masks, alternative_image, class_area_loss,
                                         entropy_loss, explainer_loss, fcnn_loss, rt_saliency_loss, total_variation)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_aggregation_is_max_then_sigmoid_and_empty_rows_give_zero_masks():
    seg = torch.tensor([[[[0.0, 2.0]], [[3.0, -1.0]], [[1.0, -4.0]]],
                        [[[0.5, 0.5]], [[0.1, 0.2]], [[-1.0, 7.0]]],
                        [[[0.5, 0.5]], [[0.1, 0.2]], [[-1.0, 7.0]]]], requires_grad=True)  # (3,3,1,2)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    m, n = aggregate_masks(seg, labels)
    assert m.shape == n.shape == (3, 1, 1, 2)
    torch.testing.assert_close(m[0, 0, 0], torch.sigmoid(torch.tensor([1.0, 2.0])))  # max(S0, S2), then sigmoid
    torch.testing.assert_close(m[0], seg.sigmoid()[0, [0, 2]].amax(0, keepdim=True))  # = max of the sigmoids
    torch.testing.assert_close(n[0, 0, 0], torch.sigmoid(torch.tensor([3.0, -1.0])))
    assert m[1].eq(0).all() and n[2].eq(0).all()  # no label -> no target mask; all labels -> no non-target mask
    torch.testing.assert_close(n[1], seg.sigmoid()[1].amax(0, keepdim=True))
    (m.sum() + n.sum()).backward()
    assert torch.isfinite(seg.grad).all()
    assert seg.grad[1].ne(0).sum() == 2  # row without labels: only the non-target max gets a gradient


def test_entropy_loss_is_mean_p_log_p_and_is_lowest_for_uniform():
    uniform = torch.zeros(4, 5)
    assert entropy_loss(uniform).item() == pytest.approx(-math.log(5) / 5)
    peaked = torch.tensor([[100.0, 0.0, 0.0, 0.0, 0.0]])
    assert entropy_loss(peaked).item() == pytest.approx(0.0, abs=1e-12)  # clamp(1e-16) keeps log finite
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    p = logits.softmax(-1)
    assert entropy_loss(logits).item() == pytest.approx(float((p * p.log()).sum() / 3))
    assert entropy_loss(uniform) < entropy_loss(logits) < entropy_loss(peaked)


def test_total_variation_of_steps_with_reflect_padding():
    inner = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(1, 1, 4, 4)  # step between columns 1 and 2
    assert total_variation(inner).item() == pytest.approx(4 / 16)
    edge = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(1, 1, 4, 4)  # step at the border: reflect repeats it
    assert total_variation(edge).item() == pytest.approx(8 / 16)
    assert total_variation(edge.transpose(2, 3)).item() == pytest.approx(8 / 16)  # rows likewise
    half = torch.cat([0.5 * edge, torch.zeros(1, 1, 4, 4)])  # batch of 2: mean over B·H·W
    assert total_variation(half).item() == pytest.approx(2 * 0.5 * 4 / 32)
    assert total_variation(half, squared=True).item() == pytest.approx(2 * 0.25 * 4 / 32)
    assert total_variation(torch.full((2, 1, 5, 3), 0.7)).item() == 0.0


def test_class_area_hinge_on_sorted_values():
    values = torch.tensor([0.75] * 2 + [0.5] * 4 + [0.1] * 14)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    seg = torch.zeros(2, 3, 4, 5)
    seg[0, 0] = values.logit().view(4, 5)  # ranks 0-1: 0.75 (hinge 0.25 each); 2-5: free; 6-19: 0.1 each
    seg[0, 2] = 9.0  # not a label class: ignored
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # N=20, min_area 0.1 -> top 2 pushed to 1, max_area 0.3 -> beyond top 6 pushed to 0
    first = (2 * 0.25 + 14 * 0.1) / 20  # class 0
    second = (2 * 0.5 + 14 * 0.5) / 20  # class 1: sigmoid(0) = 0.5 everywhere
    expected = (first + second + 0.0) / 2  # sum over label classes, mean over the batch
    assert class_area_loss(seg, labels, 0.1, 0.3).item() == pytest.approx(expected, abs=1e-6)


def test_class_area_at_224_uses_the_original_counts():
    seg = torch.zeros(1, 1, 224, 224)  # all 0.5: top 2508 miss 0.5, the 50176-15052 beyond the top 15052 exceed by 0.5
    expected = (2508 * 0.5 + (50176 - 15052) * 0.5) / 50176
    assert class_area_loss(seg, torch.ones(1, 1)).item() == pytest.approx(expected, rel=1e-6)


def test_explainer_loss_weights_its_terms():
    torch.manual_seed(0)
    seg = torch.randn(2, 3, 6, 6)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    m, n = aggregate_masks(seg, labels)
    logits_in, logits_out = torch.randn(2, 3), torch.randn(2, 3)
    weights = {"entropy_weight": 2.0, "tv_weight": 0.5, "class_area_weight": 3.0, "mask_area_weight": 0.25,
               "non_target_area_weight": 0.75}
    total, terms = explainer_loss(logits_in, logits_out, labels, m, n, seg, weights)
    assert terms["classification"].item() == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits_in, labels)))
    assert terms["entropy"].item() == pytest.approx(float(entropy_loss(logits_out)))
    assert terms["tv"].item() == pytest.approx(float(total_variation(m) + total_variation(n)))
    assert terms["class_area"].item() == pytest.approx(float(class_area_loss(seg, labels)))
    assert terms["mask_area"].item() == pytest.approx(float(m.mean()))
    expected = (terms["classification"] + 2 * terms["entropy"] + 0.5 * terms["tv"] + 3 * terms["class_area"]
                + 0.25 * terms["mask_area"] + 0.75 * terms["non_target_area"])
    assert total.item() == pytest.approx(expected.item())
    default_total, _ = explainer_loss(logits_in, logits_out, labels, m, n, seg)
    d = LossWeights()
    assert (d.entropy_weight, d.tv_weight, d.class_area_weight, d.mask_area_weight, d.non_target_area_weight,
            d.min_area, d.max_area) == (1.0, 1.0, 1.0, 0.1, 0.3, 0.05, 0.3)
    assert default_total.item() == pytest.approx(float(
        terms["classification"] + terms["entropy"] + terms["tv"] + terms["class_area"] + 0.1 * terms["mask_area"]
        + 0.3 * terms["non_target_area"]))
    with pytest.raises(ValueError, match="unknown loss weight"):
        explainer_loss(logits_in, logits_out, labels, m, n, seg, {"entropy": 1.0})


def test_fcnn_loss_terms():
    seg = torch.zeros(1, 2, 4, 4)
    labels = torch.tensor([[1.0, 0.0]])
    total, terms = fcnn_loss(seg, seg.clone(), labels)
    assert terms["logit_consistency"].item() == 0 and terms["coherency"].item() == 0 and terms["tv"].item() == 0
    assert terms["classification"].item() == pytest.approx(2 * math.log(2))  # two BCEs at logit 0
    assert terms["mask_area"].item() == pytest.approx(1.0)  # 0.5 + 0.5
    student = seg.clone()
    student[0, 0] = 1.0
    _, terms = fcnn_loss(seg, student, labels)
    assert terms["logit_consistency"].item() == pytest.approx(0.5)  # |0 - 1| on class 0, 0 on class 1
    assert terms["coherency"].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item() - 0.5)


def test_rt_saliency_terms_and_positive_normalization():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # N_pos = 2
    preserved = torch.tensor([[0.0, 5.0], [3.0, 0.0]])  # positives at logit 0: -log σ(0) = log 2 each
    destroyed = torch.tensor([[0.0, 9.0], [9.0, 0.0]])  # positives at σ = 0.5
    m = torch.full((2, 1, 4, 4), 0.25)
    total, terms = rt_saliency_loss(preserved, destroyed, labels, m)
    assert terms["preserver"].item() == pytest.approx(math.log(2))
    assert terms["destroyer"].item() == pytest.approx(0.5)
    assert terms["tv"].item() == 0 and terms["area"].item() == pytest.approx(0.25)
    assert total.item() == pytest.approx(0.25 + math.log(2) + 5 * 0.5 ** 0.3)
    step = torch.zeros(1, 1, 4, 4)
    step[..., 3] = 0.5
    _, terms = rt_saliency_loss(preserved[:1], destroyed[:1], labels[:1], step, area_weight=1e-3)
    assert terms["tv"].item() == pytest.approx(2 * 0.25 * 4 / 16)  # squared TV, reflect padded
    m = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    total, terms = rt_saliency_loss(preserved[:1], destroyed[:1], torch.zeros(1, 2), m)  # no positive label
    total.backward()
    assert terms["preserver"].item() == 0 and terms["destroyer"].item() == 0 and torch.isfinite(m.grad).all()


def test_blur_is_a_normalized_separable_gaussian_with_zero_padding():
    ones = torch.ones(1, 2, 97, 97)
    blurred = alternative_image(ones, None, "blur")
    assert blurred[0, :, 48, 48].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # > 40 px from every border
    assert blurred[0, 0, 0, 0].item() < 0.3  # zero padding darkens the corners
    impulse = torch.zeros(1, 1, 97, 97)
    impulse[0, 0, 48, 48] = 1.0
    response = blur_zero_padded(impulse, 10.0)[0, 0]
    assert (response[48, 58] / response[48, 48]).item() == pytest.approx(math.exp(-0.5), rel=1e-4)
    assert (response[38, 58] / response[48, 48]).item() == pytest.approx(math.exp(-1.0), rel=1e-4)
    assert response[48, 48 + 41].item() == 0.0  # half-width ceil(4σ) = 40
    assert response.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_color_noise_std_and_the_original_mean_bug():
    images = torch.zeros(64, 3, 32, 32)
    noise = alternative_image(images, torch.Generator().manual_seed(0), "color")
    offsets = noise.mean(dim=(2, 3))
    assert offsets.abs().max() < 0.33 + 0.02 and offsets.std() > 0.1  # U(-0.33, 0.33) per image and channel
    assert (noise - offsets[..., None, None]).std().item() == pytest.approx(0.11, rel=0.03)
    buggy = alternative_image(images, torch.Generator().manual_seed(0), "color", color_noise_mean_bug=True)
    assert (buggy - buggy.mean(dim=(2, 3), keepdim=True)).std().item() == pytest.approx(1.0, rel=0.03)
    assert (buggy - noise).mean().item() == pytest.approx(0.11, abs=0.02)  # mean 0.11 instead of std 0.11
    again = alternative_image(images, torch.Generator().manual_seed(0), "color")
    assert torch.equal(noise, again)
    picked = {alternative_image(images[:1], torch.Generator().manual_seed(s), "random").abs().sum().item() == 0
              for s in range(8)}
    assert picked == {True, False}  # "random" picks blur (zero image stays zero) or colour
    with pytest.raises(ValueError, match="mode"):
        alternative_image(images, None, "noise")
