"""Sample transforms: known answers for boxes and masks, round trips, and box/mask consistency."""
from __future__ import annotations

import pytest
import torch

from saliencylab.data import Compose, RandomHorizontalFlip, Resize
from saliencylab.types import BACKGROUND, VOID, Sample


def rectangle_sample(hw: tuple[int, int], box: list[int], label: int = 1) -> Sample:
    """A random image with one box whose mask fills it exactly (inclusive corners); void in the top-left pixel."""
    x1, y1, x2, y2 = box
    seg = torch.full(hw, BACKGROUND, dtype=torch.long)
    seg[y1:y2 + 1, x1:x2 + 1] = label
    seg[0, 0] = VOID
    return Sample(image=torch.rand(3, *hw), labels=torch.tensor([0.0, 1.0]), boxes=torch.tensor([box], dtype=torch.float32),
                  box_labels=torch.tensor([label]), difficult=torch.tensor([True]), segmentation=seg, image_id="r")


def test_flip_known_answer():
    sample = rectangle_sample((4, 6), [1, 0, 2, 1])
    flipped = RandomHorizontalFlip(p=1.0)(sample)
    assert flipped.boxes.tolist() == [[3, 0, 4, 1]]  # columns 1..2 of 6 -> columns 3..4
    assert torch.equal(flipped.image, sample.image.flip(-1))
    assert torch.equal(flipped.segmentation, sample.segmentation.flip(-1))
    assert torch.equal(flipped.box_labels, sample.box_labels) and torch.equal(flipped.difficult, sample.difficult)
    assert flipped.image_id == "r" and torch.equal(flipped.labels, sample.labels)


def test_flip_twice_is_identity_and_p_zero_does_nothing():
    sample = rectangle_sample((7, 9), [2, 1, 5, 6])
    flip = RandomHorizontalFlip(p=1.0)
    twice = flip(flip(sample))
    assert torch.equal(twice.image, sample.image)
    assert torch.equal(twice.boxes, sample.boxes)
    assert torch.equal(twice.segmentation, sample.segmentation)
    assert RandomHorizontalFlip(p=0.0)(sample) is sample


def test_flip_follows_torch_seed():
    sample = rectangle_sample((4, 4), [0, 0, 1, 1])
    flip = RandomHorizontalFlip(p=0.5)
    torch.manual_seed(0)
    first = [flip(sample).boxes[0, 0].item() for _ in range(40)]
    torch.manual_seed(0)
    assert [flip(sample).boxes[0, 0].item() for _ in range(40)] == first
    assert 10 < first.count(2.0) < 30  # flipped about half the time


@pytest.mark.parametrize("size, box, expected_box, expected_rows, expected_cols", [
    (4, [4, 2, 7, 5], [2, 1, 3, 2], (1, 2), (2, 3)),  # 8x8 -> 4x4, exact halving
    (16, [4, 2, 7, 5], [8, 4, 15, 11], (4, 11), (8, 15)),  # 8x8 -> 16x16, exact doubling
    ((4, 16), [4, 2, 7, 5], [8, 1, 15, 2], (1, 2), (8, 15)),  # (H,W): halve rows, double columns
])
def test_resize_known_answers(size, box, expected_box, expected_rows, expected_cols):
    out = Resize(size)(rectangle_sample((8, 8), box))
    assert out.boxes.tolist() == [expected_box]
    rows, cols = torch.nonzero(out.segmentation == 1, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == expected_rows
    assert (cols.min().item(), cols.max().item()) == expected_cols
    h, w = out.segmentation.shape
    assert out.image.shape == (3, h, w) and h == (size if isinstance(size, int) else size[0])
    assert (out.segmentation == 1).sum() == (expected_rows[1] - expected_rows[0] + 1) * (expected_cols[1] - expected_cols[0] + 1)


@pytest.mark.parametrize("size", [(37, 23), (5, 50), 13, 61])
def test_resized_box_still_encloses_its_mask(size):
    torch.manual_seed(1)
    for _ in range(10):
        x1, x2 = sorted(torch.randint(0, 30, (2,)).tolist())
        y1, y2 = sorted(torch.randint(0, 20, (2,)).tolist())
        out = Resize(size)(rectangle_sample((20, 30), [x1, y1, x2, y2]))
        bx1, by1, bx2, by2 = out.boxes[0].tolist()
        rows, cols = torch.nonzero(out.segmentation == 1, as_tuple=True)
        if rows.numel() == 0:  # a thin box can fall between the sampled pixel centres when shrinking
            continue
        # pixel centres (i + 0.5) of the mask lie inside the box's continuous extent [x1, x2 + 1]
        assert bx1 <= cols.min() + 0.5 and cols.max() + 0.5 <= bx2 + 1
        assert by1 <= rows.min() + 0.5 and rows.max() + 0.5 <= by2 + 1
        # and the box is tight: no more than one pixel beyond the mask on any side
        assert cols.min() - bx1 <= 1 and bx2 - cols.max() <= 1
        assert rows.min() - by1 <= 1 and by2 - rows.max() <= 1


def test_resize_keeps_types_ranges_and_labels():
    sample = rectangle_sample((10, 14), [3, 2, 9, 7])
    out = Resize((6, 9))(sample)
    assert out.image.dtype == torch.float32 and 0 <= out.image.min() and out.image.max() <= 1
    assert out.segmentation.dtype == torch.int64
    assert set(out.segmentation.unique().tolist()) == {VOID, BACKGROUND, 1}
    assert out.boxes.dtype == torch.float32
    assert torch.equal(out.labels, sample.labels) and torch.equal(out.difficult, sample.difficult)
    constant = Sample(image=torch.full((3, 10, 14), 0.25), labels=torch.zeros(2))
    resized = Resize(5)(constant)
    assert resized.segmentation is None and resized.boxes.shape == (0, 4)
    assert torch.allclose(resized.image, torch.full((3, 5, 5), 0.25))


def test_compose_applies_in_order():
    sample = rectangle_sample((8, 8), [4, 2, 7, 5])
    out = Compose([Resize(4), RandomHorizontalFlip(p=1.0)])(sample)
    assert out.boxes.tolist() == [[0, 1, 1, 2]]  # resized to columns 2..3 of 4, then mirrored
    assert torch.equal(out.segmentation, Resize(4)(sample).segmentation.flip(-1))
