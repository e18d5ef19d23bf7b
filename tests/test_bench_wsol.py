"""Known answers for the WSOL metrics of the registry and bench.wsol on hand-built 16x16 scenes, masks and a
colour classifier.

The classifier's logits are the image's channel means (identity normalisation), so its top-1 is the
brightest channel, and a crop of one uniform colour c gives logits c exactly (bicubic keeps constants).
Sample boxes are inclusive corners; the comments give the half-open boxes the metrics see.
"""
import math

import pytest
import torch
from torch import nn

from saliencylab.bench.run import REFERENCES, Row, reference_options, score_maps
from saliencylab.bench.wsol import BASELINES, BOX_COLUMNS, COLUMNS, paper_quirk_options, run_wsol, wsol_table
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.data.openimages import OpenImagesDataset
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.models.classifier import Classifier
from saliencylab import metrics
from saliencylab.models.zoo import build_classifier
from saliencylab.targets import from_multi_hot
from saliencylab.types import BACKGROUND, VOID, Sample, collate

LOG_Q = -math.log(2 + math.e)
"""log softmax of a class with logit 0 among logits (1,0,0) in any order (the class with logit 1: 1 + LOG_Q)."""


class ChannelMeans(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


CLASSIFIER = Classifier(ChannelMeans(), mean=(0, 0, 0), std=(1, 1, 1))


def sample(image_id: str, label: int, boxes: list, paint: list) -> Sample:
    """A black 16x16 image with (channel, rows, cols) slices painted 1."""
    image = torch.zeros(3, 16, 16)
    for channel, rows, cols in paint:
        image[channel, rows, cols] = 1.0
    return Sample(image=image, labels=torch.eye(3)[label],
                  boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  box_labels=torch.full((len(boxes),), label), difficult=torch.zeros(len(boxes), dtype=torch.bool),
                  image_id=image_id)


# A: red 8x8 square, inclusive (4,4,11,11) -> half-open (4,4,12,12), area 64; label red: top-1 correct.
A = sample("a", 0, [[4, 4, 11, 11]], [(0, slice(4, 12), slice(4, 12))])
# B: green band rows 0-7 -> (0,0,16,8), area 128; label blue, but top-1 is green: incorrect.
B = sample("b", 2, [[0, 0, 15, 7]], [(1, slice(0, 8), slice(None))])
# C: green 4x4 at the top left -> (0,0,4,4) and 8x8 at the bottom right -> (8,8,16,16); label green, correct.
C = sample("c", 1, [[0, 0, 3, 3], [8, 8, 15, 15]], [(1, slice(0, 4), slice(0, 4)), (1, slice(8, 16), slice(8, 16))])
SAMPLES = [A, B, C]


def hand_masks(batch) -> torch.Tensor:
    """A: 0.8 on its object, 0.2 elsewhere; B: 1 on rows 0-4 (80 px); C: 1 on rows 8-15, cols 10-15 (48 px)."""
    out = []
    for image_id in batch.image_ids:
        m = torch.zeros(16, 16)
        if image_id == "a":
            m[:] = 0.2
            m[4:12, 4:12] = 0.8
        elif image_id == "b":
            m[0:5] = 1.0
        else:
            m[8:16, 10:16] = 1.0
        out.append(m)
    return torch.stack(out)[:, None]


def score(samples: list[Sample], masks=hand_masks, baseline: str | None = None, box_acc: bool = False,
          **options) -> dict[str, torch.Tensor]:
    """Column -> (N,) per-image scores (box columns: (N,T) IoU curves) of ``masks(batch)`` or of a special row."""
    batch = collate(samples)
    targets = from_multi_hot(batch.labels)
    reference = None if baseline is None else REFERENCES[BASELINES[baseline]]
    maps = masks(batch) if reference is None else reference.masks(batch, targets)
    columns = {**COLUMNS, **(BOX_COLUMNS if box_acc else {})}
    scores = score_maps(maps, targets, batch, CLASSIFIER, list(columns.values()), maps_are_masks=True,
                        options={**options, **reference_options(reference)})
    return {column: scores[metric].squeeze(1) if scores[metric].shape[1] == 1 else scores[metric]
            for column, metric in columns.items()}


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-5)


