"""Known answers for saliencylab.metrics.wsol (spec 001 §4.2-§4.5) on hand-built masks and boxes.

Boxes are half-open x1,y1,x2,y2: pixel (x,y) is inside when x1 <= x < x2 and y1 <= y < y2.
"""
import math

import pytest
import torch
from torch import nn

from saliencylab.metrics import wsol
from saliencylab.models.classifier import Classifier

NAN = math.nan


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype).reshape(actual.shape)
    torch.testing.assert_close(actual, expected, equal_nan=True, atol=atol, rtol=1e-6)


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def soft_f1(inter: float, mass: float, area: float) -> float:
    """The spec's soft F1 with its 1e-6 terms, from hand-computed sums."""
    p, r = inter / (mass + 1e-6), inter / area
    return 2 * p * r / (p + r + 1e-6)


# ---------------------------------------------------------------- binarisation, components, boxes

def test_binarize_at_mean_is_strict_and_per_image():
    # image 0: sum = (0+.2+.4+.6) + (.1+.3+.5+.7) + 1.0 = 3.8, mean 3.8/16 = 0.2375
    # -> 0.4, 0.6, 0.3, 0.5, 0.7 and 1.0 are above it.
    first = torch.tensor([[0.0, 0.2, 0.4, 0.6],
                          [0.1, 0.3, 0.5, 0.7],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 1.0]])
    # image 1: 2x2 blocks of 0, .5, .5, 1 -> mean exactly 0.5; the 0.5 blocks are not strictly above.
    second = torch.tensor([[0.0, 0.5], [0.5, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    expected = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]],
                             [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]], dtype=torch.bool)
    masks = torch.stack([first, second])
    assert torch.equal(wsol.binarize_at_mean(masks), expected)
    assert torch.equal(wsol.binarize_at_mean(masks[:, None]), expected)  # (B,1,H,W) too
    # a constant mask is empty (its float32 mean must not fall a rounding step below the values)
    assert not wsol.binarize_at_mean(torch.full((1, 7, 9), 0.3)).any()


def three_blobs() -> torch.Tensor:
    """8x8: A (rows 0-1, cols 0-1, 4 px) touches B (rows 2-3, cols 2-4, 6 px) only diagonally at
    (1,1)-(2,2); C (col 7, rows 3-7, 5 px). 4-connected: A, B, C separate, largest B. With
    8-connectivity A∪B (10 px) would win with box (0,0,5,4)."""
    binary = torch.zeros(1, 8, 8, dtype=torch.bool)
    binary[0, 0:2, 0:2] = True
    binary[0, 2:4, 2:5] = True
    binary[0, 3:8, 7] = True
    return binary


def test_largest_component_is_4_connected():
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, 2:4, 2:5] = True
    assert torch.equal(wsol.largest_component(three_blobs()), expected)


def test_largest_component_tie_takes_first_in_row_major_order_and_empty_stays_empty():
    binary = torch.zeros(2, 8, 8, dtype=torch.bool)
    binary[0, 5, 0:2] = True  # 2 px, first met at row 5
    binary[0, 1, 6:8] = True  # 2 px, first met at row 1 -> kept
    out = wsol.largest_component(binary)
    assert out[0].sum() == 2 and out[0, 1, 6:8].all()
    assert not out[1].any()


def test_mask_to_box_tight_and_one_pixel_smaller():
    binary = torch.zeros(4, 8, 8, dtype=torch.bool)
    binary[0] = three_blobs()[0]  # B: cols 2..4, rows 2..3
    binary[1, 3, 5] = True        # a single pixel at x=5, y=3
    binary[2] = True              # the whole image
    # binary[3] empty
    tight = boxes([2, 2, 5, 4], [5, 3, 6, 4], [0, 0, 8, 8], [0, 0, 0, 0])
    # the released code's box ends at the last pixel index: 1 px smaller per dimension,
    # zero area for the single pixel; the empty mask still gives the zero box
    quirk = boxes([2, 2, 4, 3], [5, 3, 5, 3], [0, 0, 7, 7], [0, 0, 0, 0])
    assert torch.equal(wsol.mask_to_box(binary), tight)
    assert torch.equal(wsol.mask_to_box(binary, one_pixel_smaller=True), quirk)
    assert torch.equal(wsol.mask_to_box(binary[:, None]), tight)


