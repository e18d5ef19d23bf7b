"""Ground-truth masks from segmentation maps and boxes."""
import pytest
import torch

from saliencylab.metrics import ground_truth as G
from saliencylab.types import BACKGROUND, VOID

B_, V_ = BACKGROUND, VOID
SEG = torch.tensor([[[2, 2, B_],
                     [V_, 0, B_],
                     [0, 0, 2]]])


def test_class_masks_from_segmentation():
    masks = G.class_masks_from_segmentation(SEG, torch.tensor([[2, 0, -1]]))
    assert masks.shape == (1, 3, 3, 3) and masks.dtype == torch.bool
    assert masks[0, 0].tolist() == [[True, True, False], [False, False, False], [False, False, True]]
    assert masks[0, 1].tolist() == [[False, False, False], [False, True, False], [True, True, False]]
    assert not masks[0, 2].any()  # padding (-1) must not select BACKGROUND (-1) pixels


def test_void_and_foreground():
    assert G.void_mask(SEG).tolist() == [[[[False, False, False], [True, False, False], [False, False, False]]]]
    assert G.foreground(SEG).tolist() == [[[[True, True, False], [False, True, False], [True, True, True]]]]


def test_segmentation_errors():
    with pytest.raises(ValueError, match=r"integer class map \(B,H,W\)"):
        G.void_mask(SEG.float())
    with pytest.raises(ValueError, match="rows"):
        G.class_masks_from_segmentation(SEG, torch.tensor([[0], [1]]))


def test_class_masks_from_boxes_union_inclusive_and_clipped():
    boxes = [torch.tensor([[1.0, 1.0, 2.0, 3.0],      # class 0: x 1..2, y 1..3
                           [4.0, 0.0, 9.0, 0.0],      # class 0: x 4..5 after clipping, y 0
                           [0.0, 0.0, 0.0, 0.0]]),    # class 1: the single pixel (0,0)
             torch.zeros(0, 4)]                      # second image: no boxes
    labels = [torch.tensor([0, 0, 1]), torch.zeros(0, dtype=torch.long)]
    targets = torch.tensor([[0, -1], [0, -1]])
    masks = G.class_masks_from_boxes(boxes, labels, targets, (5, 6))
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[1:4, 1:3] = True
    expected[0, 4:6] = True
    assert masks.shape == (2, 2, 5, 6)
    assert torch.equal(masks[0, 0], expected)
    assert not masks[0, 1].any() and not masks[1].any()


def test_class_masks_from_boxes_rounds_fractional_corners():
    masks = G.class_masks_from_boxes([torch.tensor([[0.6, 0.4, 1.4, 1.6]])], [torch.tensor([3])],
                                     torch.tensor([[3]]), (3, 3))
    # rounded to x 1..1, y 0..2
    assert masks[0, 0].tolist() == [[False, True, False]] * 3


def test_boxes_errors():
    with pytest.raises(ValueError, match=r"\(N,4\)"):
        G.class_masks_from_boxes([torch.zeros(2, 3)], [torch.zeros(2, dtype=torch.long)], torch.tensor([[0]]), (4, 4))
    with pytest.raises(ValueError, match="one tensor per image"):
        G.class_masks_from_boxes([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)] * 2,
                                 torch.tensor([[0]]), (4, 4))


def test_all_difficult():
    labels = [torch.tensor([3, 3, 5, 5]), torch.tensor([3])]
    difficult = [torch.tensor([True, True, True, False]), torch.tensor([False])]
    targets = torch.tensor([[3, 5, 7, -1], [3, -1, -1, -1]])
    skip = G.all_difficult(labels, difficult, targets)
    # image 0: class 3 all difficult, class 5 mixed, class 7 has no box, padding
    assert skip.tolist() == [[True, False, False, False], [False, False, False, False]]
