"""Consistent interpretations (Pillai & Pirsiavash, AAAI 2021): gridding, differentiable Grad-CAM, the loss."""
from pathlib import Path

import pytest
import torch
from torch import nn

from saliencylab.data import COCODataset, write_coco
from saliencylab.data.gridding import (GriddedDataset, collate_gridded, composite, instance_labels,
                                       negative_lists)
from saliencylab.models.classifier import Classifier
from saliencylab.models.zoo import build_classifier, use_global_max_pooling
from saliencylab.training.consistency import (ConsistencyModule, consistency_loss, differentiable_gradcam,
                                              grid_weight, gridded_target, heldout_consistency, normalise_sum)
from samples import make_sample

CLASSES = ["a", "b", "c", "d"]


class Local(nn.Module):
    """features: ReLU(x_0 - 0.5) at pixel resolution (1x1 conv, no bias) -> GAP -> Linear(1, 2) (weights 2, -1)."""

    def __init__(self, padding: int = 0, kernel: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, kernel, padding=padding, bias=True), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, 0, kernel // 2, kernel // 2] = 1.0
            self.features[0].bias.fill_(-0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[2.0], [-1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def local_classifier(**kwargs) -> Classifier:
    return Classifier(Local(**kwargs), mean=(0, 0, 0), std=(1, 1, 1), layers={"features": "features"})


def test_composite_puts_the_positive_in_its_quadrant_and_negatives_in_order():
    positive = torch.full((1, 2, 3), 9.0)
    negatives = [torch.full((1, 2, 3), float(v)) for v in (1, 2, 3)]
    expected_cells = {0: [9, 1, 2, 3], 1: [1, 9, 2, 3], 2: [1, 2, 9, 3], 3: [1, 2, 3, 9]}
    for quadrant, cells in expected_cells.items():
        grid = composite(positive, negatives, quadrant)
        assert grid.shape == (1, 4, 6)
        assert grid[0, :2, :3].unique().tolist() == [cells[0]]  # top-left
        assert grid[0, :2, 3:].unique().tolist() == [cells[1]]  # top-right
        assert grid[0, 2:, :3].unique().tolist() == [cells[2]]  # bottom-left
        assert grid[0, 2:, 3:].unique().tolist() == [cells[3]]  # bottom-right
    with pytest.raises(ValueError, match="3 negatives"):
        composite(positive, negatives[:2], 0)


def test_gridded_target_places_each_map_in_its_quadrant():
    maps = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(4, 2, 2)
    target = gridded_target(maps, torch.tensor([0, 1, 2, 3]))
    zero = torch.zeros(2, 2)
    block = maps[0]
    expected = [torch.cat([torch.cat([block, zero], 1), torch.cat([zero, zero], 1)]),
                torch.cat([torch.cat([zero, block], 1), torch.cat([zero, zero], 1)]),
                torch.cat([torch.cat([zero, zero], 1), torch.cat([block, zero], 1)]),
                torch.cat([torch.cat([zero, zero], 1), torch.cat([zero, block], 1)])]
    assert torch.equal(target, torch.stack(expected))


def test_differentiable_gradcam_is_the_normalised_elementwise_map():
    # GAP -> Linear: dS/dA = w_c / (h·w) everywhere, so the element-wise map of class 0 is A·2/(hw) -> A / ΣA.
    classifier = local_classifier()
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0] = torch.tensor([[1.0, 0.75], [0.5, 0.0]])  # activations 0.5, 0.25, 0, 0
    logits, maps = differentiable_gradcam(classifier, images, torch.tensor([0]))
    assert torch.allclose(logits, torch.tensor([[2 * 0.1875, -0.1875]]))
    assert torch.allclose(maps, torch.tensor([[[2 / 3, 1 / 3], [0.0, 0.0]]]) + 1e-8, atol=1e-7)
    _, negative = differentiable_gradcam(classifier, images, torch.tensor([1]))  # -A: all zero after the ReLU
    assert torch.allclose(negative, torch.full((1, 2, 2), 1e-8))
    assert torch.allclose(normalise_sum(torch.tensor([[[1.0, 3.0]]])), torch.tensor([[[0.25, 0.75]]]) + 1e-8)


def test_consistency_loss_is_zero_when_only_the_positive_cell_is_attended_with_the_same_pattern():
    classifier = local_classifier()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    black = torch.zeros(3, 8, 8)  # negatives: no activation at all
    quadrants = torch.tensor([0, 1, 2, 3])
    composites = torch.stack([composite(image, [black] * 3, int(q)) for image, q in zip(images, quadrants)])
    classes = torch.zeros(4, dtype=torch.long)
    _, image_maps = differentiable_gradcam(classifier, images, classes)
    _, composite_maps = differentiable_gradcam(classifier, composites, classes)
    loss = consistency_loss(image_maps, composite_maps, quadrants)
    assert float(loss.detach()) == pytest.approx(0.75e-8, abs=1e-9)  # only the eps the normalisation adds to empty cells
    shuffled = consistency_loss(image_maps, composite_maps, quadrants.roll(1))
    assert float(shuffled) > 1e-3  # the wrong cells: a real loss


def test_heldout_consistency_of_a_network_that_attends_only_to_its_class():
    from dataclasses import replace
    torch.manual_seed(4)
    active = [replace(make_sample(f"a{i}", (8, 8), [[0, 0, 7, 7]], [0], [False], None, 2), image=torch.rand(3, 8, 8))
              for i in range(4)]  # class 0: Local's feature fires (x_0 > 0.5), logit weight 2
    black = [replace(make_sample(f"b{i}", (8, 8), [[0, 0, 7, 7]], [1], [False], None, 2), image=torch.zeros(3, 8, 8))
             for i in range(4)]  # class 1: no activation, so its map is the uniform eps (no mass anywhere)
    classifier = local_classifier()
    before = torch.get_rng_state()
    scores = heldout_consistency(classifier, active + black, 2, multi_label=True, seed=0, batch_size=3)
    assert torch.equal(torch.get_rng_state(), before)  # the draws do not move the global RNG
    # class-0 images among black negatives: the composite's map is the image's in its cell (mass 1, L1 only the
    # eps of the empty cells); class-1 images: eps maps everywhere (mass 64 eps in the cell, L1 3/4 eps)
    assert scores["consistency_l1"] == pytest.approx(0.75e-8, abs=1e-9)
    assert scores["positive_cell_mass"] == pytest.approx(0.5, abs=1e-6)
    whole = heldout_consistency(classifier, active + black, 2, multi_label=True, seed=0)  # one batch of 8
    assert whole == pytest.approx(scores, rel=1e-5)  # batched == whole, same draws


def test_gradients_flow_through_both_maps_and_only_the_composites_when_detached():
    classifier = local_classifier()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 4, 4)
    composites = torch.rand(2, 3, 8, 8)
    classes, quadrants = torch.tensor([0, 0]), torch.tensor([1, 2])
    for detach in (False, True):
        inputs, grids = images.clone().requires_grad_(True), composites.clone().requires_grad_(True)
        classifier.zero_grad()
        _, image_maps = differentiable_gradcam(classifier, inputs, classes)
        _, composite_maps = differentiable_gradcam(classifier, grids, classes)
        consistency_loss(image_maps, composite_maps, quadrants, detach_target=detach).backward()
        assert grids.grad.abs().sum() > 0
        assert (inputs.grad is None) == detach
        assert classifier.model.features[0].weight.grad.abs().sum() > 0  # double backward reaches the weights


