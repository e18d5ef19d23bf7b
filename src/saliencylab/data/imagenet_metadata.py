"""ImageNet (ILSVRC2012) folders, bounding-box XML and the metadata JSONs of masking-based saliency (CASME).

Layouts read::

  <train_dir>/<wnid>/<file>.JPEG                    train images, one folder per class
  <val_dir>/<wnid>/<ILSVRC2012_val_XXXXXXXX>.JPEG   val images, also sorted into class folders
  <val_annotations>/<ILSVRC2012_val_XXXXXXXX>.xml   val boxes (the unpacked ILSVRC2012 bbox_val archive)
  <extended_annotations>/<wnid>/<wnid>_<id>.xml     boxes of a subset of train images (Annotation.tar.gz)

Files written by :func:`prepare_metadata` (the original's ``preproc.py``)::

  metadata JSON  {"root": dir, "samples": [[path, class_idx], ...], "classes": [sorted wnids], "class_to_idx": {...}}
  box JSON       {"<image file stem>": [{"xmin": .., "ymin": .., "xmax": .., "ymax": ..}, ...]}

Box JSONs hold boxes already mapped to the ``size`` x ``size`` centre crop (:func:`center_crop_boxes`),
not clipped, so they may reach outside the crop. As in the original, the XML integers are used as
they are (no -1 shift), and the mapped integers are read as the Sample's inclusive pixel corners.
Only boxes whose ``<name>`` is the image's wnid are kept.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from saliencylab.data.base import IMAGE_EXTENSIONS
from saliencylab.data.voc import parse_annotation
from saliencylab.files import read_json, write_atomic

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")

_FOLDER_LAYOUT = "expected <folder>/<wnid>/<image>, one subfolder per class"


@dataclass
class ImageNetMetadata:
    """The content of a metadata JSON.

    root: the image folder; samples: (path, class index) pairs, a relative path being relative
    to root; classes: the class folder names (wnids), sorted; class index i is ``classes[i]``.
    """

    root: str
    samples: list[tuple[str, int]]
    classes: list[str]

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}


# ---- folders and metadata JSON ----------------------------------------------------------------

def scan_image_folder(folder: str | Path) -> ImageNetMetadata:
    """Every image under ``folder/<wnid>/`` (absolute paths, sorted), labelled by its sorted class folder."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found; {_FOLDER_LAYOUT}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"image folder {folder} has no class subfolders; {_FOLDER_LAYOUT}")
    samples = [(str(path), index) for index, name in enumerate(classes)
               for path in sorted((folder / name).rglob("*"))
               if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {folder}")
    return ImageNetMetadata(str(folder), samples, classes)


def write_metadata(path: str | Path, metadata: ImageNetMetadata) -> Path:
    """Write ``metadata`` as a metadata JSON; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"root": metadata.root, "samples": [list(s) for s in metadata.samples],
                                "classes": metadata.classes, "class_to_idx": metadata.class_to_idx}))
    return path


def read_metadata(path: str | Path) -> ImageNetMetadata:
    """Read and check a metadata JSON (see the module docstring)."""
    path = Path(path)
    data = read_json(path, "metadata file")

    def fail(expected: str) -> ValueError:
        return ValueError(f"metadata file {path}: expected {expected}")

    if not isinstance(data, dict) or {"root", "samples", "classes", "class_to_idx"} - data.keys():
        raise fail('an object with keys "root", "samples", "classes", "class_to_idx"')
    classes = data["classes"]
    if not isinstance(data["root"], str):
        raise fail('"root" to be a folder path')
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise fail('"classes" to be a list of class names')
    if data["class_to_idx"] != {name: index for index, name in enumerate(classes)}:
        raise fail('"class_to_idx" to map each name of "classes" to its position')
    samples = data["samples"]
    if not isinstance(samples, list):
        raise fail('"samples" to be a list of [path, class_idx] pairs')
    for index, entry in enumerate(samples):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and 0 <= entry[1] < len(classes)):
            raise fail(f'"samples" to be [path, class_idx] pairs with 0 <= class_idx < {len(classes)}; '
                       f"entry {index} is {entry!r}")
    return ImageNetMetadata(data["root"], [(p, c) for p, c in samples], classes)


def write_boxes(path: str | Path, boxes: dict[str, list[list[int]]]) -> Path:
    """Write a box JSON: image key -> list of [xmin, ymin, xmax, ymax]; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({key: [dict(zip(BOX_KEYS, box)) for box in value] for key, value in boxes.items()}))
    return path


