"""Known answers for saliencylab.metrics on hand-built maps (functional, aggregate, registry)."""
import math

import pytest
import torch
from torch import nn

from saliencylab import metrics
from saliencylab.metrics import functional as F
from saliencylab.metrics.aggregate import class_mean

NAN = math.nan


def grid(values) -> torch.Tensor:
    """A (1,1,H,W) float tensor from nested lists."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def peak_map(size: int, y: int, x: int) -> torch.Tensor:
    maps = torch.zeros(1, 1, size, size)
    maps[0, 0, y, x] = 1.0
    return maps


def assert_scores(actual: torch.Tensor, expected) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float32).reshape(actual.shape)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, equal_nan=True, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- pointing game

GT_CORNER = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
GT_CORNER[0, 0, 0, 0] = True  # a single gt pixel at (y=0, x=0)


@pytest.mark.parametrize("point, tolerance, expected", [
    ((0, 14), 15.0, 1.0),    # distance 14 < 15
    ((9, 12), 15.0, 0.0),    # distance exactly 15: strict <, miss
    ((0, 15), 15.0, 0.0),
    ((9, 12), 15.5, 1.0),
    ((0, 14), 14.0, 0.0),    # distance 14, tolerance 14
    ((0, 14), 14.9, 1.0),    # 14 < 14.9
    ((10, 10), 14.9, 1.0),   # sqrt(200) = 14.14 < 14.9
    ((10, 10), 14.1, 0.0),
    ((0, 0), 0.5, 1.0),      # distance 0 always hits
    ((0, 1), 1.0, 0.0),
])
def test_pointing_game_tolerance_is_strict_euclidean(point, tolerance, expected):
    score = F.pointing_game(peak_map(20, *point), GT_CORNER, tolerance=tolerance)
    assert_scores(score, [[expected]])


def test_pointing_game_dilation_matches_brute_force_distances():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 2, 17, 23, generator=g) > 0.99
    gt[0, 0, 5, 5] = True  # no empty gt
    gt[..., 8, 11] |= True
    maps = torch.rand(3, 2, 17, 23, generator=g)
    ys, xs = torch.meshgrid(torch.arange(17.0), torch.arange(23.0), indexing="ij")
    for tolerance in (1.0, 2.5, 6.0, 15.0):
        point = maps.flatten(2).argmax(-1)
        py, px = point // 23, point % 23
        dist = ((ys - py[..., None, None]) ** 2 + (xs - px[..., None, None]) ** 2).sqrt()
        expected = ((dist < tolerance) & gt).flatten(2).any(-1).float()
        assert_scores(F.pointing_game(maps, gt, tolerance=tolerance), expected)


def test_pointing_game_ties_take_first_pixel_row_major_but_quantus_takes_any():
    maps = torch.zeros(1, 1, 20, 20)
    maps[0, 0, 0, 0] = maps[0, 0, 19, 19] = 1.0
    gt = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    gt[0, 0, 19, 19] = True
    assert_scores(F.pointing_game(maps, gt), [[0.0]])  # point (0,0) is 26.9 px away
    assert_scores(F.pointing_game_plain(maps, gt), [[1.0]])


def test_pointing_game_undefined_cases_are_nan():
    maps = torch.stack([peak_map(20, 0, 1)[0]] * 3, dim=1)  # (1,3,20,20)
    gt = GT_CORNER.expand(1, 3, 20, 20).clone()
    maps[0, 1] = NAN          # padded target
    gt[0, 2] = False          # empty gt
    assert_scores(F.pointing_game(maps, gt), [[1.0, NAN, NAN]])
    skip = torch.tensor([[True, False, False]])
    assert_scores(F.pointing_game(maps, gt, skip=skip), [[NAN, NAN, NAN]])


def test_pointing_game_plain_has_no_tolerance():
    assert_scores(F.pointing_game_plain(peak_map(20, 0, 0), GT_CORNER), [[1.0]])
    assert_scores(F.pointing_game_plain(peak_map(20, 0, 1), GT_CORNER), [[0.0]])
    assert_scores(F.pointing_game_plain(peak_map(20, 0, 1), torch.zeros_like(GT_CORNER)), [[NAN]])


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_pointing_games_leave_constant_maps_undefined(value):
    # an all-zero map has no maximum: without this rule it would hit at pixel 0 (TorchRay) or everywhere (Quantus)
    constant = torch.full((1, 1, 20, 20), value)
    assert_scores(F.pointing_game(constant, GT_CORNER), [[NAN]])
    assert_scores(F.pointing_game_plain(constant, GT_CORNER), [[NAN]])
    # the stochastic game draws from the map as a distribution: a constant positive map is uniform, still defined
    assert math.isnan(F.stochastic_pointing_game(constant, GT_CORNER)[0, 0]) == (value == 0.0)


def test_pointing_game_batched_equals_per_sample():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 2, 12, 12, generator=g)
    gt = torch.rand(3, 2, 12, 12, generator=g) > 0.9
    for fn in (F.pointing_game, F.pointing_game_plain, F.energy):
        batched = fn(maps, gt)
        single = torch.cat([fn(maps[i:i + 1, k:k + 1], gt[i:i + 1, k:k + 1]) for i in range(3) for k in range(2)])
        assert_scores(batched, single.view(3, 2))


# ---------------------------------------------------------------- stochastic pointing game

def test_spg_all_mass_inside_is_one_and_far_away_is_zero():
    gt = torch.zeros(1, 2, 40, 40, dtype=torch.bool)
    gt[:, :, :5, :5] = True
    maps = torch.zeros(1, 2, 40, 40)
    maps[0, 0, :5, :5] = torch.rand(5, 5) + 0.1   # all mass on the gt
    maps[0, 0, 30:, 30:] = -5.0                    # negative values are clamped away
    maps[0, 1, 25:, 25:] = 1.0                     # >= 20*sqrt(2) px from the gt
    assert_scores(F.stochastic_pointing_game(maps, gt), [[1.0, 0.0]])


def test_spg_counts_the_fraction_of_hits_and_is_seeded():
    gt = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    gt[0, 0, 0, 0] = True
    maps = torch.zeros(1, 1, 40, 40)
    maps[0, 0, 0, 0] = maps[0, 0, 39, 39] = 1.0  # half the mass hits, half misses
    score = F.stochastic_pointing_game(maps, gt, num_samples=4000, seed=3)
    assert abs(float(score) - 0.5) < 0.05
    assert torch.equal(score, F.stochastic_pointing_game(maps, gt, num_samples=4000, seed=3))
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(score, F.stochastic_pointing_game(maps, gt, num_samples=4000, generator=generator))
    # 100 samples: the score is a multiple of 1/100
    small = float(F.stochastic_pointing_game(maps, gt))
    assert small * 100 == pytest.approx(round(small * 100))


def test_spg_undefined_cases_are_nan():
    maps = torch.ones(1, 4, 8, 8)
    gt = torch.ones(1, 4, 8, 8, dtype=torch.bool)
    maps[0, 0] = NAN          # padded target
    maps[0, 1] = -1.0         # no positive mass
    gt[0, 2] = False          # empty gt
    skip = torch.tensor([[False, False, False, True]])
    assert_scores(F.stochastic_pointing_game(maps, gt, skip=skip), [[NAN] * 4])
    assert_scores(F.stochastic_pointing_game(maps, gt), [[NAN, NAN, NAN, 1.0]])


# ---------------------------------------------------------------- energy

def test_energy_hand_numbers():
    maps = grid([[2.0, -1.0], [1.0, 1.0]])
    gt = grid([[1, 0], [0, 1]]).bool()
    # positive part [2, 0, 1, 1], sum 4; inside the gt: 2 + 1 = 3
    assert_scores(F.energy(maps, gt), [[3 / 4]])
    ignore = grid([[0, 0], [0, 1]]).bool()
    # without pixel (1,1): sum 3, inside 2
    assert_scores(F.energy(maps, gt, ignore=ignore), [[2 / 3]])
    assert_scores(F.energy(-maps.abs(), gt), [[NAN]])              # no positive mass
    assert_scores(F.energy(maps, torch.zeros_like(gt)), [[NAN]])   # empty gt
    assert_scores(F.energy(maps * NAN, gt), [[NAN]])               # padded target


# ---------------------------------------------------------------- NN-Explainer segmentation suite

M = grid([[1.0, 0.5], [0.25, 0.0]])
S = grid([[1.0, 1.0], [0.0, 0.0]])


def test_segmentation_suite_hand_numbers():
    # soft counts: tp = Σm·s = 1 + 0.5 = 1.5; fp = Σm(1−s) = 0.25; fn = Σ(1−m)s = 0.5; tn = Σ(1−m)(1−s) = 1.75
    # P = 1.5/1.75 = 6/7, R = 1.5/2 = 3/4, F1 = 2PR/(P+R) = (9/7)/(45/28) = 0.8
    assert_scores(F.soft_f1(M, S), [[0.8]])
    assert_scores(F.soft_accuracy(M, S), [[(1.5 + 1.75) / 4]])
    # Σmin = 1 + 0.5 + 0 + 0 = 1.5, Σmax = 1 + 1 + 0.25 + 0 = 2.25
    assert_scores(F.soft_iou(M, S), [[1.5 / 2.25]])
    # |s − m| = [0, 0.5, 0.25, 0], mean 0.1875
    assert_scores(F.overlap(M, S), [[1 - 0.1875]])
    # max(m − s, 0) = [0, 0, 0.25, 0], mean 0.0625; 1 − mean(s) = 0.5
    assert_scores(F.background_coverage(M, S), [[0.0625 / 0.5]])
    # max(s − m, 0) = [0, 0.5, 0, 0], mean 0.125; mean(s) = 0.5
    assert_scores(F.object_coverage(M, S), [[1 - 0.125 / 0.5]])
    # positives {1, 0.5} all above negatives {0.25, 0}
    assert_scores(F.pixel_auc(M, S), [[1.0]])


def test_discrete_f1_and_iou_hand_numbers():
    # t=0.25: m>t = [1,1,0,0] == s -> F1 1;  t=0.5 and t=0.75: m>t = [1,0,0,0] -> P 1, R 1/2, F1 2/3
    assert_scores(F.discrete_f1(M, S, 0.25), [[1.0]])
    assert_scores(F.discrete_f1(M, S, 0.5), [[2 / 3]])
    assert_scores(F.mean_f1(M, S), [[(1 + 2 / 3 + 2 / 3) / 3]])
    # t=0.1,0.2: m>t = [1,1,1,0] -> 2/3;  t=0.3,0.4: [1,1,0,0] -> 1;  t=0.5..0.9: [1,0,0,0] -> 1/2
    assert_scores(F.discrete_iou(M, S), [[(2 * 2 / 3 + 2 * 1 + 5 * 0.5) / 9]])


def test_discrete_metrics_binarize_soft_gt_too():
    soft_gt = grid([[0.6, 0.3], [0.0, 0.0]])
    # t=0.5: s>t = [1,0,0,0], m>t = [1,0,0,0] -> F1 1; t=0.75: s>t empty -> left out of the mean
    assert_scores(F.discrete_f1(M, soft_gt, 0.75), [[NAN]])
    # t=0.25: s>t = [1,1,0,0] == m>t -> 1; mean over the defined thresholds 0.25 and 0.5
    assert_scores(F.mean_f1(M, soft_gt), [[1.0]])


def test_pixel_auc_with_ties_and_ignore():
    maps = grid([[0.5, 0.2, 0.5], [0.2, 0.1, 0.9]])
    gt = grid([[1, 1, 0], [0, 0, 1]])
    # positives {0.5, 0.2, 0.9}, negatives {0.5, 0.2, 0.1}; pairs won (ties 1/2):
    # 0.5: 0.5 + 1 + 1;  0.2: 0 + 0.5 + 1;  0.9: 3  ->  7/9
    assert_scores(F.pixel_auc(maps, gt), [[7 / 9]])
    ignore = grid([[0, 0, 0], [0, 0, 1]]).bool()  # drop the 0.9 positive -> (2.5 + 1.5)/6
    assert_scores(F.pixel_auc(maps, gt, ignore=ignore), [[4 / 6]])
    assert_scores(F.pixel_auc(torch.full_like(maps, 0.3), gt), [[0.5]])  # constant mask
    assert_scores(F.pixel_auc(maps, torch.ones_like(gt)), [[NAN]])      # single class


def test_pixel_auc_equals_pair_counting_with_ties():
    g = torch.Generator().manual_seed(5)
    maps = (torch.rand(2, 2, 7, 7, generator=g) * 3).round() / 3  # many ties
    gt = torch.rand(2, 2, 7, 7, generator=g) > 0.5
    pos = maps.flatten(2)[..., :, None]
    neg = maps.flatten(2)[..., None, :]
    pair = gt.flatten(2)[..., :, None] & ~gt.flatten(2)[..., None, :]  # (positive, negative) pairs
    wins = ((pos > neg).float() + 0.5 * (pos == neg).float()) * pair
    assert_scores(F.pixel_auc(maps, gt), wins.sum((-1, -2)) / pair.sum((-1, -2)))


def test_pixel_auc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    maps = (torch.rand(2, 3, 9, 9, generator=g) * 4).round() / 4  # many ties
    gt = torch.rand(2, 3, 9, 9, generator=g) > 0.6
    ours = F.pixel_auc(maps, gt)
    for i in range(2):
        for k in range(3):
            expected = sklearn_metrics.roc_auc_score(gt[i, k].flatten().numpy(), maps[i, k].flatten().numpy())
            assert float(ours[i, k]) == pytest.approx(expected, abs=1e-6)


SEGMENTATION_SUITE = [F.mean_f1, F.soft_f1, F.soft_accuracy, F.discrete_iou, F.soft_iou, F.pixel_auc,
                      F.overlap, F.background_coverage, F.object_coverage]


@pytest.mark.parametrize("fn", SEGMENTATION_SUITE, ids=lambda fn: fn.__name__)
def test_ignored_pixels_count_as_absent(fn):
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 2, 6, 6, generator=g)
    gt = torch.rand(2, 2, 6, 6, generator=g) > 0.5
    ignore = torch.rand(2, 1, 6, 6, generator=g) > 0.7
    scores = fn(maps, gt, ignore=ignore)
    for i in range(2):
        kept = ~ignore[i, 0]
        expected = fn(maps[i][:, kept][None, :, None], gt[i][:, kept][None, :, None])  # (1,2,1,N)
        assert_scores(scores[i:i + 1], expected)


@pytest.mark.parametrize("fn", SEGMENTATION_SUITE, ids=lambda fn: fn.__name__)
def test_segmentation_suite_batched_equals_per_sample_and_nan_maps(fn):
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 3, 5, 5, generator=g)
    maps[1, 2] = NAN
    gt = torch.rand(2, 3, 5, 5, generator=g) > 0.5
    batched = fn(maps, gt)
    single = torch.cat([fn(maps[i:i + 1, k:k + 1], gt[i:i + 1, k:k + 1]) for i in range(2) for k in range(3)])
    assert_scores(batched, single.view(2, 3))
    assert math.isnan(batched[1, 2]) and not batched[:, :2].isnan().any()


def test_empty_and_full_gt_policy():
    empty, full = torch.zeros_like(S), torch.ones_like(S)
    for fn in (F.mean_f1, F.soft_f1, F.discrete_iou, F.soft_iou, F.pixel_auc, F.object_coverage):
        assert math.isnan(fn(M, empty)), fn.__name__
    # defined without any object: m = [1, 0.5, 0.25, 0]
    assert_scores(F.soft_accuracy(M, empty), [[(0 + 0.5 + 0.75 + 1) / 4]])
    assert_scores(F.overlap(M, empty), [[1 - 1.75 / 4]])
    assert_scores(F.background_coverage(M, empty), [[1.75 / 4]])
    assert math.isnan(F.background_coverage(M, full))
    assert math.isnan(F.soft_f1(M, S, ignore=torch.ones_like(S, dtype=torch.bool)))  # every pixel ignored


# ---------------------------------------------------------------- saliency metric

class FixedSoftmax(nn.Module):
    """Logits log([0.5, 0.3, 0.2]) for every image; records the last input."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.2, 0.4, 0.6]))
        self.seen = None

    def forward(self, images):
        self.seen = images.clone()
        return torch.tensor([0.5, 0.3, 0.2]).log().expand(images.shape[0], 3)