def test_wsol_metrics_known_answers():
    values = score(SAMPLES)
    # A: mean 0.35 -> binarised = the object, box (4,4,12,12) = gt: IoU 1.
    # B: box (0,0,16,5), IoU 80/128 = 0.625 > 0.5 -> LE 0, but top-1 is wrong -> OM 1.
    # C: box (10,8,16,16): IoU 48/64 = 0.75 with the second box, 0 with the first.
    close(values["LE"], [0, 0, 0])
    close(values["OM"], [0, 1, 0])
    close(values["top1"], [1, 0, 1])
    # A: Σm·G = 64·0.8 = 51.2, Σm = 89.6: P = 4/7, R = 4/5 -> F1 = 2/3. B: P = 1, R = 80/128 -> 10/13.
    # C: box 1 F1 0; box 2 P = 1, R = 3/4 -> 6/7; F1 = max = 6/7, F1a = mean = 3/7.
    close(values["F1"], [2 / 3, 10 / 13, 6 / 7])
    close(values["F1a"], [2 / 3, 10 / 13, 3 / 7])
    # SM = SM1 - SM2: each crop is uniform: A red crop, label red: log p = 1 - log(e+2); B green crop, label
    # blue: log p = 0 - log(e+2); C green crop, label green: 1 - log(e+2). SM1 = log(box area / 256).
    sm1 = [math.log(64 / 256), math.log(80 / 256), math.log(48 / 256)]
    sm2 = [1 + LOG_Q, LOG_Q, 1 + LOG_Q]
    close(values["SM"], [a - b for a, b in zip(sm1, sm2)])
    close(values["sm_acc"], [1, 0, 1])
    # mask statistics: A's 64 px of 0.8 and 192 of 0.2; tv: 16 horizontal (of 240) and 16 vertical
    # neighbour pairs differ by 0.6 -> 2·16·0.36/240 = 0.048. B: 80 px of 1 -> entropy 0, tv: 16 of 240 vertical.
    close(values["binarized"], [64 / 256, 80 / 256, 48 / 256])
    close(values["avg_mask"], [0.35, 80 / 256, 48 / 256])
    close(values["entropy"], [-(64 * 0.8 * math.log2(0.8) + 192 * 0.2 * math.log2(0.2)) / 256, 0, 0])
    close(values["tv"], [0.048, 16 / 240, (8 + 6) / 240])  # C: 8 pairs across cols 9|10, 6 across rows 7|8
    # one image at a time: the same per-image scores
    for i, sample in enumerate(SAMPLES):
        for column, value in score([sample]).items():
            torch.testing.assert_close(value, values[column][i:i + 1], msg=column)


def test_max_box_acc_known_answers():
    # sweep τ = 0, 0.01, ..., 0.99, binarising m > τ·max(m).
    # A: max 0.8; τ·0.8 < 0.2 for τ < 0.25 -> the whole image, IoU 64/256 = 0.25 (25 thresholds);
    #    from τ = 0.25 on only the object: IoU 1 (75 thresholds).
    # B: box (0,0,16,5) at every τ: IoU 80/128 = 0.625. C: box (10,8,16,16): IoU 48/64 = 0.75.
    values = score(SAMPLES, box_acc=True)
    ious = values["MaxBoxAcc"]
    assert ious.shape == (3, 100)
    torch.testing.assert_close(ious[0], torch.tensor([0.25] * 25 + [1.0] * 75, dtype=torch.float64))
    torch.testing.assert_close(ious[1:], torch.tensor([[0.625], [0.75]], dtype=torch.float64).expand(2, 100))
    torch.testing.assert_close(values["MaxBoxAccV2"], ious)  # one component per mask: v2 sees the same boxes
    v1, v2 = (metrics.get(BOX_COLUMNS[c]) for c in ("MaxBoxAcc", "MaxBoxAccV2"))
    # δ = 0.5: all three from τ = 0.25 on -> 100; δ = 0.3 likewise; δ = 0.7: A and C -> 200/3
    assert v1.reduce(ious, torch.zeros(3, 1)) == pytest.approx(100)
    assert v2.reduce(ious, torch.zeros(3, 1)) == pytest.approx((100 + 100 + 200 / 3) / 3)
    # the center row's box (2,2,14,14) at every τ: a centred object IoU 1, A 64/144 -> 50 at δ 0.5 and 0.7
    centred = sample("centred", 0, [[2, 2, 13, 13]], [(0, slice(2, 14), slice(2, 14))])
    center = score([centred, A], baseline="center", box_acc=True)
    assert v1.reduce(center["MaxBoxAcc"], torch.zeros(2, 1)) == pytest.approx(50)
    assert v2.reduce(center["MaxBoxAccV2"], torch.zeros(2, 1)) == pytest.approx((100 + 50 + 50) / 3)


