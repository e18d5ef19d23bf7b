"""VOC reader and writer: exact round trips, a hand-written tree, and every error message."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliencylab.data import VOC_CLASSES, VOCDataset, voc_palette, write_voc
from saliencylab.types import BACKGROUND, VOID, Sample
from samples import make_sample, smooth_image

DOG, PERSON, CAT = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")


def sample_of(*args) -> Sample:
    return make_sample(*args, num_classes=len(VOC_CLASSES))


@pytest.fixture
def samples() -> list[Sample]:
    seg = torch.full((10, 12), BACKGROUND, dtype=torch.long)
    seg[2:8, 1:6] = DOG
    seg[:, 7:12] = PERSON
    seg[:, 6] = VOID
    return [
        sample_of("000005", (10, 12), [[1, 2, 5, 7], [6, 0, 11, 9]], [DOG, PERSON], [False, True], seg),
        sample_of("000007", (8, 8), [[0, 0, 3, 3], [4, 4, 7, 7]], [CAT, DOG], [False, True], None),
        sample_of("000009", (8, 8), [], [], [], torch.full((8, 8), BACKGROUND, dtype=torch.long)),
    ]


@pytest.fixture
def voc(tmp_path: Path, samples: list[Sample]) -> Path:
    return write_voc(tmp_path, samples, list(VOC_CLASSES), splits={"trainval": ["000005", "000007", "000009"],
                                                                    "test": ["000007"]})


def test_palette_is_the_standard_voc_color_map():
    palette = voc_palette()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]  # aeroplane
    assert palette[15 * 3:16 * 3] == [192, 128, 128]  # person
    assert palette[255 * 3:] == [224, 224, 192]  # void


def test_write_voc_writes_real_layout(voc: Path):
    assert voc.name == "VOC2007" and voc.parent.name == "VOCdevkit"
    assert (voc / "ImageSets/Main/trainval.txt").read_text() == "000005\n000007\n000009\n"
    assert (voc / "ImageSets/Main/test.txt").read_text() == "000007\n"
    assert (voc / "ImageSets/Main/dog_trainval.txt").read_text() == "000005  1\n000007  0\n000009 -1\n"
    assert (voc / "ImageSets/Main/person_trainval.txt").read_text() == "000005  0\n000007 -1\n000009 -1\n"
    assert (voc / "ImageSets/Main/cat_test.txt").read_text() == "000007  1\n"
    assert (voc / "ImageSets/Segmentation/trainval.txt").read_text() == "000005\n000009\n"
    assert not (voc / "ImageSets/Segmentation/test.txt").exists()
    assert sorted(p.name for p in (voc / "SegmentationClass").iterdir()) == ["000005.png", "000009.png"]
    with Image.open(voc / "JPEGImages/000005.jpg") as jpeg:
        assert (jpeg.format, jpeg.size) == ("JPEG", (12, 10))

    root = ET.parse(voc / "Annotations/000005.xml").getroot()
    assert root.findtext("folder") == "VOC2007" and root.findtext("filename") == "000005.jpg"
    assert [root.findtext(f"size/{t}") for t in ("width", "height", "depth")] == ["12", "10", "3"]
    assert root.findtext("segmented") == "1"
    objects = root.findall("object")
    assert [o.findtext("name") for o in objects] == ["dog", "person"]
    assert [o.findtext("difficult") for o in objects] == ["0", "1"]
    assert [o.findtext("pose") for o in objects] == ["Unspecified"] * 2
    assert [[int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] for o in objects] == \
        [[2, 3, 6, 8], [7, 1, 12, 10]]  # 1-based
    assert ET.parse(voc / "Annotations/000007.xml").getroot().findtext("segmented") == "0"

    with Image.open(voc / "SegmentationClass/000005.png") as png:
        assert png.mode == "P" and png.getpalette()[:768] == voc_palette()
        values = np.asarray(png)
    assert values[0, 0] == 0 and values[3, 2] == DOG + 1 and values[0, 8] == PERSON + 1 and values[5, 6] == 255
    assert sorted(np.unique(values).tolist()) == [0, DOG + 1, PERSON + 1, 255]


def test_round_trip_is_exact(voc: Path, samples: list[Sample]):
    dataset = VOCDataset(voc.parent.parent, "trainval")
    assert len(dataset) == 3 and dataset.num_classes == 20 and dataset.class_names == VOC_CLASSES
    for written, read in zip(samples, dataset):
        assert read.image_id == written.image_id
        assert read.image.dtype == torch.float32 and read.image.shape == written.image.shape
        assert (read.image - written.image).abs().mean() < 0.05
        assert torch.equal(read.labels, written.labels)
        assert torch.equal(read.boxes, written.boxes) and read.boxes.dtype == torch.float32
        assert torch.equal(read.box_labels, written.box_labels)
        assert torch.equal(read.difficult, written.difficult)
        if written.segmentation is None:
            assert read.segmentation is None
        else:
            assert read.segmentation.dtype == torch.int64
            assert torch.equal(read.segmentation, written.segmentation)
    assert dataset[2].boxes.shape == (0, 4) and dataset[2].labels.sum() == 0


def test_root_may_be_any_of_the_three_folders(voc: Path):
    for root in (voc.parent.parent, voc.parent, voc):
        assert VOCDataset(root, "trainval").ids == ["000005", "000007", "000009"]


def test_segmentation_only_and_transform(voc: Path):
    dataset = VOCDataset(voc, "trainval", segmentation_only=True,
                         transform=lambda s: Sample(image=s.image[:, :2, :2], labels=s.labels, image_id=s.image_id + "!"))
    assert dataset.ids == ["000005", "000009"]
    assert dataset[0].image_id == "000005!" and dataset[0].image.shape == (3, 2, 2)


def test_custom_class_names(tmp_path: Path):
    classes = ["disc", "square"]
    sample = Sample(image=smooth_image(6, 6), labels=torch.tensor([0.0, 1.0]), boxes=torch.tensor([[1.0, 1.0, 4.0, 4.0]]),
                    box_labels=torch.tensor([1]), difficult=torch.tensor([False]),
                    segmentation=torch.full((6, 6), 1), image_id="a")
    folder = write_voc(tmp_path, [sample], classes, splits={"test": ["a"]}, year="2012")
    assert folder.name == "VOC2012"
    read = VOCDataset(tmp_path, "test", class_names=classes, year="2012")[0]
    assert read.labels.tolist() == [0.0, 1.0] and torch.equal(read.segmentation, sample.segmentation)


HAND_WRITTEN_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>hand.jpg</filename>
	<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation></source>
	<owner><name>nobody</name></owner>
	<size><width>20</width><height>15</height><depth>3</depth></size>
	<segmented>1</segmented>
	<object>
		<name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
		<bndbox><xmin>3</xmin><ymin>2</ymin><xmax>10</xmax><ymax>8</ymax></bndbox>
	</object>
	<object>
		<name>person</name><pose>Frontal</pose><truncated>0</truncated><difficult>1</difficult>
		<bndbox><xmin>12</xmin><ymin>5</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>
	</object>
	<object>
		<name>dog</name><pose>Unspecified</pose><truncated>0</truncated>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4.5</xmax><ymax>3</ymax></bndbox>
	</object>
</annotation>
"""


