"""ImageNet folders + bbox XML + metadata JSONs, OpenImages30k (wsolevaluation layout), synthetic exports.

Every tree here is written by hand in the real formats; expected boxes and masks are computed by hand.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.imagenet_metadata import (ImageNetMetadata, center_crop_boxes, examples_per_class,
                                                prepare_metadata, read_box_xml, read_boxes, read_metadata,
                                                scan_image_folder, shuffled_labels, write_boxes, write_metadata)
from saliencylab.data.openimages import OpenImagesDataset, write_openimages
from saliencylab.data.synthetic import CLASSES, SyntheticConfig
from saliencylab.data.synthetic_imagenet import WNIDS, single_class_scenes, write_synthetic_imagenet
from saliencylab.types import BACKGROUND, VOID, Sample

A, B, C = "n01000001", "n01000002", "n01000003"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def jpeg(path: Path, width: int, height: int, color=GREEN) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, quality=95)


def xml(path: Path, width: int, height: int, objects: list[tuple[str, list[int]]]) -> None:
    """An ImageNet annotation file, written as the ILSVRC files are (tabs, <source>, <segmented>)."""
    body = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n" +
        "".join(f"\t\t\t<{tag}>{value}</{tag}>\n" for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box)) +
        "\t\t</bndbox>\n\t</object>\n" for name, box in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>\n\t<folder>val</folder>\n\t<filename>{path.stem}</filename>\n"
                    f"\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n"
                    f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n"
                    f"\t</size>\n\t<segmented>0</segmented>\n{body}</annotation>\n")


TRAIN_BOX = [2, 3, 20, 12]
"""Every train XML's box on a 24x16 image; at size 10: s = 0.625, xcut = (15 - 10)/2 = 2.5."""
TRAIN_BOX_AT_10 = [-1, 1, 10, 7]  # int(1.25 - 2.5), int(1.875), int(12.5 - 2.5), int(7.5)