def test_saliency_metric_hand_numbers():
    classifier = FixedSoftmax()
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2] = 1.0        # area 0.5
    masks[1, 0, 0, 0] = 0.5      # area 0.5/16 -> floored at 0.05
    masks[2] = NAN               # undefined
    classes = torch.tensor([[0, -1], [1, 1], [2, -1]])  # image 1 lists class 1 twice (two instances)
    score = metrics.saliency_metric(classifier, images, masks, classes)
    assert score.shape == (3,)
    assert_scores(score, [math.log(0.5) - math.log(0.5), math.log(0.05) - math.log(0.6), NAN])
    mean = classifier.mean.view(1, 3, 1, 1)
    m = masks.nan_to_num(0.0)
    torch.testing.assert_close(classifier.seen, m * images + (1 - m) * mean)
    no_class = metrics.saliency_metric(classifier, images[:1], masks[:1], torch.tensor([[-1]]))
    assert math.isnan(no_class)


def test_saliency_metric_errors():
    classifier = FixedSoftmax()
    images = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        metrics.saliency_metric(classifier, images, torch.full((1, 1, 4, 4), 2.0), torch.tensor([[0]]))
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        metrics.saliency_metric(classifier, images, torch.ones(1, 2, 4, 4), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="out of range"):
        metrics.saliency_metric(classifier, images, torch.ones(1, 1, 4, 4), torch.tensor([[7]]))
    with pytest.raises(TypeError, match="classifier.mean"):
        metrics.saliency_metric(lambda x: torch.zeros(1, 3), images, torch.ones(1, 1, 4, 4), torch.tensor([[0]]))