def test_predicted_boxes_chain_mean_threshold_component_box():
    masks = torch.zeros(1, 8, 8)
    masks[three_blobs()] = 0.8
    masks[0, 2:4, 2:5] = 0.9  # blob B; all blobs are above the mean 15·~0.8/64
    close(wsol.predicted_boxes(masks), [[2, 2, 5, 4]])
    close(wsol.predicted_boxes(masks, one_pixel_smaller=True), [[2, 2, 4, 3]])
    close(wsol.predicted_boxes(torch.full((1, 8, 8), 0.4)), [[0, 0, 0, 0]])  # constant -> empty


def test_box_to_mask_and_inclusive_conversion():
    rect = wsol.box_to_mask(boxes([1, 2, 3, 5], [0, 0, 0, 0]), (6, 4))
    assert rect[0].sum() == 2 * 3 and rect[0, 2:5, 1:3].all() and not rect[1].any()
    close(wsol.inclusive_to_half_open(boxes([1, 2, 3, 5])), [[1, 2, 4, 6]])


# ---------------------------------------------------------------- IoU, LE, OM

SIZE = (10, 10)
PRED = [2, 2, 6, 6]                      # 4x4 = 16 px
GT1 = torch.tensor([[3., 3., 7., 7.]])   # area 16, overlap 3x3 = 9 -> IoU 9/(16+16-9) = 9/23 = 0.391
GT2 = torch.tensor([[2., 2., 6., 7.]])   # area 20, overlap 16 -> IoU 16/(16+20-16) = 0.8
ZERO = torch.tensor([[4., 4., 4., 8.]])  # zero area -> IoU 0, F1 0
GT3 = torch.tensor([[-2., 2., 6., 6.]])  # unclipped area 32, clipped (0,2,6,6) area 24, overlap 16
NONE = torch.zeros(0, 4)


def test_box_iou_and_localization_error_with_one_and_two_boxes():
    pred = boxes(PRED, PRED, PRED)
    gt = [GT1, torch.cat([GT1, GT2]), NONE]
    close(wsol.box_iou(pred, gt, SIZE), [[9 / 23, NAN], [9 / 23, 0.8], [NAN, NAN]])
    # LE = 1 - max_b 1[IoU_b > 0.5]: GT1 alone misses, GT2 hits; no gt box -> undefined
    close(wsol.localization_error(pred, gt, SIZE), [1.0, 0.0, NAN])
    # OM also needs the classifier to be right
    close(wsol.official_localization_error(pred, gt, torch.tensor([True, True, True]), SIZE), [1.0, 0.0, NAN])
    close(wsol.official_localization_error(pred, gt, torch.tensor([True, False, True]), SIZE), [1.0, 1.0, NAN])


def test_zero_area_gt_box_scores_zero():
    pred = boxes(PRED, [0, 0, 0, 0], PRED)
    gt = [ZERO, ZERO, torch.cat([GT2, ZERO])]
    close(wsol.box_iou(pred, gt, SIZE), [[0.0, NAN], [0.0, NAN], [0.8, 0.0]])  # empty vs zero box: 0, not NaN
    close(wsol.localization_error(pred, gt, SIZE), [1.0, 1.0, 0.0])


def test_clipped_versus_unclipped_gt_area():
    pred = boxes(PRED, PRED)
    outside = torch.tensor([[12., 0., 15., 4.]])  # unclipped area 12, nothing inside the image
    gt = [GT3, outside]
    # clipped (default): 16/(16+24-16) = 2/3 -> hit; unclipped: 16/(16+32-16) = 0.5, not > 0.5 -> miss
    close(wsol.box_iou(pred, gt, SIZE), [[2 / 3], [0.0]])
    close(wsol.box_iou(pred, gt, SIZE, unclipped_area=True), [[0.5], [0.0]])
    close(wsol.localization_error(pred, gt, SIZE), [0.0, 1.0])
    close(wsol.localization_error(pred, gt, SIZE, unclipped_area=True), [1.0, 1.0])


# ---------------------------------------------------------------- soft F1

def f1_mask() -> torch.Tensor:
    """10x10: 0.5 on the 16 px of PRED, 1.0 at (y=8,x=8); Σm = 8 + 1 = 9."""
    m = torch.zeros(10, 10)
    m[2:6, 2:6] = 0.5
    m[8, 8] = 1.0
    return m