VAL_BOXES_AT_10 = {
    # 40x20, s = 0.5, xcut = (20 - 10)/2 = 5; the B box is dropped (not the image's class)
    "ILSVRC2012_val_00000001": [[-3, 1, 10, 9],   # (4,2,30,18) -> (2-5, 1, 15-5, 9)
                                [0, 1, 1, 8],     # (9,3,13,17): int(-0.5) = 0 truncates toward zero
                                [-5, 0, -1, 2]],  # (0,0,8,4): wholly left of the crop, kept unclipped
    # 20x30 portrait, s = 0.5, ycut = (15 - 10)/2 = 2.5
    "ILSVRC2012_val_00000002": [[1, -1, 9, 12]],  # (2,3,18,29) -> (1, int(-1.0), 9, int(12.0))
    # 16x16 square, s = 0.625, no cut
    "ILSVRC2012_val_00000003": [[0, 1, 9, 8]],    # (1,2,15,14) -> (0.625, 1.25, 9.375, 8.75)
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """train: A x4 (3 annotated), B x3 (2 annotated), C x3 (1 annotated); val: one image per class."""
    for wnid, count, annotated in ((A, 4, 3), (B, 3, 2), (C, 3, 1)):
        for i in range(1, count + 1):
            jpeg(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", 24, 16)
            if i <= annotated:
                xml(tmp_path / "Annotation" / wnid / f"{wnid}_{i}.xml", 24, 16, [(wnid, TRAIN_BOX)])
    (tmp_path / "train" / C / "notes.txt").write_text("not an image")
    xml(tmp_path / "Annotation" / C / f"{B}_3.xml", 24, 16, [(B, TRAIN_BOX)])  # in the wrong folder: ignored
    pattern = Image.new("RGB", (40, 20), GREEN)
    pattern.paste(RED, (0, 0, 10, 20))
    pattern.paste(BLUE, (30, 0, 40, 20))
    (tmp_path / "val" / A).mkdir(parents=True)
    pattern.save(tmp_path / "val" / A / "ILSVRC2012_val_00000001.JPEG", quality=95)
    jpeg(tmp_path / "val" / B / "ILSVRC2012_val_00000002.JPEG", 20, 30)
    jpeg(tmp_path / "val" / C / "ILSVRC2012_val_00000003.JPEG", 16, 16)
    xml(tmp_path / "bbox_val" / "ILSVRC2012_val_00000001.xml", 40, 20,
        [(A, [4, 2, 30, 18]), (B, [0, 0, 5, 5]), (A, [9, 3, 13, 17]), (A, [0, 0, 8, 4])])
    xml(tmp_path / "bbox_val" / "ILSVRC2012_val_00000002.xml", 20, 30, [(B, [2, 3, 18, 29])])
    xml(tmp_path / "bbox_val" / "ILSVRC2012_val_00000003.xml", 16, 16, [(C, [1, 2, 15, 14])])
    return tmp_path


def prepare(tree: Path, out: str = "meta", seed: int = 1234, annotations: bool = True) -> dict[str, Path]:
    return prepare_metadata(tree / "train", tree / "val", tree / "bbox_val", tree / out,
                            extended_annotations=tree / "Annotation" if annotations else None,
                            num_per_class_in_train_val=2, seed=seed, size=10)


def stems(samples) -> list[str]:
    return [Path(path).stem for path, _ in samples]


# ---- centre-crop mapping ---------------------------------------------------------------------------

def test_center_crop_boxes_by_hand():
    assert center_crop_boxes([[4, 2, 30, 18], [9, 3, 13, 17], [0, 0, 8, 4]], 40, 20, size=10) == \
        VAL_BOXES_AT_10["ILSVRC2012_val_00000001"]
    assert center_crop_boxes([[2, 3, 18, 29]], 20, 30, size=10) == [[1, -1, 9, 12]]
    assert center_crop_boxes([[1, 2, 15, 14]], 16, 16, size=10) == [[0, 1, 9, 8]]
    assert center_crop_boxes([[0, 0, 299, 199]], 300, 200) == [[-56, 0, 278, 222]]  # s = 1.12, xcut = 56
    # break_ratio: x by 10/40, y by 10/20, no cut
    assert center_crop_boxes([[4, 2, 30, 18], [3, 1, 39, 19]], 40, 20, size=10, break_ratio=True) == \
        [[1, 1, 7, 9], [0, 0, 9, 9]]
    assert center_crop_boxes([], 40, 20) == []


# ---- XML -----------------------------------------------------------------------------------------

def test_read_box_xml_keeps_the_wnid_boxes(tree: Path):
    width, height, boxes = read_box_xml(tree / "bbox_val" / "ILSVRC2012_val_00000001.xml", A)
    assert (width, height) == (40, 20)
    assert boxes == [[4, 2, 30, 18], [9, 3, 13, 17], [0, 0, 8, 4]]  # raw integers, no -1
    assert read_box_xml(tree / "bbox_val" / "ILSVRC2012_val_00000001.xml", B)[2] == [[0, 0, 5, 5]]
    assert read_box_xml(tree / "bbox_val" / "ILSVRC2012_val_00000001.xml", C)[2] == []


@pytest.mark.parametrize("text, message", [
    ("<annotation><size>", "is not valid XML"),
    ("<annotation><object><name>n1</name></object></annotation>", "expected <size> with <width> and <height>"),
    ("<annotation><size><height>3</height></size></annotation>", "expected <width> inside <size>"),
    ("<annotation><size><width>4</width><height>3</height></size><object><name>n1</name></object></annotation>",
     "expected <bndbox> inside the <object> named 'n1'"),
    ("<annotation><size><width>4</width><height>3</height></size><object><name>n1</name><bndbox><xmin>1</xmin>"
     "<ymin>1</ymin><xmax>2</xmax></bndbox></object></annotation>", "expected <ymax> inside <bndbox>"),
    ("<annotation><size><width>4</width><height>3</height></size><object><name>n1</name><bndbox><xmin>1.5</xmin>"
     "<ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
     "expected an integer in <xmin>, got '1.5'"),
])
def test_bad_xml_is_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"annotation .*bad\.xml:? {re.escape(message)}"):
        read_box_xml(path, "n1")
    with pytest.raises(FileNotFoundError, match=r"annotation .*missing\.xml not found"):
        read_box_xml(tmp_path / "missing.xml", "n1")


# ---- folders and metadata JSON -------------------------------------------------------------------

def test_scan_image_folder(tree: Path):
    meta = scan_image_folder(tree / "train")
    assert meta.classes == [A, B, C] and meta.class_to_idx == {A: 0, B: 1, C: 2}
    assert meta.root == str((tree / "train").resolve())
    assert stems(meta.samples) == [f"{A}_{i}" for i in range(1, 5)] + [f"{B}_{i}" for i in range(1, 4)] + \
        [f"{C}_{i}" for i in range(1, 4)]  # notes.txt is not an image
    assert [label for _, label in meta.samples] == [0] * 4 + [1] * 3 + [2] * 3
    assert all(Path(path).is_absolute() and Path(path).is_file() for path, _ in meta.samples)


def test_scan_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere not found; expected <folder>/<wnid>/<image>"):
        scan_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no class subfolders"):
        scan_image_folder(tmp_path)
    (tmp_path / A).mkdir()
    (tmp_path / A / "readme.md").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no images \(\.jpg, \.jpeg.*\) in the class folders of"):
        scan_image_folder(tmp_path)


def test_metadata_round_trip_and_format(tmp_path: Path):
    meta = ImageNetMetadata("/data/train", [("/data/train/b/x.JPEG", 1), ("a/y.JPEG", 0)], ["a", "b"])
    path = write_metadata(tmp_path / "sub" / "m.json", meta)
    assert json.loads(path.read_text()) == {"root": "/data/train",
                                            "samples": [["/data/train/b/x.JPEG", 1], ["a/y.JPEG", 0]],
                                            "classes": ["a", "b"], "class_to_idx": {"a": 0, "b": 1}}
    assert read_metadata(path) == meta
    boxes = {"x": [[1, 2, 3, 4], [-1, 0, 300, 5]], "y": []}
    box_path = write_boxes(tmp_path / "b.json", boxes)
    assert json.loads(box_path.read_text())["x"][1] == {"xmin": -1, "ymin": 0, "xmax": 300, "ymax": 5}
    assert read_boxes(box_path) == boxes


GOOD = {"root": "/r", "samples": [["a.jpg", 0]], "classes": ["n1", "n2"], "class_to_idx": {"n1": 0, "n2": 1}}


@pytest.mark.parametrize("data, message", [
    ([], 'an object with keys "root", "samples", "classes", "class_to_idx"'),
    ({**GOOD, "root": 3}, '"root" to be a folder path'),
    ({k: v for k, v in GOOD.items() if k != "class_to_idx"}, 'keys "root", "samples", "classes", "class_to_idx"'),
    ({**GOOD, "classes": "n1"}, '"classes" to be a list of class names'),
    ({**GOOD, "class_to_idx": {"n1": 1, "n2": 0}}, '"class_to_idx" to map each name of "classes" to its position'),
    ({**GOOD, "samples": {"a.jpg": 0}}, '"samples" to be a list of [path, class_idx] pairs'),
    ({**GOOD, "samples": [["a.jpg", 0], ["b.jpg", 2]]}, "0 <= class_idx < 2; entry 1 is ['b.jpg', 2]"),
    ({**GOOD, "samples": [["a.jpg"]]}, "entry 0 is ['a.jpg']"),
])
def test_malformed_metadata_is_named(tmp_path: Path, data, message: str):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"metadata file .*m\.json: expected .*{re.escape(message)}"):
        read_metadata(path)


