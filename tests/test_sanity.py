"""Sanity checks (spec 001 §4.6): similarity measures with known answers, layer order and re-init
rules, cascading / independent randomisation on a tiny CNN, weight restoration, the plot."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn

from saliencylab import Classifier, methods
from saliencylab.bench import sanity
from saliencylab.maps import normalize_minmax
from saliencylab.models.zoo import SmallCNN

SMALL_CNN_LAYERS = ["head", "features.19", "features.18", "features.16", "features.15", "features.12",
                    "features.11", "features.9", "features.8", "features.5", "features.4", "features.1",
                    "features.0"]


def small_cnn() -> Classifier:
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return Classifier(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def gradient_maps(classifier: Classifier, images: torch.Tensor, targets) -> torch.Tensor:
    return normalize_minmax(methods.build("gradient", classifier).attribute(images, targets))


def images(batch: int = 2, size: int = 48) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def square(offset: int = 0, size: int = 64) -> torch.Tensor:
    """(1,size,size) map: a 24-px square of ones at (16+offset, 16+offset) on zeros."""
    out = torch.zeros(1, size, size)
    out[:, 16 + offset:40 + offset, 16 + offset:40 + offset] = 1.0
    return out


def state(classifier: Classifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in classifier.state_dict().items()}


def assert_same_state(classifier: Classifier, expected: dict[str, torch.Tensor]) -> None:
    now = classifier.state_dict()
    assert now.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(now[key], value), key


# ---- similarity measures ------------------------------------------------------------------------

def test_spearman_matches_scipy_on_random_maps_and_with_ties():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 8, 8, generator=gen), torch.rand(4, 8, 8, generator=gen)
    tied_a = torch.randint(0, 4, (4, 8, 8), generator=gen).float()
    tied_b = tied_a + torch.randint(0, 3, (4, 8, 8), generator=gen).float()
    for x, y in ((a, b), (tied_a, tied_b), (a, tied_a)):
        expected = [stats.spearmanr(xi.flatten(), yi.flatten()).statistic for xi, yi in zip(x, y)]
        torch.testing.assert_close(sanity.spearman(x, y), torch.tensor(expected, dtype=torch.float64))


def test_rank_averages_ties():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert sanity.rank(values).tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0]]


def test_spearman_of_negation_is_minus_one_and_constant_or_nan_maps_are_undefined():
    a = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sanity.spearman(a, -a), torch.full((3,), -1.0, dtype=torch.float64))
    b = a.clone()
    b[1] = 0.5
    b[2, 0, 0] = math.nan
    values = sanity.spearman(a, b)
    assert values[0] == 1.0 and values[1:].isnan().all()


def test_spearman_of_crossed_stripes_is_zero():
    rows = torch.zeros(1, 64, 64)
    rows[:, ::8] = 1.0
    assert sanity.spearman(rows, rows.transpose(1, 2)).item() == pytest.approx(0.0, abs=1e-12)


def test_spearman_abs_ranks_distance_from_one_half():
    m = torch.randint(0, 257, (2, 8, 8), generator=torch.Generator().manual_seed(3)).float() / 256
    assert sanity.spearman_abs(m, 1 - m).tolist() == [1.0, 1.0]
    assert (sanity.spearman(m, 1 - m) < -0.99).all()
    expected = stats.spearmanr((m[0] - 0.5).abs().flatten(), (m[1] - 0.5).abs().flatten()).statistic
    assert sanity.spearman_abs(m[:1], m[1:]).item() == pytest.approx(expected)


def test_identical_maps_score_one_on_all_measures():
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(4))
    scores = sanity.compare_maps(maps, maps.clone())
    assert list(scores) == list(sanity.MEASURES)
    for measure, values in scores.items():
        assert values.dtype == torch.float64 and values.tolist() == [1.0, 1.0], measure


def test_hog_and_ssim_drop_for_a_shifted_square():
    base, shifted = square(), square(offset=8)
    assert sanity.hog_pearson(base, base).item() == 1.0
    assert sanity.ssim(base, base).item() == 1.0
    assert sanity.hog_pearson(base, shifted).item() == pytest.approx(0.7608, abs=1e-3)
    assert sanity.ssim(base, shifted).item() < 0.8
    assert sanity.hog_pearson(base, square(offset=16)).item() < sanity.hog_pearson(base, shifted).item()


def test_hog_ignores_contrast_and_offset_but_not_orientation():
    rows = torch.zeros(1, 64, 64)
    rows[:, ::8] = 1.0
    assert sanity.hog_pearson(rows, 0.5 * rows + 0.25).item() == pytest.approx(1.0, abs=1e-6)
    assert sanity.hog_pearson(rows, rows.transpose(1, 2)).item() < 0.0


def test_ssim_of_constant_maps_is_the_luminance_term_with_data_range_one():
    c1 = (0.01 * 1.0) ** 2
    a, b = torch.full((1, 16, 16), 0.2), torch.full((1, 16, 16), 0.6)
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert sanity.ssim(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_compare_maps_takes_target_maps_and_gives_nan_for_padded_targets():
    maps = torch.rand(2, 2, 48, 48, generator=torch.Generator().manual_seed(5))
    other = maps.clone()
    other[0, 1] = maps[0, 1].flip(0)
    other[1, 1] = math.nan
    scores = sanity.compare_maps(maps, other)
    for measure, values in scores.items():
        assert values.shape == (4,), measure
        assert values[0] == 1.0 and values[1] < 0.9 and values[2] == 1.0 and values[3].isnan(), measure


def test_bad_inputs_raise_clear_errors():
    maps = torch.rand(2, 48, 48)
    with pytest.raises(ValueError, match="same shape"):
        sanity.compare_maps(maps, torch.rand(2, 48, 40))
    with pytest.raises(ValueError, match="maps_a must be a tensor"):
        sanity.compare_maps(maps[0, 0], maps[0, 0])
    with pytest.raises(ValueError, match=r"shape \(B,H,W\)"):
        sanity.spearman(maps[None], maps[None])
    with pytest.raises(TypeError, match="torch.Tensor"):
        sanity.spearman(maps.numpy(), maps)
    with pytest.raises(ValueError, match=r"expects maps in \[0,1\].*sigmoid"):
        sanity.compare_maps(maps * 4 - 2, maps)
    with pytest.raises(ValueError, match="at least 48x48"):
        sanity.hog_pearson(maps[:, :32, :32], maps[:, :32, :32])
    with pytest.raises(ValueError, match="at least 5x5"):
        sanity.ssim(maps[:, :4, :4], maps[:, :4, :4])


# ---- layers and re-initialisation ------------------------------------------------------------------

def test_layers_run_top_down_at_depth_two():
    assert sanity.randomization_layers(small_cnn()) == SMALL_CNN_LAYERS

    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.stage = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), nn.ReLU(),
                                       nn.Sequential(nn.Conv2d(4, 4, 3)))
            self.scale = nn.Parameter(torch.ones(()))
            self.fc = nn.Linear(4, 2)

    assert sanity.randomization_layers(Classifier(Nested())) == ["fc", "stage.2", "stage.0", "stem", "scale"]
    with pytest.raises(ValueError, match="no parameters"):
        sanity.randomization_layers(Classifier(nn.Flatten()))


def test_reinit_rules_follow_the_spec():
    model = nn.Sequential(nn.Conv2d(64, 32, 3), nn.BatchNorm2d(400), nn.Linear(500, 300))
    classifier = Classifier(model)
    generator = torch.Generator().manual_seed(0)
    for layer in ("0", "1", "2"):
        sanity.randomize_layer(classifier, layer, generator)
    conv_std = math.sqrt(2 / (32 * 64 * 3))
    assert model[0].weight.mean().item() == pytest.approx(0.0, abs=0.05 * conv_std)
    assert model[0].weight.std().item() == pytest.approx(conv_std, rel=0.03)
    for param, bound in ((model[1].weight, 1 / math.sqrt(400)), (model[1].bias, 1 / math.sqrt(400)),
                         (model[2].weight, 1 / math.sqrt(500)), (model[2].bias, 1 / math.sqrt(300))):
        assert param.abs().max().item() <= bound
        assert param.abs().max().item() > 0.95 * bound
        assert param.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_seeded_reinit_is_reproducible():
    def weights(seed: int) -> torch.Tensor:
        classifier = small_cnn()
        sanity.randomize_layer(classifier, "features.4", torch.Generator().manual_seed(seed))
        return classifier.model.features[4].weight.clone()

    assert torch.equal(weights(7), weights(7))
    assert not torch.equal(weights(7), weights(8))
    assert not torch.equal(weights(7), small_cnn().model.features[4].weight)
    with pytest.raises(ValueError, match="not a layer.*randomisable layers: head"):
        sanity.randomize_layer(small_cnn(), "features.2", torch.Generator())


# ---- randomisation tests -----------------------------------------------------------------------

def test_cascading_randomization_changes_gradient_maps_and_restores_weights():
    classifier, x = small_cnn(), images()
    before = state(classifier)
    result = sanity.cascading_randomization(gradient_maps, classifier, x, [0, 2], seed=0)
    assert_same_state(classifier, before)
    assert result.mode == "cascading" and result.layers == ["original", *SMALL_CNN_LAYERS]
    for measure in sanity.MEASURES:
        assert result.per_image[measure].shape == (14, 2)
        assert result.per_image[measure][0].tolist() == [1.0, 1.0], measure
        assert (result.per_image[measure][1:] < 1.0).all(), measure
        torch.testing.assert_close(result.mean[measure], result.per_image[measure].mean(dim=1))
    assert result.mean["spearman"][-1] < 0.5
    again = sanity.cascading_randomization(gradient_maps, classifier, x, [0, 2], seed=0)
    other_seed = sanity.cascading_randomization(gradient_maps, classifier, x, [0, 2], seed=1)
    assert all(torch.equal(again.per_image[m], result.per_image[m]) for m in sanity.MEASURES)
    assert not torch.equal(other_seed.per_image["spearman"], result.per_image["spearman"])


def test_independent_randomization_restores_each_layer_and_matches_the_first_cascading_step():
    classifier, x = small_cnn(), images()
    before = state(classifier)
    seen: list[torch.Tensor] = []

    def explain(clf: Classifier, imgs: torch.Tensor, targets) -> torch.Tensor:
        seen.append(clf.model.head.weight.clone())
        return gradient_maps(clf, imgs, targets)

    layers = ["head", "features.15", "features.0"]
    independent = sanity.independent_randomization(explain, classifier, x, 1, seed=3, layers=layers)
    assert_same_state(classifier, before)
    assert independent.layers == ["original", *layers]
    original_head = before["model.head.weight"]
    assert [torch.equal(w, original_head) for w in seen] == [True, True, False, True, True]
    cascading = sanity.cascading_randomization(gradient_maps, classifier, x, 1, seed=3, layers=layers)
    for measure in sanity.MEASURES:
        assert torch.equal(independent.per_image[measure][:2], cascading.per_image[measure][:2])
        assert (independent.per_image[measure][1:] < 1.0).all(), measure


def test_weights_are_restored_when_explain_fails():
    classifier = small_cnn()
    before = state(classifier)
    calls = []

    def explain(clf: Classifier, imgs: torch.Tensor, targets) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("explainer broke")
        return gradient_maps(clf, imgs, targets)

    with pytest.raises(RuntimeError, match="explainer broke"):
        sanity.cascading_randomization(explain, classifier, images(), 0)
    assert len(calls) == 4
    assert_same_state(classifier, before)


def test_randomization_rejects_bad_layers_and_images():
    classifier = small_cnn()
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc'\].*output side first: head"):
        sanity.cascading_randomization(gradient_maps, classifier, images(), 0, layers=["head", "fc"])
    with pytest.raises(ValueError, match="none given"):
        sanity.independent_randomization(gradient_maps, classifier, images(), 0, layers=[])
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        sanity.cascading_randomization(gradient_maps, classifier, images() * 2, 0)


def test_plot_and_json_of_a_result(tmp_path):
    result = sanity.independent_randomization(gradient_maps, small_cnn(), images(1), 0, layers=["head", "features.0"])
    path = sanity.plot_randomization(result, tmp_path / "figures" / "sanity.png")
    assert path == tmp_path / "figures" / "sanity.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width >= 400 and picture.height == 400
        assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 10
    data = result.to_dict()
    assert data["layers"] == ["original", "head", "features.0"]
    assert data["mean"]["ssim"][0] == 1.0 and len(data["per_image"]["spearman"]) == 3