def test_soft_f1_and_average_with_one_and_two_boxes_and_a_zero_area_box():
    masks = f1_mask().expand(5, 10, 10)
    gt = [GT1, torch.cat([GT1, GT2]), NONE, ZERO, torch.cat([GT2, ZERO])]
    # GT1: Σ(m·G) = 9 px of 0.5 = 4.5, area 16: P = 0.5, R = 0.28125, F1 = 0.28125/0.78125 = 0.36
    f1_gt1 = soft_f1(4.5, 9, 16)
    # GT2: Σ(m·G) = 8 (all of PRED), area 20: P = 8/9, R = 0.4, F1 = (32/45)/(58/45) = 0.5517
    f1_gt2 = soft_f1(8, 9, 20)
    assert abs(f1_gt1 - 0.36) < 1e-5 and abs(f1_gt2 - 32 / 58) < 1e-5
    close(wsol.soft_f1(masks, gt), [f1_gt1, f1_gt2, NAN, 0.0, f1_gt2])
    close(wsol.soft_f1_average(masks, gt), [f1_gt1, (f1_gt1 + f1_gt2) / 2, NAN, 0.0, f1_gt2 / 2])
    close(wsol.soft_f1(masks[:, None], gt), [f1_gt1, f1_gt2, NAN, 0.0, f1_gt2])


def test_soft_f1_clipped_versus_unclipped_and_empty_mask():
    masks = torch.stack([f1_mask(), torch.zeros(10, 10)])
    gt = [GT3, GT2]
    # GT3 holds all of PRED (8): clipped area 24: R = 1/3, F1 = 16/33; unclipped 32: R = 1/4, F1 = 16/41
    # an all-zero mask: P = R = 0, F1 = 0 (defined)
    close(wsol.soft_f1(masks, gt), [soft_f1(8, 9, 24), 0.0])
    close(wsol.soft_f1(masks, gt, unclipped_area=True), [soft_f1(8, 9, 32), 0.0])
    assert abs(soft_f1(8, 9, 24) - 16 / 33) < 1e-5 and abs(soft_f1(8, 9, 32) - 16 / 41) < 1e-5


def test_ground_truth_baseline_scores_each_box_against_itself():
    part = torch.tensor([[-6., 2., 4., 6.]])  # clipped (0,2,4,6) area 16, unclipped area 40
    gt = [GT2, GT3, part, ZERO, NONE, torch.cat([GT2, part])]
    out = wsol.ground_truth_localization(gt, SIZE)
    close(out["iou"][:, 0], [1.0, 1.0, 1.0, 0.0, NAN, 1.0])
    close(out["localization_error"], [0.0, 0.0, 0.0, 1.0, NAN, 0.0])
    close(out["soft_f1"], [1.0, 1.0, 1.0, 0.0, NAN, 1.0], atol=1e-5)  # P = a/(a+1e-6), R = 1
    # unclipped: IoU = R = inside / area: GT3 24/32 = 0.75, part 16/40 = 0.4 (miss);
    # F1 = 2R/(1+R): 1.5/1.75 = 0.857, 0.8/1.4 = 0.571
    out = wsol.ground_truth_localization(gt, SIZE, unclipped_area=True)
    close(out["iou"][:, 0], [1.0, 0.75, 0.4, 0.0, NAN, 1.0])
    close(out["localization_error"], [0.0, 0.0, 1.0, 1.0, NAN, 0.0])
    close(out["soft_f1"], [1.0, 1.5 / 1.75, 0.8 / 1.4, 0.0, NAN, 1.0], atol=1e-5)
    close(out["soft_f1_average"], [1.0, 1.5 / 1.75, 0.8 / 1.4, 0.0, NAN, (1 + 0.8 / 1.4) / 2], atol=1e-5)


# ---------------------------------------------------------------- saliency metric

