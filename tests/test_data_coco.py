"""COCO reader and writer: exact round trips, a hand-written instances file, and every error message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from saliencylab.data import COCODataset, write_coco
from saliencylab.types import BACKGROUND, VOID, Sample
from samples import make_sample

CLASSES = ["disc", "square", "star"]


def sample_of(*args) -> Sample:
    return make_sample(*args, num_classes=len(CLASSES))


@pytest.fixture
def samples() -> list[Sample]:
    """Image 3: a disc with a cut corner and a crowd of stars; 7: empty; 12: a square without segmentation."""
    seg = torch.full((10, 12), BACKGROUND, dtype=torch.long)
    seg[2:8, 1:6] = 0
    seg[2, 1] = BACKGROUND
    seg[:, 6:12] = 2
    return [
        sample_of("12", (8, 8), [[0, 0, 3, 3]], [1], [False], None),
        sample_of("3", (10, 12), [[1, 2, 5, 7], [6, 0, 11, 9]], [0, 2], [False, True], seg),
        sample_of("7", (8, 8), [], [], [], torch.full((8, 8), BACKGROUND, dtype=torch.long)),
    ]


@pytest.fixture
def coco(tmp_path: Path, samples: list[Sample]) -> Path:
    return write_coco(tmp_path / "annotations/instances.json", tmp_path / "images", samples, CLASSES)


def test_write_coco_writes_a_real_instances_file(coco: Path, tmp_path: Path):
    data = json.loads(coco.read_text())
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    assert data["categories"] == [{"id": 1, "name": "disc", "supercategory": "object"},
                                  {"id": 2, "name": "square", "supercategory": "object"},
                                  {"id": 3, "name": "star", "supercategory": "object"}]
    assert data["images"] == [{"id": 12, "file_name": "12.jpg", "width": 8, "height": 8},
                              {"id": 3, "file_name": "3.jpg", "width": 12, "height": 10},
                              {"id": 7, "file_name": "7.jpg", "width": 8, "height": 8}]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["12.jpg", "3.jpg", "7.jpg"]
    anns = data["annotations"]
    assert [(a["id"], a["image_id"], a["category_id"], a["iscrowd"]) for a in anns] == \
        [(1, 12, 2, 0), (2, 3, 1, 0), (3, 3, 3, 1)]
    assert [a["bbox"] for a in anns] == [[0, 0, 4, 4], [1, 2, 5, 6], [6, 0, 6, 10]]
    assert [a["area"] for a in anns] == [16, 29, 60]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    disc = np.zeros((10, 12), dtype=np.uint8)
    disc[2:8, 1:6] = 1
    disc[2, 1] = 0
    assert np.array_equal(mask_utils.decode(anns[1]["segmentation"]), disc)
    square = np.zeros((8, 8), dtype=np.uint8)
    square[0:4, 0:4] = 1  # no segmentation: the whole box
    assert np.array_equal(mask_utils.decode(anns[0]["segmentation"]), square)


def test_round_trip(coco: Path, tmp_path: Path, samples: list[Sample]):
    dataset = COCODataset(tmp_path / "images", coco)
    assert dataset.ids == [3, 12]  # sorted, the empty image 7 skipped
    assert dataset.class_names == tuple(CLASSES) and dataset.category_ids == (1, 2, 3) and dataset.num_classes == 3
    by_id = {s.image_id: s for s in samples}
    for read in dataset:
        written = by_id[read.image_id]
        assert read.image.shape == written.image.shape and (read.image - written.image).abs().mean() < 0.05
        assert torch.equal(read.labels, written.labels)
        assert torch.equal(read.boxes, written.boxes) and read.boxes.dtype == torch.float32
        assert torch.equal(read.box_labels, written.box_labels)
        assert torch.equal(read.difficult, written.difficult)
    crowd_as_void = by_id["3"].segmentation.clone()
    crowd_as_void[crowd_as_void == 2] = VOID
    assert torch.equal(dataset[0].segmentation, crowd_as_void)
    square = torch.full((8, 8), BACKGROUND)
    square[0:4, 0:4] = 1
    assert torch.equal(dataset[1].segmentation, square)


def test_keep_empty_images(coco: Path, tmp_path: Path):
    dataset = COCODataset(tmp_path / "images", coco, skip_empty=False)
    assert dataset.ids == [3, 7, 12]
    empty = dataset[1]
    assert empty.image_id == "7" and empty.labels.sum() == 0 and empty.boxes.shape == (0, 4)
    assert torch.equal(empty.segmentation, torch.full((8, 8), BACKGROUND))


def test_category_ids_with_gaps(tmp_path: Path, samples: list[Sample]):
    coco = write_coco(tmp_path / "a.json", tmp_path / "images", samples, CLASSES, category_ids=[1, 44, 90])
    assert [c["id"] for c in json.loads(coco.read_text())["categories"]] == [1, 44, 90]
    assert [a["category_id"] for a in json.loads(coco.read_text())["annotations"]] == [44, 1, 90]
    dataset = COCODataset(tmp_path / "images", coco, transform=lambda s: s.box_labels)
    assert dataset.category_ids == (1, 44, 90) and dataset.class_names == tuple(CLASSES)
    assert dataset[0].tolist() == [0, 2] and dataset[1].tolist() == [1]


def test_reads_a_hand_written_instances_file(tmp_path: Path):
    """Unsorted categories with gaps, a polygon and an uncompressed crowd RLE that overlaps it."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (10, 8), (30, 160, 220)).save(tmp_path / "images/img42.jpg", quality=95)
    data = {
        "info": {}, "licenses": [],
        "images": [{"id": 42, "file_name": "img42.jpg", "width": 10, "height": 8},
                   {"id": 7, "file_name": "img7.jpg", "width": 10, "height": 8}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 1, "name": "person", "supercategory": "person"}],
        "annotations": [
            {"id": 5, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 12.0, "bbox": [2, 2, 4, 3],
             "segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]]},
            {"id": 6, "image_id": 42, "category_id": 1, "iscrowd": 1, "area": 8.0, "bbox": [5, 3, 2, 4],
             "segmentation": {"size": [8, 10], "counts": [43, 4, 4, 4, 25]}},  # column-major runs
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    dataset = COCODataset(tmp_path / "images", tmp_path / "instances.json")
    assert dataset.ids == [42] and dataset.class_names == ("person", "dog") and dataset.category_ids == (1, 18)
    sample = dataset[0]
    assert sample.image_id == "42"
    expected_image = torch.tensor([30, 160, 220]).float().div(255)[:, None, None].expand(3, 8, 10)
    assert (sample.image - expected_image).abs().mean() < 0.05
    assert sample.labels.tolist() == [1.0, 1.0]
    assert sample.boxes.tolist() == [[2, 2, 5, 4], [5, 3, 6, 6]]
    assert sample.box_labels.tolist() == [1, 0] and sample.difficult.tolist() == [False, True]
    expected = torch.full((8, 10), BACKGROUND)
    expected[2:5, 2:6] = 1  # the polygon's pixels
    expected[3:7, 5:7] = VOID  # the crowd, painted later
    assert torch.equal(sample.segmentation, expected)


# ---- errors ---------------------------------------------------------------------------------------

def rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_files(coco: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"COCO annotation file .*nothing\.json not found"):
        COCODataset(tmp_path / "images", tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match=r"COCO image folder .*nowhere not found"):
        COCODataset(tmp_path / "nowhere", coco)
    (tmp_path / "images/3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*3\.jpg not found \(it is listed in .*instances\.json\)"):
        COCODataset(tmp_path / "images", coco)[0]


def test_invalid_json(coco: Path, tmp_path: Path):
    coco.write_text("{not json")
    with pytest.raises(ValueError, match=r"COCO annotation file .*instances\.json is not valid JSON"):
        COCODataset(tmp_path / "images", coco)


@pytest.mark.parametrize("content, message", [
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}],  # a results file
     r"the top level lacks keys \['images', 'annotations', 'categories'\]"),
    ({"images": [], "annotations": []}, r"the top level lacks keys \['categories'\]"),
    ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [], "categories": []},
     r"image 1 lacks keys \['width', 'height'\]"),
    ({"images": [], "annotations": [], "categories": [{"id": 3}]}, r"category 3 lacks keys \['name'\]"),
    ({"images": [], "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0}],
      "categories": []}, r"annotation 9 lacks keys \['segmentation'\]"),
])
def test_not_an_instances_file(tmp_path: Path, content, message: str):
    (tmp_path / "images").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"bad\.json is not a COCO instances file: {message} \(expected \["):
        COCODataset(tmp_path / "images", tmp_path / "bad.json")