def test_unreadable_json_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"metadata file .*none\.json not found"):
        read_metadata(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"metadata file .*bad\.json is not valid JSON"):
        read_metadata(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"box file .*bad\.json is not valid JSON"):
        read_boxes(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="expected an object mapping image keys to lists of boxes"):
        read_boxes(tmp_path / "list.json")
    (tmp_path / "b.json").write_text(json.dumps({"x": [{"xmin": 1, "ymin": 2, "xmax": 3}]}))
    with pytest.raises(ValueError, match=r"box file .*b\.json: expected the boxes of 'x' as a list of objects with "
                                         r'integer "xmin", "ymin", "xmax", "ymax"'):
        read_boxes(tmp_path / "b.json")


# ---- prepare_metadata ----------------------------------------------------------------------------

def test_prepare_metadata_writes_every_split(tree: Path):
    written = prepare(tree)
    assert sorted(written) == ["train", "train_shuffle", "train_train", "train_val", "train_val_bboxes",
                               "val", "val_bboxes"]
    assert all(path.parent == tree / "meta" for path in written.values())

    scanned = scan_image_folder(tree / "train")
    train = read_metadata(written["train"])
    assert train.classes == [A, B, C] and train.root == scanned.root
    expected = list(scanned.samples)
    np.random.RandomState(1234).shuffle(expected)  # the original's first call on its seeded RandomState
    assert train.samples == expected

    train_val, train_train = read_metadata(written["train_val"]), read_metadata(written["train_train"])
    assert sorted(train_val.samples + train_train.samples) == sorted(scanned.samples)
    annotated = {f"{A}_1", f"{A}_2", f"{A}_3", f"{B}_1", f"{B}_2", f"{C}_1"}
    assert set(stems(train_val.samples)) <= annotated
    assert sorted(label for _, label in train_val.samples) == [0, 0, 1, 1, 2]  # min(2, annotated) per class
    assert {f"{A}_4", f"{B}_3", f"{C}_2", f"{C}_3"} <= set(stems(train_train.samples))  # unannotated
    assert len(train_train.samples) == 5

    assert read_boxes(written["train_val_bboxes"]) == {stem: [TRAIN_BOX_AT_10] for stem in stems(train_val.samples)}

    shuffle = read_metadata(written["train_shuffle"])
    assert [path for path, _ in shuffle.samples] == [path for path, _ in train.samples]
    assert shuffle.samples == shuffled_labels(train.samples, 3, 1234)

    val = read_metadata(written["val"])
    assert stems(val.samples) == list(VAL_BOXES_AT_10) and [label for _, label in val.samples] == [0, 1, 2]
    assert read_boxes(written["val_bboxes"]) == VAL_BOXES_AT_10


