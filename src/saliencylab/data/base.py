"""What the format readers share: the dataset base class and reading, resizing and writing images."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import pil_to_tensor

from saliencylab.types import Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""Files kept when scanning a class folder (torchvision's list, matched case-insensitively)."""
JPEG_QUALITY = 95


class AnnotatedDataset(Dataset):
    """Base of the format readers: ``class_names`` and the ``ids`` of the images, in order."""

    class_names: tuple[str, ...]
    ids: list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)


def open_rgb(path: Path, listed_in: Path | None = None) -> Image.Image:
    """The image file at ``path`` decoded as PIL RGB; a missing or undecodable file is an error naming it
    (and ``listed_in``, the file that lists it)."""
    listed = f" (it is listed in {listed_in})" if listed_in else ""
    try:
        with Image.open(path) as file:
            return file.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} not found{listed}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}{listed}: {error}; expected a readable JPEG/PNG image") from None


def read_image(path: Path, size: tuple[int, int], described_in: Path) -> Tensor:
    """Read an RGB image as (3,H,W) float32 in [0,1]; check that (H,W) equals ``size`` from ``described_in``."""
    image = pil_to_tensor(open_rgb(path, described_in)).float() / 255
    if tuple(image.shape[1:]) != tuple(size):
        raise ValueError(f"image {path} is {image.shape[2]}x{image.shape[1]} (WxH) but {described_in} "
                         f"says {size[1]}x{size[0]}")
    return image


def clip_boxes(boxes: list[list[float]], size: tuple[int, int], path: str | Path) -> list[list[float]]:
    """Boxes ``[x1, y1, x2, y2]`` (0-based inclusive: a box covers [x1, x2 + 1) x [y1, y2 + 1)) of an image of
    ``size`` (H,W), as ``path`` gives them, clipped to the image with a warning naming ``path``; a box wholly
    outside the image is an error."""
    height, width = size
    clipped = []
    for x1, y1, x2, y2 in boxes:
        if x1 >= width or y1 >= height or x2 <= -1 or y2 <= -1:
            raise ValueError(f"{path}: box (x1, y1, x2, y2) = {(x1, y1, x2, y2)} (0-based) lies wholly outside "
                             f"its {width}x{height} (WxH) image; expected a box that overlaps the image")
        inside = [max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0)]
        if inside != [x1, y1, x2, y2]:
            warnings.warn(f"{path}: box {(x1, y1, x2, y2)} (0-based) reaches outside its {width}x{height} (WxH) "
                          f"image; clipped to {tuple(inside)}", stacklevel=2)
        clipped.append(inside)
    return clipped


def write_image(path: Path, image: Tensor) -> None:
    """Write a (3,H,W) float image in [0,1] as a JPEG of quality JPEG_QUALITY."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path, quality=JPEG_QUALITY)


def build_sample(image: Tensor, boxes: list[list[float]], box_labels: list[int], difficult: list[bool],
                 segmentation: Tensor | None, image_id: str, num_classes: int) -> Sample:
    """A Sample with the contract's dtypes and shapes; labels = multi-hot over ``box_labels``."""
    labels = torch.zeros(num_classes)
    labels[box_labels] = 1.0
    return Sample(
        image=image,
        labels=labels,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        box_labels=torch.tensor(box_labels, dtype=torch.long),
        difficult=torch.tensor(difficult, dtype=torch.bool),
        segmentation=segmentation,
        image_id=image_id,
    )


def resized_crop_geometry(width: int, height: int, resize: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of torchvision's Resize(resize) (shorter side to
    ``resize``, the longer to ⌊resize·long/short⌋) followed by CenterCrop(size) (offsets rounded)."""
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    return new_width, new_height, int(round((new_width - size) / 2)), int(round((new_height - size) / 2))


def load_resized_image(path: Path, size: int, break_ratio: bool = False, listed_in: Path | None = None,
                       resize: int | None = None) -> Tensor:
    """(3,size,size) float in [0,1]: PIL RGB, then Resize(resize, default ``size``) + CenterCrop(size) (PIL bilinear).

    With ``break_ratio``: Resize([size, size]), aspect ratio not kept.
    """
    image = open_rgb(path, listed_in)
    if break_ratio:
        image = F.resize(image, [size, size])
    else:
        image = F.center_crop(F.resize(image, [resize or size]), [size, size])
    return pil_to_tensor(image).float() / 255