def test_lambda_is_the_papers_on_its_14x14_grid_and_scaled_by_cells_elsewhere():
    assert grid_weight(25.0, (14, 14)) == 25.0  # the ResNet presets: unchanged
    assert grid_weight(25.0, (16, 16)) == pytest.approx(25.0 * 256 / 196)  # small_cnn, 64 px: 32.65
    assert grid_weight(1.0, (13, 13)) == pytest.approx(169 / 196)  # AlexNet's composite grid, before upsampling
    # the weight it keeps: λ per cell x cells, i.e. on a map's total L1, is 25/196 on every grid
    assert grid_weight(25.0, (8, 8)) / 64 == grid_weight(25.0, (14, 14)) / 196


def test_training_step_is_the_classification_loss_plus_the_grid_weighed_l1():
    torch.manual_seed(3)
    module = ConsistencyModule(num_classes=4, width=4, layer="features", consistency_weight=25.0)
    samples = [make_sample(str(i), (32, 32), [[0, 0, 9, 9]], [i % 4], [False], None, 4) for i in range(4)]
    batch = collate_gridded([GriddedDataset(samples, 4, multi_label=False)[i] for i in range(4)])
    loss = module.training_step(batch, 0)  # train-mode BN: batch statistics, so recomputing gives the same maps
    logits, image_maps = differentiable_gradcam(module.classifier, batch.batch.images, batch.targets, "features")
    _, composite_maps = differentiable_gradcam(module.classifier, batch.composites, batch.targets, "features")
    assert composite_maps.shape == (4, 8, 8)  # 64 px composites, stride 8: 64 cells -> λ x 64/196
    l1 = consistency_loss(image_maps, composite_maps, batch.quadrants)
    expected = torch.nn.functional.cross_entropy(logits, batch.batch.labels.argmax(1)) + 25.0 * 64 / 196 * l1
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_gradient_norm_is_the_l2_norm_over_all_parameters():
    module = ConsistencyModule(num_classes=2, width=4, layer="features")
    params = [p for p in module.parameters() if p.requires_grad]
    loss = sum((p ** 2).sum() for p in params) / 2  # gradient = the parameters
    expected = torch.sqrt(sum((p.detach() ** 2).sum() for p in params))
    assert float(module.gradient_norm(loss)) == pytest.approx(float(expected), rel=1e-6)


