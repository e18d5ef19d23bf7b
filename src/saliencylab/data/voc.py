"""PASCAL VOC on disk: the real ``VOCdevkit/VOC2007`` layout, read into and written from Samples.

VOC stores boxes as 1-based inclusive pixel corners and segmentation as palette PNGs with
0 = background, class c at c+1 and 255 = void; both are converted here, once, to the Sample
label space (0-based inclusive boxes, classes 0..C-1, BACKGROUND, VOID).

The image/sample helpers at the top are shared with :mod:`saliencylab.data.coco`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from saliencylab.data.base import AnnotatedDataset, build_sample, clip_boxes, read_image, write_image
from saliencylab.files import write_atomic
from saliencylab.types import BACKGROUND, VOID, Sample

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_VOID = 255
"""PNG value of void pixels."""

_LAYOUT = """expected layout:
  <root>/VOCdevkit/VOC{year}/
      Annotations/<id>.xml
      JPEGImages/<id>.jpg
      ImageSets/Main/<split>.txt
      ImageSets/Segmentation/<split>.txt   (segmentation only)
      SegmentationClass/<id>.png           (optional)
  root may also be the VOCdevkit folder or the VOC{year} folder itself"""


# ---- helpers sha----------------------------------------------------------------------------------

def voc_palette() -> list[int]:
    """The standard VOC colour map as a flat list of 256 RGB triples (index 1 = (128,0,0))."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


def _text(element: ET.Element, tag: str, path: Path) -> str:
    node = element.find(tag)
    if node is None or not node.text:
        raise ValueError(f"annotation {path}: expected <{tag}> inside <{element.tag}>")
    return node.text.strip()


def _number(element: ET.Element, tag: str, path: Path) -> float:
    text = _text(element, tag, path)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"annotation {path}: <{tag}> inside <{element.tag}> is {text!r}; expected a number") from None


def parse_annotation(path: Path) -> tuple[ET.Element, ET.Element]:
    """(root, <size> element) of a VOC-style annotation XML (VOC, ImageNet bbox files); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"annotation {path} is not valid XML: {error}") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"annotation {path}: expected <size> with <width> and <height>")
    return root, size


def _read_xml(path: Path, class_names: tuple[str, ...]) -> tuple[tuple[int, int], list, list, list]:
    """Parse a VOC annotation: ((H,W), boxes 0-based inclusive, class indices, difficult flags)."""
    root, size = parse_annotation(path)
    hw = (int(_number(size, "height", path)), int(_number(size, "width", path)))
    if min(hw) < 1:
        raise ValueError(f"annotation {path}: <size> is {hw[1]}x{hw[0]} (WxH); expected positive sides")
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        if name not in class_names:
            raise ValueError(f"annotation {path}: unknown class {name!r}; known classes: {', '.join(class_names)}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"annotation {path}: expected <bndbox> inside the <object> named {name!r}")
        boxes.append([_number(box, tag, path) - 1 for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_names.index(name))
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    return hw, clip_boxes(boxes, hw, path), labels, difficult


def read_class_png(path: Path, size: tuple[int, int], num_classes: int) -> Tensor:
    """Read a VOC class PNG as (H,W) int64 in the Sample label space."""
    try:
        with Image.open(path) as png:
            mode, values = png.mode, np.asarray(png)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read segmentation {path}: {error}; expected a palette ('P') PNG") from None
    if mode not in ("P", "L"):
        raise ValueError(f"segmentation {path} has mode {mode}; expected a palette ('P') PNG of class indices")
    if values.shape != tuple(size):
        raise ValueError(f"segmentation {path} is {values.shape[1]}x{values.shape[0]} (WxH) but its image is "
                         f"{size[1]}x{size[0]}")
    bad = np.setdiff1d(np.unique(values), [*range(num_classes + 1), VOC_VOID])
    if bad.size:
        raise ValueError(f"segmentation {path} holds values {bad.tolist()}; expected 0 (background), "
                         f"1..{num_classes} (classes) or {VOC_VOID} (void)")
    segmentation = torch.from_numpy(values.astype(np.int64) - 1)  # class c+1 -> c, 0 -> -1
    segmentation[values == 0] = BACKGROUND
    segmentation[values == VOC_VOID] = VOID
    return segmentation


def _write_png(path: Path, segmentation: Tensor, num_classes: int) -> None:
    seg = segmentation.numpy()
    classes = (seg >= 0) & (seg < num_classes)
    if not (classes | (seg == BACKGROUND) | (seg == VOID)).all():
        raise ValueError(f"segmentation for {path} holds values outside 0..{num_classes - 1}, BACKGROUND, VOID")
    values = np.full(seg.shape, VOC_VOID, dtype=np.uint8)
    values[seg == BACKGROUND] = 0
    values[classes] = seg[classes] + 1
    png = Image.fromarray(values)
    png.putpalette(voc_palette())  # turns the 'L' image into a 'P' one
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path)


def _write_xml(path: Path, sample: Sample, class_names: list[str], year: str) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{sample.image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (sample.image.shape[2], sample.image.shape[1], 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = str(int(sample.segmentation is not None))
    for box, label, difficult in zip(sample.boxes.tolist(), sample.box_labels.tolist(), sample.difficult.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(round(value) + 1)
    ET.indent(root, space="\t")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(f"{line}\n" for line in lines))


def write_voc(root: str | Path, samples: list[Sample], class_names: list[str], splits: dict[str, list[str]],
              segmentation_splits: dict[str, list[str]] | None = None, year: str = "2007") -> Path:
    """Write samples in the VOC layout under ``root/VOCdevkit/VOC{year}``; return that folder.

    Writes JPEGImages (quality 95), Annotations XML (boxes rounded to whole pixels, 1-based),
    SegmentationClass palette PNGs for samples with a segmentation, ImageSets/Main/<split>.txt and
    <class>_<split>.txt (1 present, 0 only difficult, -1 absent), and ImageSets/Segmentation/<split>.txt
    (skipped when empty). ``segmentation_splits`` defaults to each split's samples that have a segmentation.
    """
    by_id = {s.image_id: s for s in samples}
    if len(by_id) != len(samples) or "" in by_id:
        raise ValueError("every sample needs a unique, non-empty image_id (it becomes the file stem)")
    if segmentation_splits is None:
        segmentation_splits = {split: [i for i in ids if i in by_id and by_id[i].segmentation is not None]
                               for split, ids in splits.items()}
    for kind, named_splits in (("split", splits), ("segmentation split", segmentation_splits)):
        for split, ids in named_splits.items():
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                raise ValueError(f"{kind} {split!r} lists ids with no sample: {unknown[:5]}")
    for split, ids in segmentation_splits.items():
        missing = [i for i in ids if by_id[i].segmentation is None]
        if missing:
            raise ValueError(f"segmentation split {split!r} lists ids without a segmentation: {missing[:5]}")

    folder = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sample in samples:
        write_image(folder / "JPEGImages" / f"{sample.image_id}.jpg", sample.image)
        _write_xml(folder / "Annotations" / f"{sample.image_id}.xml", sample, class_names, year)
        if sample.segmentation is not None:
            _write_png(folder / "SegmentationClass" / f"{sample.image_id}.png", sample.segmentation, len(class_names))
    for split, ids in splits.items():
        _write_lines(folder / "ImageSets" / "Main" / f"{split}.txt", ids)
        for c, name in enumerate(class_names):
            flags = [by_id[i].difficult[by_id[i].box_labels == c] for i in ids]
            _write_lines(folder / "ImageSets" / "Main" / f"{name}_{split}.txt",
                         [f"{i} {1 if (~d).any() else 0 if d.any() else -1:2d}" for i, d in zip(ids, flags)])
    for split, ids in segmentation_splits.items():
        if ids:
            _write_lines(folder / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return folder


def _find_voc_folder(root: str | Path, year: str = "2007") -> Path:
    """The VOC{year} folder given it, the VOCdevkit folder or the folder holding VOCdevkit."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root {root} does not exist; " + _LAYOUT.format(year=year))
    for folder in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (folder / "Annotations").is_dir():
            return folder
    raise FileNotFoundError(f"no VOC{year} folder (with Annotations/) found under {root}; " + _LAYOUT.format(year=year))


