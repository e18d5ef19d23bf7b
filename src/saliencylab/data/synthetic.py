"""Synthetic multi-label scenes with exact ground truth, written in the real VOC and COCO formats.

Each scene has a textured background, 1-3 class objects and 0-2 class-free distractors. An
object's class is defined by its shape *and* its texture; its colour, size, position and
rotation are random, so colour and place say nothing about the class. Classes co-occur in
pairs (like person and bicycle). Pixels get the class of the top-most object, a 1-pixel
VOC-style VOID band lines every object boundary, and objects that are tiny or mostly hidden
are flagged difficult. Everything is deterministic given the seed.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from saliencylab.files import write_atomic
from saliencylab.types import BACKGROUND, VOID, Sample

CLASSES = ("disc", "square", "triangle", "cross", "ring", "star")
PARTNER = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}
"""Classes that co-occur: a scene's further objects are the first one's partner half of the time."""
TEXTURES = ("solid", "hstripes", "checker", "dots", "dstripes", "vstripes")
"""Texture of each class, in class order."""
DIFFICULT_MIN_SIZE = 0.12
"""Objects whose box side is below this fraction of the image side are difficult."""
DIFFICULT_MAX_HIDDEN = 0.5
"""Objects with more than this fraction of their area hidden by others are difficult."""
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of a synthetic set; two sets with equal configs are identical."""

    image_size: int = 96
    train: int = 900
    val: int = 200
    test: int = 200
    seed: int = 0
    min_object_size: float = 0.22
    max_object_size: float = 0.42
    tiny_fraction: float = 0.08

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        if min(self.train, self.val, self.test) < 1:
            raise ValueError("every split needs at least one image")
        if not 0 < self.min_object_size <= self.max_object_size <= 0.9:
            raise ValueError("object sizes must satisfy 0 < min_object_size <= max_object_size <= 0.9")


def _shape_mask(shape: str, size: int, angle: float) -> np.ndarray:
    """A square (size,size) bool mask of the class shape, rotated by ``angle`` degrees."""
    canvas = Image.new("L", (4 * size, 4 * size), 0)  # 4x supersampled, then downsampled
    draw = ImageDraw.Draw(canvas)
    s = 4 * size
    c = s / 2
    if shape == "disc":
        draw.ellipse([0.05 * s, 0.05 * s, 0.95 * s, 0.95 * s], fill=255)
    elif shape == "square":
        draw.rectangle([0.15 * s, 0.15 * s, 0.85 * s, 0.85 * s], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, 0.05 * s), (0.95 * s, 0.9 * s), (0.05 * s, 0.9 * s)], fill=255)
    elif shape == "cross":
        draw.rectangle([0.35 * s, 0.05 * s, 0.65 * s, 0.95 * s], fill=255)
        draw.rectangle([0.05 * s, 0.35 * s, 0.95 * s, 0.65 * s], fill=255)
    elif shape == "ring":
        draw.ellipse([0.05 * s, 0.05 * s, 0.95 * s, 0.95 * s], fill=255)
        draw.ellipse([0.32 * s, 0.32 * s, 0.68 * s, 0.68 * s], fill=0)
    elif shape == "star":
        radii = [0.47 * s if i % 2 == 0 else 0.2 * s for i in range(10)]
        points = [(c + r * np.sin(i * np.pi / 5), c - r * np.cos(i * np.pi / 5)) for i, r in enumerate(radii)]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    canvas = canvas.rotate(angle, resample=Image.BILINEAR)
    return np.asarray(canvas.resize((size, size), Image.BILINEAR)) > 127