class ChannelMeans(nn.Module):
    """Logits (B,3) = the mean of each normalised channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def tiny_classifier() -> Classifier:
    return Classifier(ChannelMeans(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # normalised = 2x - 1


def red_square_images(batch: int) -> torch.Tensor:
    """Gray 0.5 (normalised 0) with a pure red square (normalised (1,-1,-1)) on rows/cols 2..5."""
    images = torch.full((batch, 3, 10, 10), 0.5)
    images[:, :, 2:6, 2:6] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return images


def test_saliency_metric_known_log_probabilities():
    images = red_square_images(4)
    pred = boxes(PRED, [0, 0, 0, 0], [0, 0, 10, 10], [2, 2, 4, 4])
    out = wsol.saliency_metric_wsol(tiny_classifier(), images, pred, torch.tensor([0, 1, 0, 0]))
    # 0: the crop is pure red -> logits (1,-1,-1): log p0 = 1 - log(e + 2/e) = -0.239545;
    #    area 16/100 -> SM1 = log 0.16 = -1.832581; SM = -1.593037
    # 1: empty box -> the mean colour, logits 0: log p1 = -log 3 = -1.098612;
    #    area 0 clamped to 0.05 -> SM1 = -2.995732; SM = -1.897120; top-1 is class 0 (tie) -> wrong
    # 2: the whole image, resized to its own size (identity): logits (.16,-.16,-.16),
    #    log p0 = .16 - log(e^.16 + 2e^-.16) = -0.897026; SM1 = log 1 = 0
    # 3: 2x2 red crop, area 0.04 clamped to 0.05
    red, mean, whole = -0.23954476622188436, -math.log(3), -0.8970255743673398
    close(out["sm2"], [red, mean, whole, red])
    close(out["sm1"], [math.log(0.16), math.log(0.05), 0.0, math.log(0.05)])
    close(out["sm"], [math.log(0.16) - red, math.log(0.05) - mean, -whole, math.log(0.05) - red])
    close(out["sm_correct"], [1.0, 0.0, 1.0, 1.0])


def test_saliency_metric_resizes_to_the_input_size_and_takes_any_callable():
    images = red_square_images(2)
    pred = boxes(PRED, [0, 0, 0, 0])
    labels = torch.tensor([0, 1])
    reference = wsol.saliency_metric_wsol(tiny_classifier(), images, pred, labels)
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return tiny_classifier()(x)

    out = wsol.saliency_metric_wsol(model, images, pred, labels, input_size=(4, 6), fill=(0.5, 0.5, 0.5))
    assert calls == [(2, 3, 4, 6)]
    for key in ("sm", "sm1", "sm2", "sm_correct"):
        close(out[key], reference[key])  # constant crops: the resize does not change them
    with pytest.raises(TypeError, match="fill"):
        wsol.saliency_metric_wsol(model, images, pred, labels)


def test_saliency_metric_crop_is_resized_bicubically():
    # The crop PRED of this image has columns (0,0,1,1) in every channel; resized from 4 to 8 columns,
    # output column j samples source x = (j+.5)/2 - .5 with the cubic kernel a = -0.75:
    # at t = .25 the weights of x-1, x, x+1, x+2 are -0.10546875, 0.87890625, 0.26171875, -0.03515625
    # (borders replicated). Column 1 (x = .25): -0.03515625·1 = -0.03515625 (bicubic overshoot);
    # column 3 (x = 1.25): 0.26171875 - 0.03515625 = 0.2265625; column 4 (x = 1.75): 0.7734375.
    images = torch.zeros(1, 3, 10, 10)
    images[:, :, :, 4:] = 1.0
    crops = []

    def model(x: torch.Tensor) -> torch.Tensor:
        crops.append(x)
        return torch.zeros(len(x), 2)

    out = wsol.saliency_metric_wsol(model, images, boxes(PRED), 0, input_size=(8, 8), fill=(0.5, 0.5, 0.5))
    close(crops[0][0, :, :, [1, 3, 4]], torch.tensor([-0.03515625, 0.2265625, 0.7734375]).expand(3, 8, 3))
    close(out["sm2"], [-math.log(2)])


# ---------------------------------------------------------------- mask statistics

def test_mask_statistics():
    masks = torch.stack([torch.tensor([[0.0, 0.5], [0.5, 1.0]]), torch.full((2, 2), 0.25)])
    # binarized: image 0 only the 1.0 pixel is above the mean 0.5; image 1 is constant
    close(wsol.binarized_fraction(masks), [0.25, 0.0])
    close(wsol.avg_mask(masks), [0.5, 0.25])
    # unbiased std of (0.5, 0.25) = 0.25/sqrt(2)
    close(wsol.std_mask(masks), 0.25 / math.sqrt(2))
    assert math.isnan(float(wsol.std_mask(masks[:1])))
    # entropy: image 0 two pixels of -0.5·log2 0.5 = 0.5 -> 1.0/4; image 1 -0.25·log2 0.25 = 0.5 per pixel
    close(wsol.mask_entropy(masks), [0.25, 0.5])
    close(wsol.mask_entropy(torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])), [0.0])
    # tv: image 0 Δx = (.5, .5), Δy = (.5, .5) -> 0.25 + 0.25; image 1 constant
    close(wsol.mask_tv(masks), [0.5, 0.0])


# ---------------------------------------------------------------- special baselines

def test_baselines_masks_and_boxes():
    masks, box = wsol.baseline("max", 2, (8, 8))
    assert masks.shape == (2, 8, 8) and masks.eq(1).all()
    close(box, [[0, 0, 8, 8], [0, 0, 8, 8]])
    masks, box = wsol.baseline("min", 1, (8, 8))
    assert not masks.any()
    close(box, [[0, 0, 0, 0]])
    masks, box = wsol.baseline("center", 1, (224, 224))
    close(box, [[33, 33, 191, 191]])
    assert masks.sum() == 158 * 158 and masks[0, 33, 33] == 1 and masks[0, 190, 190] == 1
    assert masks[0, 32, 100] == 0 and masks[0, 100, 191] == 0
    close(wsol.predicted_boxes(masks), box)  # the tight box of the centre mask is its box
    # 10x20: y 33·10/224 = 1.47 -> 1, 191·10/224 = 8.53 -> 9; x 33·20/224 = 2.95 -> 3, 191·20/224 = 17.05 -> 17
    close(wsol.baseline("center", 1, (10, 20))[1], [[3, 1, 17, 9]])
    with pytest.raises(ValueError, match="ground_truth_localization"):
        wsol.baseline("ground_truth", 1, (8, 8))


# ---------------------------------------------------------------- PxAP

# 2x4 scores; foreground = left half; the ignore region covers (0,3) (a negative, excluded) and
# (1,0) (foreground, so still a positive).
SCORES = torch.tensor([[[1.0, 0.75, 0.75, 1.0],
                        [0.25, 0.75, 0.5, 0.0]]])
FOREGROUND = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]], dtype=torch.bool)
IGNORE = torch.tensor([[[0, 0, 0, 1], [1, 0, 0, 0]]], dtype=torch.bool)
# positives {1.0, .75, .75, .25}; negatives kept {.75, .5, 0}. Sweeping down:
#   τ=1:   TP 1, FP 0 -> P 1,   R 1/4 -> 1·1/4         = 0.25
#   τ=.75: TP 3, FP 1 -> P 3/4, R 3/4 -> 3/4·1/2       = 0.375
#   τ=.5:  TP 3, FP 2 -> R unchanged
#   τ=.25: TP 4, FP 2 -> P 2/3, R 1   -> 2/3·1/4       = 0.1667
#   τ=0:   TP 4, FP 3 -> R unchanged                    PxAP = 79.1667
PXAP_IGNORE = 100 * (0.25 + 0.375 + 1 / 6)
# without the ignore region the 1.0 negative counts: 1/2·1/4 + 3/5·1/2 + 4/7·1/4 = 56.7857
PXAP_ALL = 100 * (0.125 + 0.3 + 1 / 7)


def test_pxap_hand_example_with_ignore_region():
    assert wsol.pixel_average_precision(SCORES, FOREGROUND, IGNORE) == pytest.approx(PXAP_IGNORE, abs=1e-9)
    assert wsol.pixel_average_precision(SCORES, FOREGROUND) == pytest.approx(PXAP_ALL, abs=1e-9)
    # thresholds (0, 0.5): points 1, .5, 0 -> 1·1/4 + 3/5·1/2 + 4/7·1/4 = 69.2857
    coarse = wsol.pixel_average_precision(SCORES, FOREGROUND, IGNORE, thresholds=[0.0, 0.5])
    assert coarse == pytest.approx(100 * (0.25 + 0.3 + 1 / 7), abs=1e-9)


def test_pxap_accumulates_over_batches_and_exposes_the_curve():
    metric = wsol.PxAP()
    for row in range(2):  # the two rows as two 1x4 images, one update each
        metric.update(SCORES[:, row:row + 1], FOREGROUND[:, row:row + 1], IGNORE[:, row:row + 1])
    assert metric.compute() == pytest.approx(PXAP_IGNORE, abs=1e-9)
    thresholds, precision, recall = metric.curve()
    assert thresholds.shape == (101,) and thresholds[0] == 1.0 and thresholds[-1] == 0.0
    at = {t: int((thresholds - t).abs().argmin()) for t in (1.0, 0.8, 0.6, 0.1, 0.0)}
    close(precision[list(at.values())], [1.0, 1.0, 3 / 4, 2 / 3, 4 / 7])
    close(recall[list(at.values())], [0.25, 0.25, 3 / 4, 1.0, 1.0])


def test_pxap_perfect_constant_and_undefined():
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[0, 2:5, 1:7] = True
    gt[2, 0, :] = True
    assert wsol.pixel_average_precision(gt.float(), gt) == pytest.approx(100.0)
    soft = torch.where(gt, 0.9, 0.1)
    assert wsol.pixel_average_precision(soft[:, None], gt[:, None]) == pytest.approx(100.0)
    # a constant mask ranks nothing: one point at R = 1 with P = #pos/#pixels = 26/192
    assert wsol.pixel_average_precision(torch.full((3, 8, 8), 0.5), gt) == pytest.approx(100 * 26 / 192)
    assert math.isnan(wsol.pixel_average_precision(soft, torch.zeros_like(gt)))
    assert math.isnan(wsol.PxAP().compute())


# ---------------------------------------------------------------- MaxBoxAcc / MaxBoxAccV2

SWEEP = [0.0, 0.25, 0.5, 0.75]
"""Thresholds exactly representable in binary, so strict > is tested exactly."""


def gt(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_cam_thresholds_are_the_wsolevaluation_sweep():
    t = wsol.cam_thresholds()
    assert len(t) == 100 and t[0] == 0 and t[-1] == pytest.approx(0.99) and t.dtype == torch.float64
    assert len(wsol.cam_thresholds(0.25)) == 4
    with pytest.raises(ValueError, match=r"cam_curve_interval must lie in \(0, 1\)"):
        wsol.cam_thresholds(0)


def test_v1_takes_the_largest_component_v2_any_component_and_the_threshold_is_strict():
    # a small blob of 1.0 (2x2 at the top left, the gt box) and a larger blob of 0.5 (6x6, bottom right)
    m = torch.zeros(1, 12, 12)
    m[0, 0:2, 0:2] = 1.0
    m[0, 6:12, 6:12] = 0.5
    target = [gt([0, 0, 2, 2])]
    # τ = 0, 0.25: both blobs survive; v1 takes the 36 px blob, box (6,6,12,12): IoU 0.
    # τ = 0.5: 0.5 > 0.5 is false, only the small blob is left: IoU 1; likewise at 0.75.
    close(wsol.box_iou_curve(m, target, SWEEP), [[0, 0, 1, 1]])
    # multi-contour: the small blob's box is a candidate at every threshold
    close(wsol.box_iou_curve(m, target, SWEEP, multi_contour=True), [[1, 1, 1, 1]])


def test_components_are_8_connected():
    # two diagonal pixels are one component: box (0,0,2,2) = gt. 4-connected they would give 1-px
    # boxes of IoU 1/4.
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = m[0, 1, 1] = 1.0
    close(wsol.box_iou_curve(m, [gt([0, 0, 2, 2])], SWEEP), [[1, 1, 1, 1]])


def test_the_box_grows_as_the_threshold_falls_and_the_threshold_is_relative_to_the_max():
    # nested squares: 1.0 on (4,4,6,6), 0.5 on the ring up to (3,3,7,7), 0.25 up to (2,2,8,8); gt (3,3,7,7)
    m = torch.zeros(1, 10, 10)
    m[0, 2:8, 2:8] = 0.25
    m[0, 3:7, 3:7] = 0.5
    m[0, 4:6, 4:6] = 1.0
    target = [gt([3, 3, 7, 7])]
    # τ = 0: box (2,2,8,8), 36 px: IoU 16/36. τ = 0.25: (3,3,7,7): IoU 1. τ = 0.5, 0.75: (4,4,6,6): IoU 4/16.
    expected = [[16 / 36, 1, 0.25, 0.25]]
    close(wsol.box_iou_curve(m, target, SWEEP), expected)
    # m > τ·max(m): halving the map changes nothing (the reference thresholds at τ·max too)
    close(wsol.box_iou_curve(m / 2, target, SWEEP), expected)
    close(wsol.box_accuracy(wsol.box_iou_curve(m, target, SWEEP)), [0, 100, 0, 0])


def test_iou_exactly_at_the_thresholds_counts_as_correct():
    # one block of ones per image (the same box at every τ), each inside its gt box: IoU = block / gt area
    # image 0: 3 of 10 px -> 0.3; image 1: 16 of 32 px -> 0.5; image 2: 7 of 10 px -> 0.7
    m = torch.zeros(3, 8, 10)
    m[0, 0, 0:3] = 1.0
    m[1, 0:4, 0:4] = 1.0
    m[2, 0, 0:7] = 1.0
    target = [gt([0, 0, 10, 1]), gt([0, 0, 4, 8]), gt([0, 0, 10, 1])]
    ious = wsol.box_iou_curve(m, target)
    assert ious.shape == (3, 100)
    close(ious[:, 0], [0.3, 0.5, 0.7])
    assert (ious == ious[:, :1]).all()
    # IoU >= δ (wsolevaluation), not the strict > of LE: at δ = 0.3 all three, 0.5 two, 0.7 one
    for delta, expected in ((0.3, 100.0), (0.5, 200 / 3), (0.7, 100 / 3)):
        close(wsol.box_accuracy(ious, delta), [expected] * 100)
    acc = wsol.MaxBoxAcc(multi_contour=True)
    acc.update(m, target)
    v2 = [acc.compute(d) for d in wsol.IOU_THRESHOLDS_V2]
    assert v2 == pytest.approx([100, 200 / 3, 100 / 3]) and sum(v2) / 3 == pytest.approx(200 / 3)


def test_two_gt_boxes_constant_maps_no_box_and_unclipped_area():
    ones, zeros = torch.ones(1, 16, 16), torch.zeros(1, 16, 16)
    block = torch.zeros(1, 16, 16)
    block[0, 8:16, 8:16] = 1.0
    two = [gt([0, 0, 4, 4], [8, 8, 16, 16])]
    close(wsol.box_iou_curve(block, two, SWEEP), [[1, 1, 1, 1]])  # the best of the two gt boxes
    # a constant map of ones: the whole image (0,0,16,16) at every τ < 1: IoU 128/256 with (0,0,8,16)
    close(wsol.box_iou_curve(ones, [gt([0, 0, 8, 16])], SWEEP), [[0.5] * 4])
    # an all-zero map (what min-max normalisation makes of a constant map) has no box: IoU 0
    close(wsol.box_iou_curve(zeros, [gt([0, 0, 8, 16])], SWEEP), [[0] * 4])
    # an image without gt boxes gives a NaN row, left out of the accuracy
    ious = wsol.box_iou_curve(torch.cat([block, block]), [two[0], gt()], SWEEP)
    close(ious, [[1] * 4, [NAN] * 4])
    close(wsol.box_accuracy(ious), [100] * 4)
    close(wsol.box_accuracy(ious[1:]), [NAN] * 4)
    # a gt box past the left border: clipped (0,0,4,8) = the 32 px block; unclipped area 64 -> IoU 0.5
    left = torch.zeros(1, 8, 8)
    left[0, :, 0:4] = 1.0
    close(wsol.box_iou_curve(left, [gt([-4, 0, 4, 8])], SWEEP), [[1] * 4])
    close(wsol.box_iou_curve(left, [gt([-4, 0, 4, 8])], SWEEP, unclipped_area=True), [[0.5] * 4])


def brute_force_curve(mask, boxes_, thresholds, multi_contour):
    """Pixel-set IoU of skimage's 8-connected components' tight boxes, one threshold at a time."""
    from skimage.measure import label

    height, width = mask.shape
    gt_sets = [{(y, x) for y in range(max(0, y1), min(height, y2)) for x in range(max(0, x1), min(width, x2))}
               for x1, y1, x2, y2 in boxes_.int().tolist()]
    curve = []
    for t in thresholds:
        labels = label((mask > t * mask.max()).numpy(), connectivity=2)
        components = [labels == k for k in range(1, labels.max() + 1)]
        if components and not multi_contour:
            components = [max(components, key=lambda c: c.sum())]
        best = 0.0
        for c in components:
            ys, xs = c.nonzero()
            box = {(y, x) for y in range(ys.min(), ys.max() + 1) for x in range(xs.min(), xs.max() + 1)}
            best = max([best] + [len(box & g) / len(box | g) for g in gt_sets if g])
        curve.append(best)
    return curve


@pytest.mark.parametrize("multi_contour", [False, True])
def test_box_iou_curve_agrees_with_a_brute_force_recomputation(multi_contour):
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(4, 9, 11, generator=generator) * 4).floor() / 3  # values 0, 1/3, 2/3, 1: many blobs
    corners = torch.randint(0, 11, (4, 2, 4), generator=generator).float()
    gts = [torch.cat([c[:, :2].minimum(c[:, 2:]), c[:, :2].maximum(c[:, 2:]) + 1], 1) for c in corners]
    thresholds = [0.0, 0.2, 0.5, 0.9]
    expected = [brute_force_curve(m, g, thresholds, multi_contour) for m, g in zip(masks, gts)]
    close(wsol.box_iou_curve(masks, gts, thresholds, multi_contour=multi_contour).float(), expected)


def test_max_box_acc_accumulates_and_merges_shards():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 10, 10, generator=generator)
    gts = [gt([1, 1, 6, 7]), gt([0, 0, 10, 10]), gt([2, 3, 9, 9], [0, 0, 3, 3]), gt([4, 4, 8, 8]),
           gt([0, 5, 5, 10]), gt([3, 0, 10, 4])]
    whole = wsol.MaxBoxAcc(multi_contour=True)
    whole.update(masks, gts)
    first, second = wsol.MaxBoxAcc(multi_contour=True), wsol.MaxBoxAcc(multi_contour=True)
    first.update(masks[:2], gts[:2])
    first.update(masks[2:3], gts[2:3])
    second.update(masks[3:], gts[3:])
    first.merge(second)
    assert torch.equal(first.ious, whole.ious) and whole.ious.shape == (6, 100)
    for delta in wsol.IOU_THRESHOLDS_V2:
        expected = float(wsol.box_accuracy(whole.ious, delta).max())
        assert first.compute(delta) == whole.compute(delta) == expected
    assert math.isnan(wsol.MaxBoxAcc().compute())
    with pytest.raises(ValueError, match="same thresholds, multi_contour"):
        first.merge(wsol.MaxBoxAcc())
    with pytest.raises(ValueError, match=r"iou_threshold must lie in \(0, 1\]"):
        whole.compute(50)
    with pytest.raises(ValueError, match="increase strictly from 0"):
        wsol.MaxBoxAcc([0.5])


# ---------------------------------------------------------------- errors

def test_bad_inputs_say_what_was_expected():
    masks = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"\(B,H,W\) or \(B,1,H,W\)"):
        wsol.binarize_at_mean(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        wsol.avg_mask(masks + 1)
    with pytest.raises(ValueError, match="NaN"):
        wsol.soft_f1(torch.full((1, 8, 8), NAN), [GT1])
    with pytest.raises(TypeError, match="float tensor"):
        wsol.mask_tv(torch.ones(1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="bool"):
        wsol.largest_component(masks)
    with pytest.raises(ValueError, match=r"one \(N,4\) tensor per image \(2\)"):
        wsol.soft_f1(masks, [GT1])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] must be a tensor \(N,4\)"):
        wsol.soft_f1(masks, [GT1[0], GT2])
    with pytest.raises(ValueError, match="x2 >= x1"):
        wsol.localization_error(boxes(PRED), [torch.tensor([[5., 0., 3., 4.]])], SIZE)
    with pytest.raises(ValueError, match="inside the image"):
        wsol.localization_error(boxes([2, 2, 11, 6]), [GT1], SIZE)
    with pytest.raises(ValueError, match=r"bool tensor \(1,\)"):
        wsol.official_localization_error(boxes(PRED), [GT1], torch.tensor([1]), SIZE)
    with pytest.raises(ValueError, match="boxes hold 1 rows but images hold 2"):
        wsol.saliency_metric_wsol(tiny_classifier(), red_square_images(2), boxes(PRED), 0)
    with pytest.raises(ValueError, match="one class per image"):
        wsol.saliency_metric_wsol(tiny_classifier(), red_square_images(1), boxes(PRED), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\) like the masks"):
        wsol.pixel_average_precision(masks, torch.zeros(2, 8, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        wsol.pixel_average_precision(masks, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="increase strictly from 0"):
        wsol.PxAP([0.1, 0.5])
