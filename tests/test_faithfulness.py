"""Faithfulness metrics: MoRF/LeRF and AOPC, deletion/insertion (Petsiuk et al.), POMPOM — known answers."""
import itertools
import math

import pytest
import torch

from saliencylab import metrics
from saliencylab.bench.run import run_benchmark
from saliencylab.bench.speed import aopc_loop
from saliencylab.data.formats import load_dataset
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.metrics import faithfulness as F
from saliencylab.models.classifier import Classifier
from saliencylab.models.zoo import build_classifier
from saliencylab.perturb import blur

WEIGHTS = torch.tensor([[0.5, 2.0], [-1.0, 1.0]])
"""Weight of each 2×2 patch of a 4×4 image in the linear model's class-0 logit."""


def linear_probabilities(images):
    """Softmax of [Σ_pixels w(patch)·x (channel 0), 0]: a linear model whose patch contributions are known."""
    weight = WEIGHTS.repeat_interleave(2, 0).repeat_interleave(2, 1)
    logit = (images[:, 0] * weight).flatten(1).sum(1)
    return torch.stack([logit, torch.zeros_like(logit)], 1).softmax(1)


def test_morf_on_a_linear_model_follows_the_known_best_ordering():
    images = torch.ones(1, 3, 4, 4)
    contributions = 4 * WEIGHTS  # 4 pixels of value 1 per patch
    best = contributions.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    curve = F.morf_curves(linear_probabilities, images, best, torch.zeros(1, 1, dtype=torch.long), patch=2,
                          steps=100, perturbation="black", absolute=False)[0, 0]
    # black removes the patches of contribution 8, 4, 2, -4 (most relevant first): the logit goes 10, 2, -2, -4, 0
    expected = torch.sigmoid(torch.tensor([10.0, 2.0, -2.0, -4.0, 0.0]))
    torch.testing.assert_close(curve, expected)
    assert F.aopc(curve).item() == pytest.approx(float(expected[0] - expected.mean()), abs=1e-6)
    scores = {}
    for order in itertools.permutations(range(4)):  # every ordering of the four patches as a map
        ranks = torch.tensor(order, dtype=torch.float).view(2, 2)
        fake = (-ranks).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
        scores[order] = F.aopc(F.morf_curves(linear_probabilities, images, fake, torch.zeros(1, 1, dtype=torch.long),
                                             patch=2, perturbation="black", absolute=False))[0, 0].item()
    assert max(scores.values()) == pytest.approx(F.aopc(curve).item(), abs=1e-6)
    lerf = F.morf_curves(linear_probabilities, images, best, torch.zeros(1, 1, dtype=torch.long), patch=2,
                         perturbation="black", absolute=False, most_relevant_first=False)[0, 0]
    torch.testing.assert_close(lerf, torch.sigmoid(torch.tensor([10.0, 14.0, 12.0, 8.0, 0.0])))


def test_patches_steps_and_edge_cells():
    maps = torch.arange(25.0).view(1, 5, 5)  # 2×2 patches on 5×5: a 3×3 grid, edge cells smaller
    ranks = F.patch_ranks(maps, 2)[0]
    means = torch.tensor([[3.0, 5.0, 6.5], [13.0, 15.0, 16.5], [20.5, 22.5, 24.0]])
    expected = torch.empty(9, dtype=torch.long)
    expected[(-means.flatten()).argsort()] = torch.arange(9)
    torch.testing.assert_close(ranks, expected.view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)[:5, :5])
    curve = F.morf_curves(lambda x: torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1), torch.ones(1, 3, 5, 5),
                          maps[None], torch.zeros(1, 1, dtype=torch.long), patch=2, steps=4, perturbation="black")
    assert curve.shape == (1, 1, 5)  # L = min(steps, cells) = 4, plus the clean image
    torch.testing.assert_close(curve[0, 0], torch.tensor([25.0, 24, 22, 20, 18]) / 25)  # cells of 1, 2, 2, 2 px