def _texture(name: str, size: int, period: int, phase: int) -> np.ndarray:
    """A (size,size) float pattern in {0,1} (solid = all 1)."""
    y, x = np.mgrid[0:size, 0:size] + phase
    half = period // 2
    if name == "solid":
        return np.ones((size, size))
    if name == "hstripes":
        return (y % period < half).astype(float)
    if name == "vstripes":
        return (x % period < half).astype(float)
    if name == "dstripes":
        return ((x + y) % period < half).astype(float)
    if name == "checker":
        return ((x // half + y // half) % 2).astype(float)
    if name == "dots":
        return (((x % period) - half) ** 2 + ((y % period) - half) ** 2 > (period / 3.2) ** 2).astype(float)
    raise ValueError(f"unknown texture {name!r}")


def _color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size,size,3) smooth low-saturation noise plus a gradient, values in [0,1]."""
    base = _color(rng, (0.0, 0.3), (0.35, 0.75))
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(size / 12, size / 12, 0))
    noise = noise / (np.abs(noise).max() + 1e-8) * 0.15
    ramp = np.linspace(-0.1, 0.1, size)[:, None, None] * rng.choice([-1, 1])
    return np.clip(base + noise + ramp, 0, 1)


def _distractor(rng: np.random.Generator, size: int) -> np.ndarray:
    """A class-free (size,size) bool mask: a thick scribble or a smooth blob."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.5:
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(rng.integers(3, 6))]
        draw.line(points, fill=255, width=int(rng.integers(2, 4)))
        return np.asarray(canvas) > 0
    blob = ndimage.gaussian_filter(rng.random((size, size)), sigma=size / 16)
    centre = rng.uniform(0.2, 0.8, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    radius = rng.uniform(0.06, 0.12) * size
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
    return inside & (blob > np.median(blob[inside]) if inside.any() else inside)


def _draw_classes(rng: np.random.Generator) -> list[int]:
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    classes = [int(rng.integers(len(CLASSES)))]
    for _ in range(count - 1):
        classes.append(PARTNER[classes[0]] if rng.random() < 0.5 else int(rng.integers(len(CLASSES))))
    return classes


def render_scene(rng: np.random.Generator, config: SyntheticConfig, image_id: str) -> Sample:
    """Render one scene; see the module docstring."""
    n = config.image_size
    image = _background(rng, n)
    seg = np.full((n, n), BACKGROUND, dtype=np.int64)
    owner = np.full((n, n), -1, dtype=np.int64)  # index of the top-most object at each pixel
    for _ in range(int(rng.integers(0, 3))):
        image[_distractor(rng, n)] = _color(rng, (0.5, 1.0), (0.5, 1.0))
    objects: list[tuple[int, np.ndarray]] = []
    for index, cls in enumerate(_draw_classes(rng)):
        tiny = rng.random() < config.tiny_fraction
        low, high = (0.07, 0.11) if tiny else (config.min_object_size, config.max_object_size)
        side = max(int(rng.uniform(low, high) * n), 6)
        top, left = (int(v) for v in rng.integers(0, n - side + 1, size=2))
        shape = _shape_mask(CLASSES[cls], side, float(rng.uniform(0, 360)))
        full = np.zeros((n, n), dtype=bool)
        full[top:top + side, left:left + side] = shape
        pattern = _texture(TEXTURES[cls], side, period=max(4, side // 5) // 2 * 2, phase=int(rng.integers(8)))
        color = _color(rng, (0.6, 1.0), (0.7, 1.0))
        shade = color * 0.35
        patch = pattern[..., None] * color + (1 - pattern[..., None]) * shade
        region = image[top:top + side, left:left + side]
        region[shape] = patch[shape]
        owner[full] = index
        objects.append((cls, full))
    boxes, labels, difficult = [], [], []
    for index, (cls, full) in enumerate(objects):
        visible = owner == index
        if not visible.any():
            continue
        seg[visible] = cls
        ys, xs = np.nonzero(full)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        labels.append(cls)
        side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        hidden = 1 - visible.sum() / full.sum()
        difficult.append(side < DIFFICULT_MIN_SIZE * n or hidden > DIFFICULT_MAX_HIDDEN)
    band = np.zeros((n, n), dtype=bool)
    for index in range(len(objects)):
        visible = owner == index
        band |= ndimage.binary_dilation(visible) & ~ndimage.binary_erosion(visible)
    seg[band] = VOID
    multi_hot = torch.zeros(len(CLASSES))
    multi_hot[labels] = 1.0
    return Sample(
        image=torch.from_numpy(image.transpose(2, 0, 1)).float(),
        labels=multi_hot,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        box_labels=torch.tensor(labels, dtype=torch.long),
        difficult=torch.tensor(difficult, dtype=torch.bool),
        segmentation=torch.from_numpy(seg),
        image_id=image_id,
    )


def generate(config: SyntheticConfig, progress: bool = False) -> dict[str, list[Sample]]:
    """All splits of the set, in memory: ``{"train": [...], "val": [...], "test": [...]}``.

    Image ids are 6-digit numbers, unique across splits (COCO needs numeric ids).
    """
    rng = np.random.default_rng(config.seed)
    total = config.train + config.val + config.test
    scenes = [render_scene(rng, config, f"{i + 1:06d}")
              for i in tqdm(range(total), desc="synthetic scenes", disable=not progress)]
    first_val, first_test = config.train, config.train + config.val
    return {"train": scenes[:first_val], "val": scenes[first_val:first_test], "test": scenes[first_test:]}


def write_synthetic(root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True,
                    overwrite: bool = False) -> Path:
    """Write the set under ``root`` as VOC2007 (``root/voc``) and COCO (``root/coco``); return ``root``.

    A finished set is marked by ``root/synthetic.json`` holding its config; a call with the same
    config reuses it. A different config, or ``overwrite=True``, rewrites it. Every test image
    has a segmentation (VOC ``ImageSets/Segmentation/test.txt``); train and val have them too.
    """
    from saliencylab.data.coco import write_coco
    from saliencylab.data.voc import write_voc

    root = Path(root)
    marker = root / "synthetic.json"
    if marker.is_file() and not overwrite:
        try:
            if json.loads(marker.read_text()) == asdict(config):
                return root
        except json.JSONDecodeError:
            pass  # a corrupt marker means an unfinished set: rewrite it
    marker.unlink(missing_ok=True)
    splits = generate(config, progress=progress)
    everything = [s for split in SPLITS for s in splits[split]]
    ids = {split: [s.image_id for s in splits[split]] for split in SPLITS}
    write_voc(root / "voc", everything, list(CLASSES), splits=ids, segmentation_splits=ids)
    for split in SPLITS:
        write_coco(root / "coco" / "annotations" / f"instances_{split}.json", root / "coco" / split,
                   splits[split], list(CLASSES))
    write_atomic(marker, json.dumps(asdict(config), indent=2))
    return root