def read_boxes(path: str | Path) -> dict[str, list[list[int]]]:
    """Read a box JSON: image key -> list of [xmin, ymin, xmax, ymax] integers."""
    path = Path(path)
    data = read_json(path, "box file")
    if not isinstance(data, dict):
        raise ValueError(f"box file {path}: expected an object mapping image keys to lists of boxes")
    boxes = {}
    for key, value in data.items():
        if not isinstance(value, list) or not all(
                isinstance(box, dict) and set(box) == set(BOX_KEYS) and all(isinstance(box[k], int) for k in BOX_KEYS)
                for box in value):
            raise ValueError(f"box file {path}: expected the boxes of {key!r} as a list of objects with integer "
                             f'"xmin", "ymin", "xmax", "ymax"; got {value!r}')
        boxes[key] = [[box[k] for k in BOX_KEYS] for box in value]
    return boxes


# ---- bounding-box XML -------------------------------------------------------------------------

def _int(element: ET.Element, tag: str, path: Path) -> int:
    text = element.findtext(tag)
    if text is None or not text.strip():
        raise ValueError(f"annotation {path}: expected <{tag}> inside <{element.tag}>")
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"annotation {path}: expected an integer in <{tag}>, got {text.strip()!r}") from None


def read_box_xml(path: str | Path, wnid: str) -> tuple[int, int, list[list[int]]]:
    """(width, height, boxes) of an ImageNet annotation; boxes: [xmin, ymin, xmax, ymax] of the objects named ``wnid``.

    Parsed as strict XML (the original used BeautifulSoup's lenient html.parser).
    """
    path = Path(path)
    root, size = parse_annotation(path)
    boxes = []
    for obj in root.findall("object"):
        if (obj.findtext("name") or "").strip() != wnid:
            continue
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"annotation {path}: expected <bndbox> inside the <object> named {wnid!r}")
        boxes.append([_int(box, tag, path) for tag in BOX_KEYS])
    return _int(size, "width", path), _int(size, "height", path), boxes


