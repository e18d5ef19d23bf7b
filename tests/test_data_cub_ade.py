"""CUB-200-2011 and ADE20K formats (paper 003): fixtures written in the real layouts load back exactly;
keypoints and object maps follow the image's resize and crop; the synthetic sets' ambiguities are recovered."""
import numpy as np
import pytest
import torch

from saliencylab.data.ade20k import ADE20KDataset, write_ade20k
from saliencylab.data.cub import CUB_PARTS, CUBDataset, map_keypoints, write_cub
from saliencylab.data.formats import load_dataset
from saliencylab.data.synthetic_ambiguity import (SCENE_OBJECTS, SHAPES, AmbiguityConfig, bird_attributes, bird_looks,
                                                  shared_bird_parts, shared_scene_objects, write_synthetic_birds,
                                                  write_synthetic_scenes)
from saliencylab.insecurity.ground_truth import common_objects, common_parts, object_fractions


def test_keypoints_follow_resize_and_center_crop():
    # 40x30 image, Resize(32): 42x32, CenterCrop(32): left 5, top 0
    points, inside = map_keypoints(torch.tensor([[10.0, 15.0], [1.0, 2.0], [39.0, 29.0]]), 40, 30, 32, 32)
    torch.testing.assert_close(points[0], torch.tensor([10.5 * 42 / 40 - 5.5, 15.5 * 32 / 30 - 0.5]))
    assert inside.tolist() == [True, False, False]  # x = 1 maps to -3.9, x = 39 to 36.5: outside the crop


def _cub_fixture(root):
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 40).expand(30, 40)
    images = [torch.stack([ramp, 1 - ramp, torch.full((30, 40), i / 5)]) for i in range(5)]  # smooth: JPEG keeps it
    keypoints = [torch.rand(15, 2) * torch.tensor([39.0, 29.0]) for _ in range(5)]
    keypoints = [(k * 100).round() / 100 for k in keypoints]
    visible = [torch.rand(15) > 0.3 for _ in range(5)]
    attributes = np.round(np.random.default_rng(0).random((3, 312)) * 100, 4)
    write_cub(root, images, [0, 1, 2, 1, 0], keypoints, visible, [True, True, True, False, False],
              ["alpha", "beta", "gamma"], attributes)
    return images, keypoints, visible, attributes


def test_cub_fixture_loads_back_exactly(tmp_path):
    images, keypoints, visible, attributes = _cub_fixture(tmp_path)
    test = CUBDataset(tmp_path, "test", image_size=30, resize=30)
    assert test.ids == ["4", "5"] and test.class_names == ("001.alpha", "002.beta", "003.gamma")
    assert [int(test[i].labels.argmax()) for i in range(2)] == [1, 0]
    assert torch.equal(test.keypoints["4"][visible[3]], keypoints[3][visible[3]])
    assert torch.equal(test.visible["4"], visible[3])
    np.testing.assert_array_equal(test.attributes(), attributes)
    train, val = CUBDataset(tmp_path, "train", image_size=30), CUBDataset(tmp_path, "val", image_size=30)
    assert train.ids == ["1", "2", "3"] and val.ids == []  # 10 % of 3 training images rounds to none
    points, seen = test.parts(0)  # 40x30 -> Resize(30): 40x30, CenterCrop(30): left 5
    expected, inside = map_keypoints(keypoints[3], 40, 30, 30, 30)
    torch.testing.assert_close(points[visible[3]], expected[visible[3]])  # hidden parts are written as 0 0 0
    assert torch.equal(seen, visible[3] & inside)
    assert test[0].image.shape == (3, 30, 30)
    assert (test[0].image - images[3][:, :, 5:35]).abs().max() < 0.03  # JPEG quality 95
    assert len(load_dataset(f"cub:{tmp_path}", class_names=test.class_names, image_size=30)) == 2


def test_cub_errors_name_the_file(tmp_path):
    _cub_fixture(tmp_path)
    (tmp_path / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="train_test_split.txt has no line"):
        CUBDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="images.txt"):
        CUBDataset(tmp_path / "missing")


def test_ade20k_fixture_loads_back_exactly(tmp_path):
    torch.manual_seed(1)
    images = [torch.rand(3, 16, 16) for _ in range(4)]
    objects = [torch.randint(0, 4, (16, 16)) for _ in range(4)]
    write_ade20k(tmp_path, images, objects, ["kitchen", "beach", "beach", "zoo"], [True, True, False, False],
                 ["wall", "floor", "tree"])
    test = ADE20KDataset(tmp_path, "test", image_size=16, resize=16)
    assert test.class_names == ("beach", "kitchen") and test.ids == ["ADE_val_00000001"]  # zoo: not in training
    assert int(test[0].labels.argmax()) == 0 and test.object_names == ("wall", "floor", "tree")
    assert torch.equal(test.objects(0), objects[2])
    assert test.objects_present(0) == set(objects[2].unique().tolist()) - {0}
    lines = (tmp_path / "objectInfo150.txt").read_text().splitlines()
    assert lines[0] == "Idx\tRatio\tTrain\tVal\tName" and lines[3].endswith("\ttree")
    upsampled = ADE20KDataset(tmp_path, "test", image_size=32, resize=32).objects(0)
    assert torch.equal(upsampled, objects[2].repeat_interleave(2, 0).repeat_interleave(2, 1))  # nearest, not np.resize
    assert len(load_dataset(f"ade20k:{tmp_path}", class_names=test.class_names, image_size=16,
                            options={"split": "train"})) == 2


def test_synthetic_birds_recover_their_shared_parts(tmp_path):
    config = AmbiguityConfig(image_size=48, train=12, test=6, classes=6, seed=3)
    root = write_synthetic_birds(tmp_path, config)
    looks = bird_looks(config)
    assert np.array_equal(common_parts(bird_attributes(looks)), shared_bird_parts(looks))
    test = CUBDataset(root, "test", image_size=48)
    np.testing.assert_array_equal(test.attributes(), bird_attributes(looks))
    points, visible = test.parts(0)
    drawn = [CUB_PARTS.index(p) for p in ("back", "beak", "belly", "crown", "left wing", "tail")]
    assert visible.any() and not visible[[i for i in range(15) if i not in drawn]].any()
    assert write_synthetic_birds(tmp_path, config) == root  # reused


def test_synthetic_scenes_recover_their_shared_objects(tmp_path):
    config = AmbiguityConfig(image_size=48, train=160, test=8, seed=4)
    root = write_synthetic_scenes(tmp_path, config)
    train = ADE20KDataset(root, "train", image_size=48)
    everything = [ADE20KDataset(root, split, image_size=48) for split in ("train", "val")]
    present = [d.objects_present(i) for d in everything for i in range(len(d))]
    labels = [d.labels[d.ids[i]] for d in everything for i in range(len(d))]
    fractions = object_fractions(present, labels, len(train.class_names), 150)
    # classes are sorted by name; map the construction's scene order onto them
    order = [train.class_names.index("scene_" + "_".join(SHAPES[o] for o in objs)) for objs in SCENE_OBJECTS]
    truth = np.zeros_like(shared_scene_objects())
    truth[np.ix_(order, order)] = shared_scene_objects()
    assert np.array_equal(common_objects(fractions), truth)