def test_grids_that_do_not_tile_use_the_pixel_resolution_loss():
    classifier = local_classifier(kernel=3)  # no padding: 8 px -> 6x6, 16 px -> 14x14, which do not tile
    torch.manual_seed(2)
    images, composites = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    classes, quadrants = torch.tensor([0, 0]), torch.tensor([0, 3])
    _, image_maps = differentiable_gradcam(classifier, images, classes)
    _, composite_maps = differentiable_gradcam(classifier, composites, classes)
    assert image_maps.shape == (2, 6, 6) and composite_maps.shape == (2, 14, 14)
    with pytest.raises(ValueError, match="do not tile"):
        consistency_loss(image_maps, composite_maps, quadrants, resolution="feature")
    auto = consistency_loss(image_maps, composite_maps, quadrants, image_size=(8, 8))
    pixel = consistency_loss(image_maps, composite_maps, quadrants, resolution="pixel", image_size=(8, 8))
    up = torch.nn.functional.interpolate
    expected = (up(composite_maps[:, None], size=(16, 16), mode="bilinear")[:, 0]
                - gridded_target(up(image_maps[:, None], size=(8, 8), mode="bilinear")[:, 0], quadrants)).abs().mean()
    assert float(auto) == float(pixel) == pytest.approx(float(expected), rel=1e-6)


def test_global_max_pooling_replaces_the_average():
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", 3, width=4, pooling="max").eval()
    images = torch.rand(2, 3, 32, 32)
    model = classifier.model
    features = model.features(classifier.normalize(images))
    assert torch.allclose(classifier(images), model.head(features.amax((2, 3))), atol=1e-6)
    with pytest.raises(ValueError, match="global average pooling"):
        use_global_max_pooling(nn.Sequential(nn.Conv2d(3, 3, 1)))


# ---------------------------------------------------------------- negatives on generated fixtures

def coco_fixture(tmp_path: Path) -> COCODataset:
    """12 images of 8x8 with instance lists covering 1-3 of 4 classes (class 0 twice in some)."""
    instances = [[0], [1], [2], [3], [0, 1], [0, 0, 2], [1, 3], [2, 3], [0, 1, 2], [3], [1, 1], [2]]
    samples = [make_sample(str(i + 1), (8, 8), [[0, 0, 3, 3]] * len(c), c, [False] * len(c), None, len(CLASSES))
               for i, c in enumerate(instances)]
    write_coco(tmp_path / "instances.json", tmp_path / "images", samples, CLASSES)
    return COCODataset(tmp_path / "images", tmp_path / "instances.json")


def test_multi_label_negatives_never_hold_the_explained_class(tmp_path: Path):
    dataset = coco_fixture(tmp_path)
    gridded = GriddedDataset(dataset, len(CLASSES), multi_label=True, cache=tmp_path / "negatives.json")
    assert gridded.instances[5] == [0, 0, 2]
    torch.manual_seed(0)
    chosen = []
    for _ in range(20):
        for index in range(len(dataset)):
            target, negatives = gridded.negative_indices(index)
            assert target in gridded.instances[index]
            assert len(set(negatives)) == 3  # without replacement
            assert all(target not in gridded.instances[n] for n in negatives)
            chosen.append((index, target))
    # instance-weighted: image 5 has class 0 twice and class 2 once
    picks = [t for i, t in chosen if i == 5]
    assert picks.count(0) > picks.count(2)
    item = gridded[4]
    assert item.composite.shape == (3, 16, 16)
    batch = collate_gridded([gridded[0], gridded[1]])
    assert batch.composites.shape == (2, 3, 16, 16) and batch.targets.tolist() == [0, 1]