def write_box_xml(path: Path, folder: str, stem: str, width: int, height: int, boxes: list[list[int]],
                   wnid: str) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = stem
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "ILSVRC_2012"
    size = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (width, height, 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box in boxes:
        obj = ET.SubElement(root, "object")
        for tag, value in (("name", wnid), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = value
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(BOX_KEYS, box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8")


def center_crop_boxes(boxes: list[list[int]], width: int, height: int, size: int = 224,
                      break_ratio: bool = False) -> list[list[int]]:
    """Map raw [xmin, ymin, xmax, ymax] boxes of a width x height image to Resize(size) + CenterCrop(size).

    Shorter side scaled to ``size`` (s = size/shorter side) and the longer one cut by
    (longer*s - size)/2 on each side; ``break_ratio`` scales x by size/width and y by size/height
    with no cut (Resize([size, size])). Each coordinate is ``int(scale*c - cut)``, truncated
    toward zero and NOT clipped, exactly as the original.
    """
    if break_ratio:
        sx, sy, xcut, ycut = size / width, size / height, 0.0, 0.0
    elif width > height:
        sx = sy = size / height
        xcut, ycut = (width * sx - size) / 2, 0.0
    else:
        sx = sy = size / width
        xcut, ycut = 0.0, (height * sy - size) / 2
    return [[int(sx * x1 - xcut), int(sy * y1 - ycut), int(sx * x2 - xcut), int(sy * y2 - ycut)]
            for x1, y1, x2, y2 in boxes]


def _crop_boxes_of(xml: Path, wnid: str, size: int) -> list[list[int]]:
    width, height, boxes = read_box_xml(xml, wnid)
    if not boxes:
        raise ValueError(f"annotation {xml}: no <object> named {wnid!r}, the class of its image")
    return center_crop_boxes(boxes, width, height, size)


# ---- splits -----------------------------------------------------------------------------------

def shuffled_labels(samples: list[tuple[str, int]], num_classes: int, seed: int) -> list[tuple[str, int]]:
    """The samples with labels drawn uniformly and independently from 0..num_classes-1 (not a permutation).

    The original drew them from the unseeded global numpy RNG; here they are fixed by ``seed``.
    """
    labels = np.random.default_rng(seed).integers(num_classes, size=len(samples))
    return [(path, int(label)) for (path, _), label in zip(samples, labels)]


def examples_per_class(samples: list[tuple[str, int]], k: int, seed: int) -> list[tuple[str, int]]:
    """``k`` samples of each class present, drawn without replacement by ``seed``, kept in input order."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, (_, label) in enumerate(samples):
        by_class[label].append(index)
    short = {label: len(indices) for label, indices in sorted(by_class.items()) if len(indices) < k}
    if short:
        raise ValueError(f"{k} examples per class asked for, but " +
                         ", ".join(f"class {label} has {count}" for label, count in short.items()))
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for label in sorted(by_class) for i in rng.choice(by_class[label], k, replace=False))
    return [samples[i] for i in chosen]


def _train_annotations(base: Path) -> dict[tuple[str, str], Path]:
    """(wnid, file stem) -> XML for ``base/<wnid>/<wnid>_<id>.xml`` whose name starts with its folder's wnid."""
    if not base.is_dir():
        raise FileNotFoundError(f"train annotation folder {base} not found; expected <folder>/<wnid>/<wnid>_<id>.xml")
    found = {(xml.parent.name, xml.stem): xml for xml in sorted(base.glob("*/*.xml"))
             if xml.stem.split("_")[0] == xml.parent.name}
    if not found:
        raise FileNotFoundError(f"no <wnid>/<wnid>_<id>.xml files in the train annotation folder {base}")
    return found


def prepare_metadata(train_dir: str | Path, val_dir: str | Path, val_annotations: str | Path, out_dir: str | Path,
                     extended_annotations: str | Path | None = None, num_per_class_in_train_val: int = 50,
                     seed: int = 1234, size: int = 224) -> dict[str, Path]:
    """Write the metadata JSONs of masking-based saliency (Phang et al. 2020) into ``out_dir``; return {file stem: path}.

    train.json: every train image, shuffled by RandomState(seed). With ``extended_annotations``:
    per class (in order of first appearance in train.json) the annotated images are shuffled and
    the first ``num_per_class_in_train_val`` go to train_val.json, the rest and every unannotated
    image to train_train.json, both then shuffled (the original's sequence of RandomState calls);
    train_val_bboxes.json holds their boxes. train_shuffle.json: train.json with
    :func:`shuffled_labels` (seeded). val.json and val_bboxes.json: every val image needs
    ``<val_annotations>/<stem>.xml`` with at least one box of its class. Boxes are mapped to the
    ``size`` centre crop and keyed by file stem. Nothing is written unless every input checks out.
    """
    rng = np.random.RandomState(seed)
    train, val = scan_image_folder(train_dir), scan_image_folder(val_dir)
    if train.classes != val.classes:
        differ = sorted(set(train.classes) ^ set(val.classes))
        raise ValueError(f"the class folders of {train.root} and {val.root} differ ({differ[:5]}); "
                         "both need the same wnid subfolders so class indices agree")
    val_annotations = Path(val_annotations)
    if not val_annotations.is_dir():
        raise FileNotFoundError(f"val annotation folder {val_annotations} not found; expected <folder>/<stem>.xml "
                                "for every val image")
    boxes = {"val_bboxes": {}}
    for path, label in val.samples:
        xml = val_annotations / f"{Path(path).stem}.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"annotation {xml} not found for the val image {path}")
        boxes["val_bboxes"][Path(path).stem] = _crop_boxes_of(xml, val.classes[label], size)

    rng.shuffle(train.samples)
    metadata = {"train": train}
    if extended_annotations is not None:
        annotations = _train_annotations(Path(extended_annotations))
        annotated: dict[int, list[tuple[str, int]]] = {}
        train_train = []
        for path, label in train.samples:
            annotated.setdefault(label, [])
            has_xml = (train.classes[label], Path(path).stem) in annotations
            (annotated[label] if has_xml else train_train).append((path, label))
        train_val = []
        for class_samples in annotated.values():
            rng.shuffle(class_samples)
            train_val += class_samples[:num_per_class_in_train_val]
            train_train += class_samples[num_per_class_in_train_val:]
        rng.shuffle(train_val)
        rng.shuffle(train_train)
        metadata["train_val"] = replace(train, samples=train_val)
        metadata["train_train"] = replace(train, samples=train_train)
        boxes["train_val_bboxes"] = {
            Path(path).stem: _crop_boxes_of(annotations[train.classes[label], Path(path).stem], train.classes[label],
                                            size) for path, label in train_val}
    metadata["train_shuffle"] = replace(train, samples=shuffled_labels(train.samples, len(train.classes), seed))
    metadata["val"] = val

    out = Path(out_dir)
    written = {name: write_metadata(out / f"{name}.json", content) for name, content in metadata.items()}
    return written | {name: write_boxes(out / f"{name}.json", content) for name, content in boxes.items()}
