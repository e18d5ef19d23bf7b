"""The metric registry: one call signature, declared needs, known answers through MetricInputs."""
import math

import pytest
import torch
from torch import nn

from saliencylab import Classifier, metrics
from saliencylab.metrics import functional as F
from saliencylab.metrics.registry import MetricInputs, reduce_class_mean, reduce_pxap, register
from saliencylab.types import BACKGROUND, VOID, Batch


def one_image_batch() -> Batch:
    seg = torch.full((1, 4, 4), BACKGROUND)
    seg[0, 1:3, 1:3] = 0  # a 2x2 object of class 0 ...
    seg[0, 0, 1:3] = VOID  # ... with a VOID border above it
    return Batch(images=torch.full((1, 3, 4, 4), 0.5), labels=torch.tensor([[1.0, 0.0]]),
                 boxes=[torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])],
                 box_labels=[torch.tensor([0, 0])], difficult=[torch.tensor([False, False])],
                 segmentation=seg, image_ids=["a"])


def constant_classifier(side: int = 4) -> Classifier:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, 2))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax (1/4, 3/4) for every image
    return Classifier(model, (0.5, 0.5, 0.5), (1, 1, 1))


def ideal_inputs(**options) -> MetricInputs:
    batch = one_image_batch()
    ideal = (batch.segmentation == 0).float()[:, None]  # the object itself, as a mask
    return MetricInputs(ideal, torch.tensor([[0]]), batch, constant_classifier(), maps_are_masks=True, options=options)


def score(name: str, inputs: MetricInputs) -> float:
    return float(metrics.get(name).fn(inputs)[0, 0])


def test_registry_declares_direction_needs_and_shape():
    names = metrics.names()
    assert names[:4] == ["pointing_game", "pointing_game_plain", "stochastic_pointing_game", "energy"]
    assert {"mean_f1", "saliency_metric", "localization_error", "official_localization_error", "pxap"} <= set(names)
    assert metrics.get("background_coverage").higher_is_better is False
    assert metrics.get("mask_mean").higher_is_better is None  # a statistic
    assert metrics.get("saliency_metric").needs == {"model"}
    assert metrics.get("official_localization_error").needs == {"boxes", "single_label", "model"}
    assert metrics.get("pointing_game").reduce is reduce_class_mean and metrics.get("pxap").per == "dataset"
    with pytest.raises(KeyError, match="known metrics: pointing_game, "):
        metrics.get("gini")
    with pytest.raises(ValueError, match="unknown input"):
        register("x", higher_is_better=True, needs={"telepathy"}, description="")


def test_default_protocol_leaves_void_out():
    inputs = ideal_inputs()
    assert score("mean_f1", inputs) == pytest.approx(1.0) and score("soft_iou", inputs) == pytest.approx(1.0)
    # saliency metric: log(max(area, 0.05)) − log p(class 0) with area 4/16 and p = 1/4
    assert score("saliency_metric", inputs) == pytest.approx(math.log(4 / 16) - math.log(1 / 4))
    assert score("pointing_game", inputs) == 1.0 and score("energy", inputs) == pytest.approx(1.0)


def test_original_protocol_counts_void_as_object_and_instances_twice():
    inputs = ideal_inputs(original_protocol=True)
    # the ideal mask (4 object pixels) against object ∪ void (6 pixels): IoU 4/6
    assert score("soft_iou", inputs) == pytest.approx(4 / 6)
    assert score("saliency_metric", inputs) == pytest.approx(math.log(4 / 16) - math.log(2 / 4))


def test_raw_maps_are_min_max_normalised_before_the_segmentation_suite():
    inputs = ideal_inputs()
    scaled = MetricInputs(inputs.maps * 7 - 3, inputs.targets, inputs.batch, inputs.classifier)
    assert score("soft_iou", scaled) == pytest.approx(1.0, abs=1e-6)
    unnormalised = MetricInputs(inputs.maps * 0.5, inputs.targets, inputs.batch, inputs.classifier,
                                maps_are_masks=True)
    assert score("soft_iou", unnormalised) == pytest.approx(0.5)  # a mask is used as it is


def test_wsol_metrics_on_a_hand_built_box():
    batch = Batch(images=torch.zeros(2, 3, 10, 10), labels=torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                  boxes=[torch.tensor([[2.0, 2.0, 5.0, 5.0]])] * 2, box_labels=[torch.tensor([0])] * 2,
                  difficult=[torch.tensor([False])] * 2, segmentation=None, image_ids=["hit", "miss"])
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 2:6, 2:6] = 1.0  # exactly the inclusive box 2..5
    maps[1, 0, 7:9, 7:9] = 1.0  # elsewhere
    wrong = constant_classifier(10)  # predicts class 1 for every image: top-1 wrong
    inputs = MetricInputs(maps, torch.tensor([[0], [0]]), batch, wrong)
    assert metrics.get("localization_error").fn(inputs).flatten().tolist() == [0.0, 1.0]
    assert metrics.get("official_localization_error").fn(inputs).flatten().tolist() == [1.0, 1.0]
    assert metrics.get("box_f1").fn(inputs)[0, 0] == pytest.approx(1.0)
    # a reference row (WSOL's special rows) counts every image as correctly classified: OM = LE
    reference = MetricInputs(maps, torch.tensor([[0], [0]]), batch, wrong, options={"reference": True})
    assert metrics.get("official_localization_error").fn(reference).flatten().tolist() == [0.0, 1.0]