def test_negative_lists_are_cached_and_match_the_samples(tmp_path: Path):
    dataset = coco_fixture(tmp_path)
    cache = tmp_path / "cache.json"
    first = instance_labels(dataset, cache)
    assert first == [dataset[i].box_labels.tolist() for i in range(len(dataset))]
    assert cache.is_file()
    assert instance_labels(dataset, cache) == first
    lists = negative_lists(first, len(CLASSES))
    assert lists[0].tolist() == [1, 2, 3, 6, 7, 9, 10, 11]


def test_single_label_negatives_come_from_other_classes(tmp_path: Path):
    samples = [make_sample(str(i), (8, 8), [[0, 0, 3, 3]], [i % 4], [False], None, len(CLASSES)) for i in range(8)]
    gridded = GriddedDataset(samples, len(CLASSES), multi_label=False)
    torch.manual_seed(0)
    for index in range(8):
        target, negatives = gridded.negative_indices(index)
        assert target == index % 4
        assert len(negatives) == 3 and all(n % 4 != target for n in negatives)
    with pytest.raises(ValueError, match="exactly one"):
        GriddedDataset(samples + [make_sample("x", (8, 8), [[0, 0, 1, 1]] * 2, [0, 1], [False] * 2, None, 4)], 4,
                       multi_label=False)


# ---------------------------------------------------------------- the evaluation protocol in the engine

def test_explain_at_a_smaller_side_resizes_the_images_and_the_maps_back():
    from saliencylab import methods
    from saliencylab.bench.run import explain_at

    classifier = local_classifier()
    images = torch.zeros(1, 3, 4, 8)
    images[0, 0, :, :4] = 1.0  # the left half activates
    method = methods.build("gradcam_elementwise", classifier, layer="features")
    targets = torch.tensor([[0]])
    assert torch.equal(explain_at(method, images, targets, 4), method.attribute(images, targets))
    maps = explain_at(method, images, targets, 8)  # explained at 8x16, resized back to 4x8
    assert maps.shape == (1, 1, 4, 8)
    # element-wise Grad-CAM of GAP -> Linear: 2/(hw)·ReLU(x0 - 0.5) = 2/128·0.5 on the left, 0 on the right
    assert torch.allclose(maps[0, 0, :, :3], torch.full((4, 3), 1 / 128)) and maps[0, 0, :, 5:].abs().max() == 0


def test_classifier_f1_metrics_count_logits_above_zero():
    from saliencylab import metrics
    from saliencylab.metrics.registry import MetricInputs
    from saliencylab.types import Batch

    logits = torch.tensor([[1.0, -1.0, 0.0], [2.0, 3.0, -2.0]])  # predicted {0}, {0, 1}: logit 0 is not positive
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    model = nn.Module()
    model.forward = lambda images: logits
    classifier = Classifier(model, (0, 0, 0), (1, 1, 1))
    batch = Batch(torch.zeros(2, 3, 2, 2), labels, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2,
                  [torch.zeros(0, dtype=torch.bool)] * 2, None, ["x", "y"])
    inputs = MetricInputs(torch.zeros(2, 1, 2, 2), torch.tensor([[0], [1]]), batch, classifier)
    per_class, overall = metrics.get("classifier_f1_per_class"), metrics.get("classifier_f1_overall")
    counts = per_class.fn(inputs).double()
    # class 0: tp 1, fp 1; class 1: tp 1; class 2: fn 1 -> F1 2/3, 1, 0; pooled tp 2, fp 1, fn 1 -> 2/3
    assert per_class.reduce(counts, torch.zeros(2, 1)) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert overall.reduce(counts, torch.zeros(2, 1)) == pytest.approx(2 / 3)
    assert per_class.per == "dataset" and per_class.needs == {"model"}


# ---------------------------------------------------------------- tiny fits on ImageNet- and COCO-format fixtures