def test_strict_iou_threshold_box_conventions_and_original_arithmetic():
    # B with 1 on rows 0-3: box (0,0,16,4), IoU 64/128 = 0.5, not > 0.5 -> LE 1
    def four_rows(batch):
        masks = torch.zeros(1, 1, 16, 16)
        masks[..., 0:4, :] = 1.0
        return masks
    close(score([B], four_rows)["LE"], [1])
    # boxes_inclusive=False reads A's (4,4,11,11) as half-open: gt 7x7 = 49 px inside the 8x8 mask square.
    # IoU 49/64 -> LE 0; Σm·G = 49·0.8 = 39.2, P = 39.2/89.6 = 0.4375, R = 0.8 -> F1 = 0.7/1.2375.
    values = score([A], boxes_inclusive=False)
    close(values["LE"], [0])
    close(values["F1"], [0.7 / 1.2375])
    # one_pixel_smaller: A's predicted box becomes (4,4,11,11), area 49 -> SM1 = log(49/256)
    close(score([A], one_pixel_smaller=True)["SM"], [math.log(49 / 256) - (1 + LOG_Q)])
    assert paper_quirk_options(True) == {"boxes_inclusive": False, "one_pixel_smaller": True, "unclipped_area": True}


def test_baselines():
    # a full-image box: inclusive (0,0,15,15) -> (0,0,16,16); B's object, but label blue (top-1 wrong)
    full = sample("full", 2, [[0, 0, 15, 15]], [(1, slice(None), slice(None))])
    top = score([full, A], baseline="max")
    close(top["LE"], [0, 1])  # A: IoU 64/256
    close(top["OM"], [0, 1])  # the max row counts every image as correctly classified
    close(top["top1"], [0, 1])  # ... while top1 reports the classifier
    close(top["F1"], [2 / (2 + 1e-6), 2 * 0.25 / 1.25])  # A: P = 64/256, R = 1
    # SM2 of A's whole image: logits (.25,0,0); SM1 = log 1
    close(top["SM"], [-LOG_Q, -(0.25 - math.log(math.exp(0.25) + 2))])
    close(top["binarized"], [0, 0])  # a constant mask has no pixel above its mean

    low = score([full, A], baseline="min")
    close(low["LE"], [1, 1])
    close(low["F1"], [0, 0])
    close(low["SM"], [math.log(0.05) - math.log(1 / 3)] * 2)  # the empty box: area floor 0.05, black image
    close(low["avg_mask"], [0, 0])

    # center at 16 px: round(33·16/224) = 2 to round(191·16/224) = 14 -> box (2,2,14,14), area 144
    centred = sample("centred", 0, [[2, 2, 13, 13]], [(0, slice(2, 14), slice(2, 14))])
    center = score([centred, A], baseline="center")
    close(center["LE"], [0, 1])  # A: IoU 64/144 < 0.5
    close(center["avg_mask"], [144 / 256] * 2)
    close(center["SM"][:1], [math.log(144 / 256) - (1 + LOG_Q)])  # the crop is all red


@pytest.mark.parametrize("name", BASELINES)
def test_special_rows_count_every_image_as_correctly_classified(name):
    # the original's special modes set c = 1, so OM = LE. Label blue on green objects: top-1 wrong on
    # B, on a centred square and a full-image object (the center and max boxes localise both, IoU 1 or 144/256);
    # ground_truth localises all four.
    centred = sample("centred", 2, [[2, 2, 13, 13]], [(1, slice(2, 14), slice(2, 14))])
    full = sample("full", 2, [[0, 0, 15, 15]], [(1, slice(None), slice(None))])
    values = score([A, B, centred, full], baseline=name)
    close(values["top1"], [1, 0, 0, 0])
    localised = {"max": [1, 1, 0, 0], "min": [1, 1, 1, 1], "center": [1, 1, 0, 0], "ground_truth": [0, 0, 0, 0]}
    close(values["LE"], localised[name])
    torch.testing.assert_close(values["OM"], values["LE"])


def test_ground_truth_baseline_scores_the_union_of_the_boxes():
    values = score(SAMPLES, baseline="ground_truth")
    close(values["LE"], [0, 0, 0])  # C: the largest component is its 8x8 box, IoU 1 with it
    close(values["OM"], [0, 0, 0])  # B's top-1 is wrong, but special rows count every image as correct
    # C's mask is both boxes (80 px): against box 2 P = 64/80, R = 1 -> F1 8/9; box 1: P = 16/80 -> 1/3
    close(values["F1"], [2 / (2 + 1e-6), 2 / (2 + 1e-6), 8 / 9])
    close(values["F1a"], [2 / (2 + 1e-6), 2 / (2 + 1e-6), (8 / 9 + 1 / 3) / 2])
    close(values["avg_mask"], [64 / 256, 128 / 256, 80 / 256])
    # a box reaching past the left border: inclusive (-8,0,7,15) -> (-8,0,8,16), 256 px, 128 inside.
    outside = [sample("out", 0, [[-8, 0, 7, 15]], [(0, slice(None), slice(0, 8))])]
    close(score(outside, baseline="ground_truth")["LE"], [0])
    # the original divides by the unclipped area: IoU 128/256 = 0.5, not > 0.5
    close(score(outside, baseline="ground_truth", unclipped_area=True)["LE"], [1])