def test_prepare_metadata_is_seeded(tree: Path):
    first, again, other = prepare(tree, "a"), prepare(tree, "b"), prepare(tree, "c", seed=7)
    for name in first:
        assert first[name].read_text() == again[name].read_text()
    assert read_metadata(first["train"]).samples != read_metadata(other["train"]).samples
    assert read_metadata(first["train_shuffle"]).samples != read_metadata(other["train_shuffle"]).samples
    assert first["val_bboxes"].read_text() == other["val_bboxes"].read_text()


def test_prepare_metadata_without_train_annotations(tree: Path):
    assert sorted(prepare(tree, annotations=False)) == ["train", "train_shuffle", "val", "val_bboxes"]


def test_prepare_metadata_errors(tree: Path):
    with pytest.raises(FileNotFoundError, match=r"val annotation folder .*nowhere not found"):
        prepare_metadata(tree / "train", tree / "val", tree / "nowhere", tree / "meta")
    with pytest.raises(FileNotFoundError, match=r"train annotation folder .*nowhere not found"):
        prepare_metadata(tree / "train", tree / "val", tree / "bbox_val", tree / "meta", tree / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no <wnid>/<wnid>_<id>\.xml files in the train annotation folder"):
        prepare_metadata(tree / "train", tree / "val", tree / "bbox_val", tree / "meta", tree / "bbox_val")
    xml(tree / "Annotation" / A / f"{A}_1.xml", 24, 16, [(B, TRAIN_BOX)])
    with pytest.raises(ValueError, match=rf"annotation .*{A}_1\.xml: no <object> named '{A}'"):
        prepare_metadata(tree / "train", tree / "val", tree / "bbox_val", tree / "meta", tree / "Annotation",
                         num_per_class_in_train_val=3)  # every annotated A image is in train_val
    assert not (tree / "meta").exists()  # nothing is written before every input checked out

    xml(tree / "bbox_val" / "ILSVRC2012_val_00000002.xml", 20, 30, [(A, [2, 3, 18, 29])])
    with pytest.raises(ValueError, match=rf"annotation .*00000002\.xml: no <object> named '{B}', the class of its"):
        prepare(tree, annotations=False)
    (tree / "bbox_val" / "ILSVRC2012_val_00000002.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation .*ILSVRC2012_val_00000002\.xml not found for the val "
                                                r"image .*ILSVRC2012_val_00000002\.JPEG"):
        prepare(tree, annotations=False)
    jpeg(tree / "val" / "n09999999" / "x.JPEG", 8, 8)
    with pytest.raises(ValueError, match=r"the class folders of .*train and .*val differ \(\['n09999999'\]\)"):
        prepare(tree)


# ---- the dataset ---------------------------------------------------------------------------------

def test_dataset_reads_labels_boxes_and_the_centre_crop(tree: Path):
    written = prepare(tree)
    dataset = ImageNetDataset(written["val"], written["val_bboxes"], size=10)
    assert len(dataset) == 3 and dataset.class_names == (A, B, C) and dataset.num_classes == 3
    assert dataset.ids == list(VAL_BOXES_AT_10)
    for index, (stem, boxes) in enumerate(VAL_BOXES_AT_10.items()):
        sample = dataset[index]
        assert sample.image_id == stem and sample.image.shape == (3, 10, 10) and sample.image.dtype == torch.float32
        assert sample.labels.tolist() == [float(i == index) for i in range(3)]
        assert sample.boxes.dtype == torch.float32 and sample.boxes.tolist() == boxes
        assert sample.box_labels.tolist() == [index] * len(boxes)
        assert sample.difficult.tolist() == [False] * len(boxes)
        assert sample.segmentation is None
    crop = dataset[0].image  # 40x20 -> 20x10, columns 5..14 kept: the green middle, red and blue cut away
    assert (crop[1, :, 1:9] > 0.8).all() and (crop[0, :, 1:9] < 0.2).all() and (crop[2, :, 1:9] < 0.2).all()
    squeezed = ImageNetDataset(written["val"], size=10, break_ratio=True)[0].image  # 40x20 -> 10x10
    assert (squeezed[0, :, 0] > 0.8).all() and (squeezed[2, :, 9] > 0.8).all() and (squeezed[1, :, 4:6] > 0.8).all()


def test_dataset_without_boxes_and_with_a_transform(tree: Path):
    written = prepare(tree)
    dataset = ImageNetDataset(written["train_shuffle"], size=8,
                              transform=lambda s: Sample(image=s.image[:, :2], labels=s.labels, image_id="t"))
    shuffle = read_metadata(written["train_shuffle"])
    sample = dataset[3]
    assert sample.image.shape == (3, 2, 8) and sample.image_id == "t"
    assert sample.labels.argmax().item() == shuffle.samples[3][1]
    plain = ImageNetDataset(written["train"], size=8)[0]
    assert plain.boxes.shape == (0, 4) and plain.box_labels.shape == (0,)


def test_dataset_errors(tree: Path):
    written = prepare(tree)
    with pytest.raises(ValueError, match=r"box file .*train_val_bboxes\.json has no boxes for 3 images of .*val\.json, "
                                         r"e\.g\. \['ILSVRC2012_val_00000001'"):
        ImageNetDataset(written["val"], written["train_val_bboxes"])
    (tree / "val" / B / "ILSVRC2012_val_00000002.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*00000002\.JPEG not found \(it is listed in .*val\.json\)"):
        ImageNetDataset(written["val"], size=10)[1]
    (tree / "val" / C / "ILSVRC2012_val_00000003.JPEG").write_text("not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*00000003\.JPEG"):
        ImageNetDataset(written["val"], size=10)[2]


# ---- few-shot and random labels ------------------------------------------------------------------

SAMPLES = [(f"img{i}.JPEG", i % 3) for i in range(30)]  # ten of each of three classes


def test_examples_per_class():
    subset = examples_per_class(SAMPLES, 4, seed=0)
    assert len(subset) == 12 and [sum(label == c for _, label in subset) for c in range(3)] == [4, 4, 4]
    assert set(subset) <= set(SAMPLES) and len(set(subset)) == 12
    assert subset == sorted(subset, key=SAMPLES.index)  # input order kept
    assert examples_per_class(SAMPLES, 4, seed=0) == subset
    assert examples_per_class(SAMPLES, 4, seed=1) != subset
    assert sorted(examples_per_class(SAMPLES, 10, seed=5)) == sorted(SAMPLES)
    with pytest.raises(ValueError, match="11 examples per class asked for, but class 0 has 10, class 1 has 10"):
        examples_per_class(SAMPLES, 11, seed=0)
    with pytest.raises(ValueError, match="but class 2 has 1$"):
        examples_per_class([(p, c) for p, c in SAMPLES if c != 2] + [("x", 2)], 2, seed=0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        examples_per_class(SAMPLES, 0, seed=0)


def test_shuffled_labels():
    labels = [label for _, label in shuffled_labels(SAMPLES, 1000, seed=0)]
    assert [path for path, _ in shuffled_labels(SAMPLES, 1000, seed=0)] == [path for path, _ in SAMPLES]
    assert all(0 <= label < 1000 for label in labels) and len(set(labels)) > 20  # drawn from all 1000 classes
    assert [label for _, label in shuffled_labels(SAMPLES, 1000, seed=0)] == labels
    assert [label for _, label in shuffled_labels(SAMPLES, 1000, seed=1)] != labels
    assert {label for _, label in shuffled_labels(SAMPLES * 10, 3, seed=0)} == {0, 1, 2}


# ---- OpenImages30k (wsolevaluation layout) -------------------------------------------------------

def png(path: Path, width: int, height: int, rows: slice, cols: slice, value: int = 255) -> None:
    values = np.zeros((height, width), dtype=np.uint8)
    values[rows, cols] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)


@pytest.fixture
def openimages(tmp_path: Path) -> tuple[Path, Path]:
    data, meta = tmp_path / "dataset", tmp_path / "metadata"
    images = data / "OpenImages" / "test"
    jpeg(images / "0cat" / "aaaa.jpg", 30, 20, RED)
    jpeg(images / "0dog" / "bbbb.jpg", 20, 20, BLUE)
    png(images / "0cat" / "aaaa_m0cat_1.png", 30, 20, slice(2, 10), slice(3, 12))
    png(images / "0cat" / "aaaa_m0cat_2.png", 15, 10, slice(6, 10), slice(10, 15), value=1)  # half size; 1 > 0.5
    png(images / "0cat" / "aaaa_ignore.png", 30, 20, slice(0, 12), slice(0, 15))
    png(images / "0dog" / "bbbb_m0dog_1.png", 20, 20, slice(0, 10), slice(0, 20))
    png(images / "0dog" / "bbbb_m0dog_2.png", 20, 20, slice(8, 13), slice(0, 5))
    png(images / "0dog" / "bbbb_ignore.png", 20, 20, slice(0, 0), slice(0, 0))
    folder = meta / "OpenImages" / "test"
    folder.mkdir(parents=True)
    (folder / "image_ids.txt").write_text("test/0cat/aaaa.jpg\ntest/0dog/bbbb.jpg\n")
    (folder / "class_labels.txt").write_text("test/0cat/aaaa.jpg,0\ntest/0dog/bbbb.jpg,1\n")
    (folder / "localization.txt").write_text(
        "test/0cat/aaaa.jpg,test/0cat/aaaa_m0cat_1.png,test/0cat/aaaa_ignore.png\n"
        "test/0cat/aaaa.jpg,test/0cat/aaaa_m0cat_2.png,\n"
        "test/0dog/bbbb.jpg,test/0dog/bbbb_m0dog_1.png,test/0dog/bbbb_ignore.png\n"
        "test/0dog/bbbb.jpg,test/0dog/bbbb_m0dog_2.png,\n")
    return data, meta


def test_openimages_masks_and_ignore_regions(openimages):
    dataset = OpenImagesDataset(*openimages, size=10)
    assert len(dataset) == 2 and dataset.class_names == ("0cat", "0dog")
    assert dataset.ids == ["test/0cat/aaaa.jpg", "test/0dog/bbbb.jpg"]
    cat, dog = dataset[0], dataset[1]
    # nearest sampling as cv2.INTER_NEAREST: output row i reads floor(i*H/10), column j floor(j*W/10)
    expected = torch.full((10, 10), BACKGROUND)
    expected[0:6, 0:5] = VOID      # ignore: rows 2i <= 11, cols 3j <= 14 ...
    expected[1:5, 1:4] = 0         # ... minus mask 1: rows 2i in 2..9, cols 3j in 3..11
    expected[6:10, 7:10] = 0       # mask 2 (15x10): rows i in 6..9, cols floor(1.5j) in 10..14
    assert torch.equal(cat.segmentation, expected)
    expected = torch.full((10, 10), BACKGROUND)
    expected[0:5] = 1              # rows 2i in 0..9
    expected[4:7, 0:3] = 1         # rows 2i in 8..12, cols 2j in 0..4; the empty ignore adds nothing
    assert torch.equal(dog.segmentation, expected)
    assert cat.labels.tolist() == [1.0, 0.0] and dog.labels.tolist() == [0.0, 1.0]
    assert cat.image_id == "test/0cat/aaaa.jpg" and cat.boxes.shape == (0, 4)
    assert cat.image.shape == (3, 10, 10) and (cat.image[0] > 0.8).all() and (dog.image[2] > 0.8).all()


def test_openimages_separate_mask_root_and_class_names(openimages, tmp_path: Path):
    data, meta = openimages
    for image_id in ("test/0cat/aaaa.jpg", "test/0dog/bbbb.jpg"):
        target = tmp_path / "images" / "OpenImages" / image_id
        target.parent.mkdir(parents=True)
        (data / "OpenImages" / image_id).rename(target)
    dataset = OpenImagesDataset(tmp_path / "images", meta, mask_root=data, size=6, class_names=["cat", "dog", "bird"])
    assert dataset.class_names == ("cat", "dog", "bird") and dataset[1].labels.tolist() == [0.0, 1.0, 0.0]
    assert dataset[0].segmentation.shape == (6, 6) and (dataset[0].segmentation == 0).any()
    with pytest.raises(FileNotFoundError, match=r"image .*aaaa\.jpg not found \(it is listed in .*image_ids\.txt\)"):
        OpenImagesDataset(data, meta)[0]


@pytest.mark.parametrize("name, text, message", [
    ("class_labels.txt", "test/0cat/aaaa.jpg\n", r"class_labels\.txt, line 1: expected '<image_id>,<class index>', "
                                                 r"got 'test/0cat/aaaa\.jpg'"),
    ("class_labels.txt", "test/0cat/aaaa.jpg,0\ntest/0dog/bbbb.jpg,dog\n",
     r"class_labels\.txt, line 2: expected a class index >= 0, got 'dog'"),
    ("class_labels.txt", "test/0cat/aaaa.jpg,0\n",
     r"class_labels\.txt has no line for 1 images of .*image_ids\.txt, e\.g\. \['test/0dog/bbbb\.jpg'\]"),
    ("localization.txt", "test/0cat/aaaa.jpg,m.png\n",
     r"localization\.txt, line 1: expected '<image_id>,<mask path>,<ignore path>'"),
    ("localization.txt", "test/0cat/aaaa.jpg,a.png,i.png\ntest/0cat/aaaa.jpg,b.png,j.png\n",
     r"localization\.txt, line 2: test/0cat/aaaa\.jpg already has its ignore mask on its first line"),
    ("localization.txt", "test/0cat/aaaa.jpg,a.png,i.png\n", r"localization\.txt has no line for 1 images"),
])
def test_openimages_malformed_metadata(openimages, name: str, text: str, message: str):
    data, meta = openimages
    (meta / "OpenImages" / "test" / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        OpenImagesDataset(data, meta)


def test_openimages_missing_files(openimages):
    data, meta = openimages
    with pytest.raises(FileNotFoundError, match=r"OpenImages metadata folder .*OpenImages/val not found; expected"):
        OpenImagesDataset(data, meta, split="val")
    with pytest.raises(ValueError, match=r"uses class index 1 but only 1 class_names were given"):
        OpenImagesDataset(data, meta, class_names=["cat"])
    (data / "OpenImages" / "test" / "0dog" / "bbbb_m0dog_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask .*bbbb_m0dog_2\.png not found \(it is listed in "
                                                r".*localization\.txt\)"):
        OpenImagesDataset(data, meta)[1]
    (meta / "OpenImages" / "test" / "localization.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"OpenImages metadata file .*localization\.txt not found; expected"):
        OpenImagesDataset(data, meta)


def scene(image_id: str, label: int, seg: torch.Tensor, boxes: list, box_labels: list) -> Sample:
    labels = torch.zeros(3)
    labels[label] = 1.0
    height, width = seg.shape
    image = torch.linspace(0.1, 0.9, height * width).reshape(1, height, width).expand(3, -1, -1).clone()
    return Sample(image=image, labels=labels, boxes=torch.tensor(boxes, dtype=torch.float32),
                  box_labels=torch.tensor(box_labels), difficult=torch.zeros(len(boxes), dtype=torch.bool),
                  segmentation=seg, image_id=image_id)


def test_write_openimages_round_trip(tmp_path: Path):
    seg = torch.full((12, 12), BACKGROUND)
    seg[2:5, 2:5], seg[8:11, 6:11] = 2, 2
    seg[1, 1:6] = VOID
    other = torch.full((12, 12), BACKGROUND)
    other[0:4, 0:4] = 0
    samples = [scene("s1", 2, seg, [[2, 2, 4, 4], [6, 8, 10, 10], [0, 0, 1, 1]], [2, 2, 0]),
               scene("s2", 0, other, [[0, 0, 3, 3]], [0])]
    meta = write_openimages(tmp_path / "data", tmp_path / "meta", samples, ["a", "b", "c"])
    assert meta == tmp_path / "meta" / "OpenImages" / "test"
    assert (meta / "image_ids.txt").read_text() == "test/c/s1.jpg\ntest/a/s2.jpg\n"
    assert (meta / "class_labels.txt").read_text() == "test/c/s1.jpg,2\ntest/a/s2.jpg,0\n"
    assert (meta / "localization.txt").read_text() == (
        "test/c/s1.jpg,test/c/s1_mc_0.png,test/c/s1_ignore.png\ntest/c/s1.jpg,test/c/s1_mc_1.png,\n"
        "test/a/s2.jpg,test/a/s2_ma_0.png,test/a/s2_ignore.png\n")
    with Image.open(tmp_path / "data" / "OpenImages" / "test" / "c" / "s1_mc_1.png") as mask:
        assert mask.mode == "L" and sorted(np.unique(np.asarray(mask)).tolist()) == [0, 255]
    dataset = OpenImagesDataset(tmp_path / "data", tmp_path / "meta", size=12, class_names=["a", "b", "c"])
    for written, read in zip(samples, dataset):
        assert torch.equal(read.segmentation, written.segmentation) and torch.equal(read.labels, written.labels)
        assert (read.image - written.image).abs().mean() < 0.02
    with pytest.raises(ValueError, match="sample s1: OpenImages needs exactly one label and a segmentation"):
        write_openimages(tmp_path / "x", tmp_path / "y", [Sample(image=seg, labels=torch.ones(2), image_id="s1")],
                         ["a", "b"])
    with pytest.raises(ValueError, match="sample s2: no box of class 0 covers pixels of that class"):
        write_openimages(tmp_path / "x", tmp_path / "y", [scene("s2", 0, seg, [[2, 2, 4, 4]], [0])], ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique, non-empty image_id"):
        write_openimages(tmp_path / "x", tmp_path / "y", samples[:1] * 2, ["a", "b", "c"])


# ---- synthetic export ----------------------------------------------------------------------------

SMALL = SyntheticConfig(image_size=32, train=12, val=6, test=7, seed=3)


def test_single_class_scenes():
    scenes = single_class_scenes(SMALL, "test")
    assert [len(s.box_labels.unique()) for s in scenes] == [1] * 7
    assert [int(s.box_labels[0]) for s in scenes] == [0, 0, 1, 2, 3, 4, 5]  # quotas count//6 (+1 for the first)
    assert all(torch.equal(s.labels, torch.eye(6)[int(s.box_labels[0])]) for s in scenes)
    assert [s.image_id for s in scenes] == [f"{i:06d}" for i in range(1, 8)]
    again = single_class_scenes(SMALL, "test")
    assert all(torch.equal(a.image, b.image) for a, b in zip(scenes, again))
    with pytest.raises(ValueError, match=r"split 'val' needs at least 6 images \(one per class\), got 5"):
        single_class_scenes(SyntheticConfig(image_size=32, val=5), "val")


def test_write_synthetic_imagenet_goes_through_the_real_loaders(tmp_path: Path):
    root = write_synthetic_imagenet(tmp_path / "a", SMALL, num_per_class_in_train_val=1, progress=False)
    meta = root / "imagenet" / "metadata"
    assert WNIDS == tuple(f"n{i:08d}" for i in range(len(CLASSES)))
    assert sorted(p.name for p in (root / "imagenet" / "train").iterdir()) == list(WNIDS)
    assert (root / "imagenet" / "train" / WNIDS[0] / f"{WNIDS[0]}_2.JPEG").is_file()
    assert (root / "imagenet" / "Annotation" / WNIDS[5] / f"{WNIDS[5]}_1.xml").is_file()

    val_scenes = single_class_scenes(SMALL, "val")
    val = ImageNetDataset(meta / "val.json", meta / "val_bboxes.json", size=32)
    assert val.ids == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 7)]
    for scene_, sample in zip(val_scenes, val):
        assert torch.equal(sample.boxes, scene_.boxes)  # size = image size: the crop is the identity
        assert torch.equal(sample.labels, scene_.labels) and torch.equal(sample.box_labels, scene_.box_labels)
        assert (sample.image - scene_.image).abs().mean() < 0.05
    train_val = ImageNetDataset(meta / "train_val.json", meta / "train_val_bboxes.json", size=32)
    assert len(train_val) == 6 and sorted(s.labels.argmax().item() for s in train_val) == list(range(6))
    assert len(read_metadata(meta / "train_train.json").samples) == 6
    assert len(read_metadata(meta / "train_shuffle.json").samples) == 12

    test_scenes = single_class_scenes(SMALL, "test")
    test = OpenImagesDataset(root / "openimages" / "dataset", root / "openimages" / "metadata", size=32)
    assert test.class_names == WNIDS[:6]
    for scene_, sample in zip(test_scenes, test):
        assert torch.equal(sample.segmentation, scene_.segmentation) and torch.equal(sample.labels, scene_.labels)

    marker = root / "synthetic_imagenet.json"
    assert json.loads(marker.read_text())["num_per_class_in_train_val"] == 1
    stamp = (meta / "val.json").stat().st_mtime_ns
    assert write_synthetic_imagenet(root, SMALL, num_per_class_in_train_val=1, progress=False) == root
    assert (meta / "val.json").stat().st_mtime_ns == stamp  # reused, not rewritten

    other = write_synthetic_imagenet(tmp_path / "b", SMALL, num_per_class_in_train_val=1, progress=False)
    for name in ("imagenet/train/n00000003/n00000003_1.JPEG", "imagenet/bbox_val/ILSVRC2012_val_00000004.xml",
                 "imagenet/metadata/val_bboxes.json", "openimages/metadata/OpenImages/test/localization.txt"):
        assert (root / name).read_bytes() == (other / name).read_bytes()
    assert read_metadata(root / "imagenet/metadata/train_val.json").samples == \
        [(path.replace(str(other), str(root)), label)
         for path, label in read_metadata(other / "imagenet/metadata/train_val.json").samples]

    smaller = SyntheticConfig(image_size=32, train=6, val=6, test=6, seed=3)
    write_synthetic_imagenet(root, smaller, num_per_class_in_train_val=1, progress=False)
    assert len(read_metadata(meta / "train.json").samples) == 6  # the previous set's files are gone
    assert json.loads(marker.read_text())["train"] == 6
