"""The synthetic ground-truth scenes and their VOC / COCO exports."""
import json

import numpy as np
import pytest
import torch

from saliencylab.data import COCODataset, VOCDataset
from saliencylab.data.synthetic import (CLASSES, DIFFICULT_MIN_SIZE, SyntheticConfig, generate, render_scene,
                                        write_synthetic)
from saliencylab.types import BACKGROUND, VOID

SMALL = SyntheticConfig(image_size=48, train=6, val=3, test=5, seed=3)


def test_scenes_are_deterministic_by_seed():
    first, second = generate(SMALL), generate(SMALL)
    other = generate(SyntheticConfig(image_size=48, train=6, val=3, test=5, seed=4))
    for a, b in zip(first["test"], second["test"]):
        assert torch.equal(a.image, b.image) and torch.equal(a.segmentation, b.segmentation)
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first["test"], other["test"]))
    assert [s.image_id for s in first["train"] + first["val"] + first["test"]] == [f"{i:06d}" for i in range(1, 15)]


def test_ground_truth_is_consistent():
    rng = np.random.default_rng(0)
    config = SyntheticConfig(image_size=64)
    for index in range(40):
        sample = render_scene(rng, config, str(index))
        seg = sample.segmentation
        assert sample.image.shape == (3, 64, 64) and 0 <= sample.image.min() and sample.image.max() <= 1
        present = set(seg[seg >= 0].unique().tolist())
        assert present <= set(sample.box_labels.tolist())  # every labelled pixel belongs to a boxed class
        assert set(sample.box_labels.tolist()) == set(sample.labels.nonzero().flatten().tolist())
        assert set(seg.unique().tolist()) <= {BACKGROUND, VOID, *range(len(CLASSES))}
        for box, cls, difficult in zip(sample.boxes, sample.box_labels, sample.difficult):
            x1, y1, x2, y2 = box.long().tolist()
            inside = seg[y1:y2 + 1, x1:x2 + 1]
            small = max(x2 - x1, y2 - y1) + 1 < DIFFICULT_MIN_SIZE * 64
            assert small <= bool(difficult)  # tiny objects are difficult
            if not difficult:
                assert (inside == cls).any()  # a visible object has pixels of its class in its box


def test_void_band_lines_object_boundaries():
    rng = np.random.default_rng(1)
    sample = render_scene(rng, SyntheticConfig(image_size=64), "x")
    seg = sample.segmentation
    objects = seg >= 0
    background = seg == BACKGROUND
    # an object pixel never touches a background pixel directly: the VOID band is in between
    assert not (objects[:, 1:] & background[:, :-1]).any() and not (objects[1:] & background[:-1]).any()
    assert (seg == VOID).any()


def test_write_synthetic_roundtrips_through_the_real_loaders(tmp_path):
    root = write_synthetic(tmp_path / "set", SMALL, progress=False)
    splits = generate(SMALL)
    voc_test = VOCDataset(root / "voc", "test", CLASSES, segmentation_only=True)
    coco_test = COCODataset(root / "coco" / "test", root / "coco" / "annotations" / "instances_test.json")
    assert len(voc_test) == len(coco_test) == 5
    for written, voc, coco in zip(splits["test"], voc_test, coco_test):
        for loaded in (voc, coco):
            assert torch.equal(loaded.labels, written.labels)
            assert torch.equal(loaded.boxes, written.boxes)
            assert torch.equal(loaded.box_labels, written.box_labels)
            assert torch.equal(loaded.difficult, written.difficult)
            assert (loaded.image - written.image).abs().mean() < 0.03  # JPEG
        assert torch.equal(voc.segmentation, written.segmentation)
        # COCO has no VOID band, and difficult objects are exported as iscrowd, which reads back as VOID
        objects = written.segmentation >= 0
        crowd = torch.zeros_like(objects)
        for box, cls, difficult in zip(written.boxes.long(), written.box_labels, written.difficult):
            if difficult:  # the instance mask: pixels of its class inside its box
                inside = torch.zeros_like(objects)
                inside[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
                crowd |= inside & (written.segmentation == cls)
        assert torch.equal(coco.segmentation[objects & ~crowd], written.segmentation[objects & ~crowd])
        assert (coco.segmentation[objects & crowd] == VOID).all()
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 3


def test_write_synthetic_reuses_a_finished_set_and_rewrites_on_change(tmp_path):
    root = write_synthetic(tmp_path / "set", SMALL, progress=False)
    stamp = (root / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg").stat().st_mtime_ns
    write_synthetic(tmp_path / "set", SMALL, progress=False)
    assert (root / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg").stat().st_mtime_ns == stamp
    (root / "synthetic.json").write_text("{broken")  # an interrupted write leaves no valid marker
    write_synthetic(tmp_path / "set", SMALL, progress=False)
    assert json.loads((root / "synthetic.json").read_text())["image_size"] == 48


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 16}, "image_size must be >= 32"),
    ({"test": 0}, "at least one image"),
    ({"min_object_size": 0.5, "max_object_size": 0.3}, "object sizes"),
])
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)


def test_224_pixel_scenes_work():
    sample = render_scene(np.random.default_rng(5), SyntheticConfig(image_size=224), "big")
    assert sample.image.shape == (3, 224, 224) and sample.segmentation.shape == (224, 224)
    assert (sample.segmentation >= 0).sum() > 0.01 * 224 * 224