def test_wsol_metrics_refuse_multi_label_images():
    batch = one_image_batch()
    inputs = MetricInputs(torch.rand(1, 2, 4, 4), torch.tensor([[0, 1]]), batch, constant_classifier())
    with pytest.raises(ValueError, match="single-label: image 'a' has 2 targets"):
        metrics.get("localization_error").fn(inputs)


def test_pxap_rows_sum_to_the_dataset_value():
    generator = torch.Generator().manual_seed(0)
    seg = torch.full((3, 8, 8), BACKGROUND)
    seg[:, 2:5, 2:6] = 0
    seg[2, 0, :] = VOID
    batch = Batch(images=torch.zeros(3, 3, 8, 8), labels=torch.tensor([[1.0, 0.0]] * 3), boxes=[torch.zeros(0, 4)] * 3,
                  box_labels=[torch.zeros(0, dtype=torch.long)] * 3, difficult=[torch.zeros(0, dtype=torch.bool)] * 3,
                  segmentation=seg, image_ids=["a", "b", "c"])
    maps = torch.rand(3, 1, 8, 8, generator=generator)
    rows = metrics.get("pxap").fn(MetricInputs(maps, torch.zeros(3, 1, dtype=torch.long), batch, maps_are_masks=True))
    expected = metrics.wsol.pixel_average_precision(maps[:, 0], seg >= 0, seg == VOID)
    assert reduce_pxap(rows.double(), torch.zeros(3, 1)) == pytest.approx(expected)
    assert reduce_pxap(rows[:2].double(), torch.zeros(2, 1)) == pytest.approx(
        metrics.wsol.pixel_average_precision(maps[:2, 0], seg[:2] >= 0, seg[:2] == VOID))


def test_a_new_metric_is_one_function_and_one_registration():
    from saliencylab.metrics import registry

    @register("peak_value", higher_is_better=True, per="target", description="the map's maximum")
    def _peak(inputs: MetricInputs) -> torch.Tensor:
        return inputs.maps.flatten(2).amax(-1)

    try:
        inputs = ideal_inputs()
        assert score("peak_value", inputs) == 1.0 and "peak_value" in metrics.names()
    finally:
        registry._REGISTRY.pop("peak_value")


def test_stochastic_pointing_game_is_seeded_by_the_inputs():
    maps = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    batch = Batch(images=torch.zeros(2, 3, 16, 16), labels=torch.tensor([[1.0]] * 2), boxes=[torch.zeros(0, 4)] * 2,
                  box_labels=[torch.zeros(0, dtype=torch.long)] * 2, difficult=[torch.zeros(0, dtype=torch.bool)] * 2,
                  segmentation=torch.zeros(2, 16, 16, dtype=torch.long), image_ids=["a", "b"])
    run = [metrics.get("stochastic_pointing_game").fn(MetricInputs(maps, torch.zeros(2, 1, dtype=torch.long), batch,
                                                                   seed=s, options={"tolerance": 1}))
           for s in (3, 3)]
    torch.testing.assert_close(run[0], run[1])
    expected = F.stochastic_pointing_game(maps, torch.ones(2, 1, 16, 16, dtype=torch.bool), tolerance=1, seed=3)
    torch.testing.assert_close(run[0], expected)


def test_max_box_acc_rows_reduce_to_the_dataset_value():
    batch = Batch(images=torch.zeros(2, 3, 10, 10), labels=torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                  boxes=[torch.tensor([[2.0, 2.0, 5.0, 5.0]])] * 2, box_labels=[torch.tensor([0])] * 2,
                  difficult=[torch.tensor([False])] * 2, segmentation=None, image_ids=["hit", "miss"])
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 2:6, 2:6] = 1.0  # the box itself: IoU 1 at every threshold
    maps[1, 0, 7:9, 7:9] = 1.0  # a blob elsewhere: IoU 0
    maps[1, 0, 2:6, 2:4] = 0.5  # plus half the box at half strength: IoU 0.5 below τ = 0.5
    inputs = MetricInputs(maps, torch.tensor([[0], [0]]), batch, maps_are_masks=True)
    v1, v2 = (metrics.get(name) for name in ("max_box_acc", "max_box_acc_v2"))
    # v1 takes the largest component: image 2's half box (8 px) beats the blob (4 px) while τ < 0.5
    assert v1.reduce(v1.fn(inputs), inputs.targets) == pytest.approx(100.0)
    # v2: every component is a candidate; IoU 0.5 passes δ 0.3 and 0.5, not 0.7 -> (100 + 100 + 50) / 3
    assert v2.reduce(v2.fn(inputs), inputs.targets) == pytest.approx(250 / 3)