class VOCDataset(AnnotatedDataset):
    """PASCAL VOC images as Samples (see :class:`saliencylab.types.Sample`).

    labels: multi-hot over every object, difficult ones included; boxes: 0-based inclusive;
    segmentation: from SegmentationClass/<id>.png, or None where there is none.
    ``segmentation_only`` reads ids from ImageSets/Segmentation/<split>.txt instead of Main.
    """

    def __init__(self, root: str | Path, split: str = "test", class_names: tuple[str, ...] | list[str] = VOC_CLASSES,
                 year: str = "2007", segmentation_only: bool = False,
                 transform: Callable[[Sample], Sample] | None = None) -> None:
        self.folder = _find_voc_folder(root, year)
        self.class_names = tuple(class_names)
        self.segmentation_only = segmentation_only
        self.transform = transform
        split_file = self.folder / "ImageSets" / ("Segmentation" if segmentation_only else "Main") / f"{split}.txt"
        if not split_file.is_file():
            per_class = tuple(f"{name}_" for name in self.class_names)
            available = sorted(p.stem for p in split_file.parent.glob("*.txt") if not p.stem.startswith(per_class))
            raise FileNotFoundError(f"split file {split_file} not found; available splits: {available}")
        self.split_file = split_file
        self.ids = split_file.read_text().split()

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        xml = self.folder / "Annotations" / f"{image_id}.xml"
        size, boxes, labels, difficult = _read_xml(xml, self.class_names)
        image = read_image(self.folder / "JPEGImages" / f"{image_id}.jpg", size, described_in=xml)
        png = self.folder / "SegmentationClass" / f"{image_id}.png"
        if self.segmentation_only and not png.is_file():
            raise FileNotFoundError(f"segmentation {png} not found (it is listed in {self.split_file})")
        segmentation = read_class_png(png, size, self.num_classes) if png.is_file() else None
        sample = build_sample(image, boxes, labels, difficult, segmentation, image_id, self.num_classes)
        return self.transform(sample) if self.transform else sample