@pytest.mark.parametrize("perturbation,value", [("black", 0.0), ("white", 1.0), ("gray", 0.5)])
def test_constant_perturbations_fill_their_value(perturbation, value):
    images = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(F.perturbed_images(images, perturbation), torch.full_like(images, value))
    maps = torch.zeros(2, 1, 6, 6)
    maps[:, :, :3, :3] = 1  # the top-left 3×3 patch first
    mean_red = lambda x: torch.stack([x[:, 0].mean((1, 2)), 1 - x[:, 0].mean((1, 2))], 1)
    curve = F.morf_curves(mean_red, images, maps, torch.zeros(2, 1, dtype=torch.long), patch=3, steps=1,
                          perturbation=perturbation)
    expected = images[:, 0].mean((1, 2)) + (value - images[:, 0, :3, :3].mean((1, 2))) / 4
    torch.testing.assert_close(curve[:, 0, 1], expected)


def test_blur_and_uniform_perturbations():
    images = torch.rand(3, 3, 56, 56)
    torch.testing.assert_close(F.perturbed_images(images, "blur"), blur(images, 5.0 * 56 / 224))
    constant = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(F.perturbed_images(constant, "blur", blur_sigma=2.0), constant)
    noise = F.perturbed_images(images, "uniform", seed=7)
    assert 0 <= noise.min() and noise.max() <= 1 and noise.std() > 0.25  # U(0,1) has std 0.289
    torch.testing.assert_close(noise[2:], F.perturbed_images(images[2:], "uniform", seed=9))  # image i: seed + i
    assert not torch.equal(noise, F.perturbed_images(images, "uniform", seed=8))
    with pytest.raises(ValueError, match="perturbation must be one of"):
        F.perturbed_images(images, "pink")


def test_pompom_known_values():
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[:, :, :2, :2] = True  # 4 pixels inside, 12 outside
    assert F.pompom(torch.zeros(2, 1, 4, 4), masks).eq(0).all()
    torch.testing.assert_close(F.pompom(torch.ones(2, 1, 4, 4), masks), torch.full((2, 1), 12 / (12 + 1e-6)))
    maps = torch.zeros(2, 1, 4, 4)
    maps[:, :, :2, :2] = 1  # inside the mask: not counted
    maps[0, 0, 3, :3] = 0.5
    maps[1, 0, 3, 3] = 1e-7  # below ε
    torch.testing.assert_close(F.pompom(maps, masks), torch.tensor([[3 / (12 + 1e-6)], [0.0]]))
    assert F.pompom(torch.full((1, 1, 4, 4), math.nan), masks[:1]).isnan().all()


def visible_mass(images):
    """Probability = the visible mass of the planted region (rows 1-2, columns 1-2 of an 8×8 image), channel 0."""
    mass = images[:, 0, 1:3, 1:3].mean((1, 2))
    return torch.stack([mass, 1 - mass], 1)


def test_deletion_and_insertion_on_a_planted_region():
    images = torch.zeros(1, 3, 8, 8)
    images[:, :, 1:3, 1:3] = 1
    perfect = images[:, :1].clone()
    inverted = 1 - perfect
    targets = torch.zeros(1, 1, dtype=torch.long)
    deletion = F.causal_curves(visible_mass, images, perfect, targets, mode="deletion", steps=64)[0, 0]
    torch.testing.assert_close(deletion, torch.tensor([1, .75, .5, .25] + [0.0] * 61))
    assert F.area_under_curve(deletion).item() == pytest.approx((2.5 - 0.5) / 64)
    worst = F.causal_curves(visible_mass, images, inverted, targets, mode="deletion", steps=16)[0, 0]
    torch.testing.assert_close(worst, torch.tensor([1.0] * 16 + [0.0]))  # the region goes in the last step
    substrate = F.perturbed_images(images, "blur")[0, 0, 1:3, 1:3].flatten()
    insertion = F.causal_curves(visible_mass, images, perfect, targets, mode="insertion", steps=64)[0, 0]
    expected = [float((torch.cat([torch.ones(k), substrate[k:]])).mean()) for k in range(5)]
    torch.testing.assert_close(insertion[:5], torch.tensor(expected))
    assert insertion[4:].eq(1).all()
    late = F.causal_curves(visible_mass, images, inverted, targets, mode="insertion", steps=64)[0, 0]
    assert F.area_under_curve(insertion) > F.area_under_curve(late)