def test_tiny_fit_on_an_imagenet_format_fixture_through_the_command_line(tmp_path: Path, capsys):
    from saliencylab.cli import main
    from saliencylab.data.imagenet import ImageNetDataset
    from saliencylab.data.synthetic import SyntheticConfig
    from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
    from saliencylab.models.load import load_trained_classifier

    root = write_synthetic_imagenet(tmp_path / "data", SyntheticConfig(image_size=32, train=12, val=6, test=6),
                                    num_per_class_in_train_val=1, progress=False)
    metadata = root / "imagenet" / "metadata"
    assert main(["train-consistent", "--out", str(tmp_path / "model"), "--train-json", str(metadata / "train.json"),
                 "--val-json", str(metadata / "val.json"), "--image-size", "32", "--batch-size", "4", "--epochs", "1",
                 "--set", "width=4", "--set", "lr=0.01", "--device", "cpu", "--no-progress"]) == 0
    assert "val_top1" in capsys.readouterr().out
    loaded, description = load_trained_classifier(tmp_path / "model")
    val = ImageNetDataset(metadata / "val.json", size=32)
    images = torch.stack([val[i].image for i in range(len(val))])
    labels = torch.tensor([int(val[i].labels.argmax()) for i in range(len(val))])
    with torch.no_grad():
        top1 = float((loaded(images).argmax(1) == labels).float().mean())
    assert description["scores"]["val_top1"] == pytest.approx(top1)
    assert description["consistency"]["consistency_weight"] == 25.0 and description["data"]["image_size"] == 32
    assert (tmp_path / "model" / "checkpoints" / "last.ckpt").is_file()


def test_tiny_fit_on_a_coco_format_fixture_with_global_max_pooling(tmp_path: Path):
    from saliencylab import metrics
    from saliencylab.data.module import SaliencyDataModule
    from saliencylab.data.transforms import Resize
    from saliencylab.metrics.registry import MetricInputs
    from saliencylab.models.load import load_trained_classifier
    from saliencylab.training.consistency import fit_consistent
    from saliencylab.types import collate

    instances = [[0], [1], [2], [3], [0, 1], [0, 0, 2], [1, 3], [2, 3], [0, 1, 2], [3], [1, 1], [2]]
    samples = [make_sample(str(i + 1), (32, 32), [[4 * i % 24, 2, 4 * i % 24 + 7, 9]] * len(c), c, [False] * len(c),
                           None, len(CLASSES)) for i, c in enumerate(instances)]
    write_coco(tmp_path / "instances.json", tmp_path / "images", samples, CLASSES)
    dataset = COCODataset(tmp_path / "images", tmp_path / "instances.json", transform=Resize(32))
    datamodule = SaliencyDataModule(dataset, dataset, batch_size=4)
    _, scores = fit_consistent(datamodule, tmp_path / "model", num_classes=4, multi_label=True, max_epochs=2,
                               drop_last=True, negatives_cache=tmp_path / "negatives.json", progress=False,
                               accelerator="cpu", arch="small_cnn", width=4, layer="features", pooling="max",
                               consistency_weight=1.0, lr=0.01,
                               grad_norm_every=1)  # the diagnostic's extra backward passes inside a real fit
    assert (tmp_path / "negatives.json").is_file()
    # multi-label keeps the last epoch, as the original's COCO script (12 images, batch 4: 3 steps an epoch)
    (kept,) = (tmp_path / "model" / "checkpoints").glob("epoch=*")
    state = torch.load(kept, map_location="cpu", weights_only=True)["callbacks"]
    assert kept.name == "epoch=1-step=6.ckpt" and [s["monitor"] for k, s in state.items() if "ModelCheckpoint" in k] == [None]
    loaded, description = load_trained_classifier(tmp_path / "model")
    assert description["pooling"] == "max" and isinstance(loaded.model.pool, nn.AdaptiveMaxPool2d)
    batch = collate([dataset[i] for i in range(len(dataset))])
    inputs = MetricInputs(torch.zeros(len(batch), 1, 32, 32), torch.zeros(len(batch), 1, dtype=torch.long), batch,
                          loaded)
    metric = metrics.get("classifier_f1_overall")
    assert scores["val_f1_overall"] == pytest.approx(metric.reduce(metric.fn(inputs).double(), torch.zeros(1)), abs=1e-6)


def test_bench_speed_times_a_consistency_step_against_a_plain_step(tmp_path: Path, capsys):
    import json

    from saliencylab.cli import main

    assert main(["bench", "speed", "--consistency-step", "--size", "32", "--batch", "2", "--repeats", "3",
                 "--json", str(tmp_path / "steps.json")]) == 0
    rows = {row["step"]: row for row in json.loads((tmp_path / "steps.json").read_text())}
    assert set(rows) == {"plain", "consistency"}
    assert rows["plain"]["ratio"] == rows["plain"]["ratio_low"] == rows["plain"]["ratio_high"] == 1.0
    assert rows["consistency"]["seconds_per_step"] > 0 and "consistency" in capsys.readouterr().out