def test_errors():
    two_labels = sample("two", 0, [[0, 0, 3, 3]], [])
    two_labels.labels[1] = 1.0
    with pytest.raises(ValueError, match=r"single-label: image 'two' has 2 targets \[0, 1\]"):
        score([A, two_labels], lambda batch: torch.rand(2, 2, 16, 16))
    no_box = sample("nobox", 0, [], [])
    with pytest.raises(ValueError, match="WSOL metrics need ground-truth boxes, but image 'nobox' has none"):
        score([no_box], baseline="center")
    with pytest.raises(ValueError, match="unknown WSOL baseline\\(s\\) gaussian"):
        run_wsol(CLASSIFIER, [A], {}, "unused", baselines=("gaussian",))


def seg_sample(segmentation: list[list[int]]) -> Sample:
    seg = torch.tensor(segmentation)
    return Sample(image=torch.zeros(3, *seg.shape), labels=torch.eye(3)[0], segmentation=seg)


def pxap(samples: list[Sample], masks: torch.Tensor) -> float:
    batch = collate(samples)
    rows = score_maps(masks[:, None], torch.zeros(len(samples), 1, dtype=torch.long), batch, None, ["pxap"],
                      maps_are_masks=True)["pxap"]
    return metrics.get("pxap").reduce(rows, torch.zeros(len(samples), 1))


def test_pxap():
    P, N = 0, BACKGROUND
    perfect = seg_sample([[P, N, VOID], [P, N, VOID]])
    assert pxap([perfect], torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])) == pytest.approx(100)
    # scores: positives 0.95 and 0.35, negatives 0.65 and 0.05, VOID pixels 1.0 and 0.5 left out.
    # Sweeping down: at 0.95 P = 1, R = 1/2; at 0.65 P = 1/2 (R unchanged); at 0.35 P = 2/3, R = 1.
    # PxAP = 100·(1·1/2 + 2/3·1/2) = 250/3.
    masks = torch.tensor([[[0.95, 0.65, 1.0], [0.35, 0.05, 0.5]]])
    assert pxap([perfect], masks) == pytest.approx(250 / 3)
    # the same pixels as two images: the per-image histograms add up
    halves = [seg_sample([[P, N, VOID]]), seg_sample([[P, N, VOID]])]
    assert pxap(halves, torch.cat([masks[:, :1], masks[:, 1:]])) == pytest.approx(250 / 3)


def test_wsol_table():
    rows = {"center": {"LE": 0.5, "F1": 0.25, "images": 2}, "mine": {"LE": math.nan, "F1": 1.0, "images": 2,
                                                                      "PxAP": 50.0}}
    assert wsol_table(rows) == (
        "| method | LE ↓ | F1 ↑ | images | PxAP ↑ |\n"
        "|---|---:|---:|---:|---:|\n"
        "| center | 0.5000 | 0.2500 | 2 | – |\n"
        "| mine | – | 1.0000 | 2 | 50.0000 |\n")


def test_end_to_end_on_synthetic_imagenet(tmp_path):
    config = SyntheticConfig(image_size=32, train=6, val=6, test=6, seed=3)
    root = write_synthetic_imagenet(tmp_path, config, num_per_class_in_train_val=1, progress=False)
    meta = root / "imagenet" / "metadata"
    val = ImageNetDataset(meta / "val.json", meta / "val_bboxes.json", size=32)
    test = OpenImagesDataset(root / "openimages" / "dataset", root / "openimages" / "metadata", size=32)
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", 6, width=4)
    rows = run_wsol(classifier, val, {"gradcam": Row("gradcam")}, tmp_path / "bench", baselines=("center",), test=test,
                    batch_size=4, max_box_acc=True, progress=False)
    for row in rows.values():
        assert list(row)[:len(COLUMNS)] == list(COLUMNS) and row["images"] == 6
        for name in ("LE", "OM", "F1", "F1a", "binarized", "avg_mask", "entropy"):
            assert 0 <= row[name] <= 1, name
        assert 0 <= row["top1"] <= 100 and 0 <= row["sm_acc"] <= 100 and 0 <= row["MaxBoxAcc"] <= 100
        assert row["tv"] >= 0 and 0 <= row["PxAP"] <= 100
    assert rows["center"]["avg_mask"] == pytest.approx((27 - 5) ** 2 / 32 ** 2)  # box 5:27 at 32 px
    assert rows["center"]["top1"] == rows["gradcam"]["top1"]  # the classifier's, the same for every row
    assert wsol_table(rows).count("\n") == 4
