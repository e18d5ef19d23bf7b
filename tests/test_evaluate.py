"""The scoring protocol of the benchmark on a hand-built batch."""
import math

import pytest
import torch
from torch import nn

from saliencylab import Classifier
from saliencylab.bench.evaluate import REFERENCES, Scores, evaluate
from saliencylab.types import BACKGROUND, VOID, Batch


def one_image_batch() -> Batch:
    seg = torch.full((1, 4, 4), BACKGROUND)
    seg[0, 1:3, 1:3] = 0  # a 2x2 object of class 0 ...
    seg[0, 0, 1:3] = VOID  # ... with a VOID border above it
    return Batch(images=torch.full((1, 3, 4, 4), 0.5), labels=torch.tensor([[1.0, 0.0]]),
                 boxes=[torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])],
                 box_labels=[torch.tensor([0, 0])], difficult=[torch.tensor([False, False])],
                 segmentation=seg, image_ids=["a"])


def constant_classifier() -> Classifier:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax (1/4, 3/4) for every image
    return Classifier(model, (0.5, 0.5, 0.5), (1, 1, 1))


def run(original: bool) -> dict[str, float]:
    scores = evaluate(lambda batch, _t: REFERENCES["ideal"](batch), constant_classifier(), [one_image_batch()],
                      per_image_masks=True, original_protocol=original)
    return scores.summary(num_classes=2)


def test_default_protocol_leaves_void_out():
    scores = run(original=False)
    assert scores["mean_f1"] == pytest.approx(1.0) and scores["soft_iou"] == pytest.approx(1.0)
    # saliency metric: log(max(area, 0.05)) − log p(class 0) with area 4/16 and p = 1/4
    assert scores["saliency_metric"] == pytest.approx(math.log(4 / 16) - math.log(1 / 4))


def test_original_protocol_counts_void_as_object_and_instances_twice():
    scores = run(original=True)
    # the ideal mask (4 object pixels) against object ∪ void (6 pixels): IoU 4/6
    assert scores["soft_iou"] == pytest.approx(4 / 6)
    assert scores["saliency_metric"] == pytest.approx(math.log(4 / 16) - math.log(2 / 4))


def test_summary_pads_ragged_batches_and_averages_pointing_per_class():
    scores = Scores()
    scores.add("pointing_game", torch.tensor([[1.0, 0.0]]))
    scores.targets.append(torch.tensor([[0, 1]]))
    scores.add("pointing_game", torch.tensor([[1.0]]))
    scores.targets.append(torch.tensor([[0]]))
    summary = scores.summary(num_classes=2)
    assert summary["pointing_game"] == pytest.approx(0.5)  # class 0: 2/2, class 1: 0/1
    assert math.isnan(summary["energy"])