def tiny_classifier():
    torch.manual_seed(0)
    return Classifier(build_classifier("small_cnn", 3, width=4).model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def test_batched_equals_per_image_and_the_step_by_step_loop():
    classifier = tiny_classifier()
    score = lambda x: classifier(x).softmax(1)
    images, maps = torch.rand(3, 3, 16, 16), torch.randn(3, 2, 16, 16)
    targets = torch.tensor([[0, 2], [1, -1], [2, 0]])
    maps[1, 1] = math.nan
    for perturbation in F.PERTURBATIONS:
        batched = F.morf_curves(score, images, maps, targets, patch=4, steps=10, perturbation=perturbation, seed=3,
                                max_batch=7)
        assert batched[1, 1].isnan().all() and not batched[[0, 1, 2], [0, 0, 0]].isnan().any()
        for i in range(3):
            alone = F.morf_curves(score, images[i:i + 1], maps[i:i + 1], targets[i:i + 1], patch=4, steps=10,
                                  perturbation=perturbation, seed=3 + i, max_batch=64)
            torch.testing.assert_close(alone[0], batched[i], equal_nan=True)
        loop = aopc_loop(score, images, maps[:, 0].abs(), targets[:, 0], patch=4, steps=10, perturbation=perturbation,
                         seed=3)
        torch.testing.assert_close(loop, batched[:, 0])
    deletion = F.causal_curves(score, images, maps, targets, steps=20, max_batch=5)
    for i in range(3):
        torch.testing.assert_close(F.causal_curves(score, images[i:i + 1], maps[i:i + 1], targets[i:i + 1], steps=20)[0],
                                   deletion[i], equal_nan=True)


def test_the_engine_scores_and_plots_the_curves(tmp_path):
    write_synthetic(tmp_path / "data", SyntheticConfig(image_size=32, train=1, val=1, test=6, seed=2), progress=False)
    dataset = load_dataset(f"voc:{tmp_path / 'data' / 'voc'}", class_names=CLASSES, image_size=32,
                           options={"segmentation_only": True})
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4)
    names = ["aopc_morf", "aopc_lerf", "deletion_auc", "insertion_auc", "pompom"]
    results = run_benchmark(classifier, dataset, ["gradient", "ground_truth"], tmp_path / "run", metric_names=names,
                            batch_size=4, progress=False, bootstrap=10,
                            options={"patch": 8, "steps": 5, "causal_steps": 8, "perturbation": "gray"})
    for row in ("gradient", "ground_truth"):
        scores = results["rows"][row]["scores"]
        assert len(scores["aopc_morf"]["curve"]) == 6 and len(scores["deletion_auc"]["curve"]) == 9
        curve = torch.tensor(scores["aopc_morf"]["curve"], dtype=torch.float64)
        assert scores["aopc_morf"]["value"] == pytest.approx(float(curve[0] - curve.mean()), abs=1e-9)
    assert results["rows"]["ground_truth"]["scores"]["pompom"]["value"] == 0  # the mask itself
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<svg") == 4 and "aopc_morf: mean curve" in html
    assert metrics.get("aopc_morf").higher_is_better and not metrics.get("deletion_auc").higher_is_better


def test_the_curves_are_scored_only_when_named():
    assert not any(metrics.get(n).by_default for n in ("aopc_morf", "aopc_lerf", "deletion_auc", "insertion_auc"))
    assert metrics.get("pompom").by_default and metrics.get("aopc_morf").per == "curve"