# ---------------------------------------------------------------- aggregation

def test_class_mean_averages_per_class_and_skips_nan():
    scores = torch.tensor([[1.0, 0.0], [1.0, NAN], [0.0, NAN], [0.5, 0.0]])
    targets = torch.tensor([[0, 1], [0, 1], [1, -1], [0, 3]])
    per_class, mean = class_mean(scores, targets, num_classes=4)
    # class 0: (1 + 1 + 0.5)/3; class 1: (0 + 0)/2 (NaN skipped); class 2 unseen; class 3: 0
    assert_scores(per_class, [2.5 / 3, 0.0, NAN, 0.0])
    assert mean == pytest.approx((2.5 / 3 + 0 + 0) / 3)
    per_class, mean = class_mean(scores, targets, num_classes=4, unseen_as_zero=True)  # TorchRay
    assert_scores(per_class, [2.5 / 3, 0.0, 0.0, 0.0])
    assert mean == pytest.approx(2.5 / 3 / 4)
    _, mean = class_mean(torch.full((1, 1), NAN), torch.tensor([[0]]), num_classes=2)
    assert math.isnan(mean)


# ---------------------------------------------------------------- validation

def test_error_messages():
    maps, gt = torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        F.pointing_game(maps, torch.ones(2, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B,K,H,W\), got \(2, 4, 4\)"):
        F.soft_iou(maps[:, 0], gt[:, 0])
    with pytest.raises(ValueError, match=r"masks in \[0,1\].*normalize_minmax"):
        F.soft_f1(maps * 3, gt)
    with pytest.raises(ValueError, match="gt must be bool or hold values in"):
        F.energy(maps, gt.float() * 255)
    with pytest.raises(ValueError, match="ignore must be a bool tensor"):
        F.overlap(maps, gt, ignore=torch.ones(2, 3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="skip must be a bool tensor"):
        F.pointing_game(maps, gt, skip=torch.ones(2, 1))
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        F.pointing_game(maps, gt, tolerance=0)
    with pytest.raises(TypeError, match="float tensor"):
        F.energy(gt, gt)
    with pytest.raises(ValueError, match="targets"):
        class_mean(torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.long), num_classes=3)