def test_reads_a_hand_written_tree(tmp_path: Path):
    folder = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "SegmentationClass", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    (folder / "Annotations/hand.xml").write_text(HAND_WRITTEN_XML)
    Image.new("RGB", (20, 15), (200, 40, 90)).save(folder / "JPEGImages/hand.jpg", quality=95)
    values = np.zeros((15, 20), dtype=np.uint8)
    values[1:8, 2:10] = 12  # dog
    values[4:15, 11:20] = 15  # person
    values[:, 10] = 255
    png = Image.fromarray(values).convert("P")
    png.putpalette([0, 0, 0, 255, 255, 255] * 128)
    png.save(folder / "SegmentationClass/hand.png")
    (folder / "ImageSets/Main/val.txt").write_text("hand\n")

    sample = VOCDataset(tmp_path, "val")[0]
    assert sample.image_id == "hand"
    expected_image = torch.tensor([200, 40, 90]).float().div(255)[:, None, None].expand(3, 15, 20)
    assert (sample.image - expected_image).abs().mean() < 0.05
    assert torch.nonzero(sample.labels).flatten().tolist() == [DOG, PERSON]
    assert sample.boxes.tolist() == [[2, 1, 9, 7], [11, 4, 19, 14], [0, 0, 3.5, 2]]
    assert sample.box_labels.tolist() == [DOG, PERSON, DOG]
    assert sample.difficult.tolist() == [False, True, False]  # a missing <difficult> (VOC2012 style) is 0
    expected = torch.full((15, 20), BACKGROUND)
    expected[1:8, 2:10] = DOG
    expected[4:15, 11:20] = PERSON
    expected[:, 10] = VOID
    assert torch.equal(sample.segmentation, expected)


# ---- errors ---------------------------------------------------------------------------------------

def edit_xml(path: Path, edit) -> None:
    tree = ET.parse(path)
    edit(tree.getroot())
    tree.write(path)


def test_missing_root_lists_the_layout(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"VOC root .*nowhere does not exist") as error:
        VOCDataset(tmp_path / "nowhere")
    assert "VOCdevkit/VOC2007/" in str(error.value) and "JPEGImages/<id>.jpg" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"no VOC2007 folder \(with Annotations/\) found under") as error:
        VOCDataset(tmp_path)
    assert "ImageSets/Main/<split>.txt" in str(error.value)