def test_unknown_category_or_image(coco: Path, tmp_path: Path):
    rewrite(coco, lambda data: data["annotations"][1].update(category_id=99))
    with pytest.raises(ValueError, match=r"instances\.json: annotation 2 refers to category id 99; "
                                         r"known category ids: \[1, 2, 3\]"):
        COCODataset(tmp_path / "images", coco)
    rewrite(coco, lambda data: data["annotations"][1].update(category_id=1, image_id=5))
    with pytest.raises(ValueError, match=r"instances\.json: annotation 2 refers to image id 5, which is not in 'images'"):
        COCODataset(tmp_path / "images", coco)


def test_image_size_must_match_the_json(coco: Path, tmp_path: Path):
    rewrite(coco, lambda data: data["images"][1].update(height=11))
    with pytest.raises(ValueError, match=r"image .*3\.jpg is 12x10 \(WxH\) but .*instances\.json says 12x11"):
        COCODataset(tmp_path / "images", coco)[0]


def test_write_coco_rejects_bad_ids(tmp_path: Path, samples: list[Sample]):
    samples[0].image_id = "img12"
    with pytest.raises(ValueError, match=r"every sample image_id must be a distinct number, got \['img12'"):
        write_coco(tmp_path / "a.json", tmp_path, samples, CLASSES)
    samples[0].image_id = "03"
    with pytest.raises(ValueError, match="distinct number"):
        write_coco(tmp_path / "a.json", tmp_path, samples, CLASSES)
    samples[0].image_id = "12"
    with pytest.raises(ValueError, match=r"category_ids must be 3 distinct ids, one per class, got \[1, 1, 2\]"):
        write_coco(tmp_path / "a.json", tmp_path, samples, CLASSES, category_ids=[1, 1, 2])