def test_missing_split_file_names_it_and_the_available_splits(voc: Path):
    with pytest.raises(FileNotFoundError, match=r"split file .*Main/val\.txt not found; "
                                                 r"available splits: \['test', 'trainval'\]"):
        VOCDataset(voc, "val")
    with pytest.raises(FileNotFoundError, match=r"Segmentation/test\.txt not found; available splits: \['trainval'\]"):
        VOCDataset(voc, "test", segmentation_only=True)


def test_missing_image(voc: Path):
    (voc / "JPEGImages/000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*000005\.jpg not found \(it is listed in .*000005\.xml\)"):
        VOCDataset(voc, "trainval")[0]


def test_missing_annotation(voc: Path):
    (voc / "Annotations/000005.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation .*000005\.xml not found"):
        VOCDataset(voc, "trainval")[0]


@pytest.mark.parametrize("edit, message", [
    (lambda root: root.remove(root.find("size")), "expected <size> with <width> and <height>"),
    (lambda root: root.find("size").remove(root.find("size/height")), "expected <height> inside <size>"),
    (lambda root: root.find("object").remove(root.find("object/bndbox")),
     "expected <bndbox> inside the <object> named 'dog'"),
    (lambda root: root.find("object/bndbox").remove(root.find("object/bndbox/ymax")),
     "expected <ymax> inside <bndbox>"),
    (lambda root: root.find("object").remove(root.find("object/name")), "expected <name> inside <object>"),
    (lambda root: setattr(root.find("object/name"), "text", "unicorn"),
     "unknown class 'unicorn'; known classes: aeroplane, bicycle, bird"),
])
def test_bad_xml_is_named(voc: Path, edit, message: str):
    path = voc / "Annotations/000005.xml"
    edit_xml(path, edit)
    with pytest.raises(ValueError, match=rf"annotation .*000005\.xml: {re.escape(message)}"):
        VOCDataset(voc, "trainval")[0]


def test_unparsable_xml(voc: Path):
    (voc / "Annotations/000005.xml").write_text("<annotation><size>")
    with pytest.raises(ValueError, match=r"annotation .*000005\.xml is not valid XML"):
        VOCDataset(voc, "trainval")[0]


def test_xml_size_must_match_the_image(voc: Path):
    edit_xml(voc / "Annotations/000005.xml", lambda root: setattr(root.find("size/width"), "text", "13"))
    with pytest.raises(ValueError, match=r"image .*000005\.jpg is 12x10 \(WxH\) but .*000005\.xml says 13x10"):
        VOCDataset(voc, "trainval")[0]


def test_png_values_outside_the_classes(voc: Path):
    Image.fromarray(np.full((10, 12), 30, dtype=np.uint8)).convert("P").save(voc / "SegmentationClass/000005.png")
    with pytest.raises(ValueError, match=r"segmentation .*000005\.png holds values \[30\]; expected 0 \(background\), "
                                         r"1\.\.20 \(classes\) or 255 \(void\)"):
        VOCDataset(voc, "trainval")[0]


def test_png_size_must_match_the_image(voc: Path):
    Image.fromarray(np.zeros((4, 5), dtype=np.uint8)).convert("P").save(voc / "SegmentationClass/000005.png")
    with pytest.raises(ValueError, match=r"segmentation .*000005\.png is 5x4 \(WxH\) but its image is 12x10"):
        VOCDataset(voc, "trainval")[0]


def test_color_png_is_rejected(voc: Path):
    Image.new("RGB", (12, 10)).save(voc / "SegmentationClass/000005.png")
    with pytest.raises(ValueError, match=r"000005\.png has mode RGB; expected a palette \('P'\) PNG"):
        VOCDataset(voc, "trainval")[0]


def test_segmentation_only_needs_the_png(voc: Path):
    (voc / "SegmentationClass/000009.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"segmentation .*000009\.png not found \(it is listed in "
                                                r".*Segmentation/trainval\.txt\)"):
        VOCDataset(voc, "trainval", segmentation_only=True)[1]


def test_write_voc_rejects_inconsistent_input(tmp_path: Path, samples: list[Sample]):
    with pytest.raises(ValueError, match=r"split 'test' lists ids with no sample: \['000001'\]"):
        write_voc(tmp_path, samples, list(VOC_CLASSES), splits={"test": ["000001"]})
    with pytest.raises(ValueError, match=r"segmentation split 'test' lists ids without a segmentation: \['000007'\]"):
        write_voc(tmp_path, samples, list(VOC_CLASSES), splits={"test": ["000007"]},
                  segmentation_splits={"test": ["000007"]})
    with pytest.raises(ValueError, match="unique, non-empty image_id"):
        write_voc(tmp_path, samples + samples[:1], list(VOC_CLASSES), splits={})
