"""The synthetic polygon data of the in-model explainer (Rio-Torto et al. 2020, ``Synthetic Dataset/SyntDataset.py``),
written in the layout of :mod:`saliencylab.data.inmodel`.

A (p, q) star polygon joins vertex i of p evenly spaced vertices to vertex i + q (p = −1: a circle). Shapes are
drawn as 1 px anti-aliased black lines on white (drawn 4× larger, then box-downsampled), with random radius
and rotation, never overlapping (their circumscribed circles keep apart) and never cut by the border. The
label says whether the target (p, q) appears; each target instance gets a box (centre ± radius) and its
filled box in the mask. ``simplified``: only the target and circles are drawn, the first shape being the
target with probability 0.5; otherwise the other shapes come from :data:`OTHER_SHAPES` (never the target).
Optional Gaussian pixel noise and a colour for the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from saliencylab.data.inmodel import write_split

CIRCLE = (-1, 0)
OTHER_SHAPES = ((3, 1), (4, 1), (5, 1), (5, 2), (6, 1), (7, 2), (7, 3), CIRCLE)
SUPERSAMPLE = 4
CLASS_NAMES = ("absent", "present")


@dataclass(frozen=True)
class PolygonConfig:
    """What :func:`write_polygons` generates. ``radius``: (min, max) px; ``shapes``: per image; ``target``: (p, q);
    ``noise``: std of Gaussian pixel noise (0..1 scale); ``target_color``: RGB 0-255 of the target's lines."""

    image_size: int = 224
    trainval: int = 100
    test: int = 50
    target: tuple[int, int] = (3, 1)
    shapes: int = 5
    radius: tuple[float, float] = (12.0, 30.0)
    simplified: bool = True
    noise: float = 0.0
    target_color: tuple[int, int, int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.radius
        if not 1 <= low <= high or 2 * high + 4 > self.image_size:
            raise ValueError(f"radius must satisfy 1 <= min <= max and fit the image: got {self.radius} at "
                             f"{self.image_size} px")
        if self.shapes < 1 or self.trainval < 0 or self.test < 0:
            raise ValueError(f"shapes must be >= 1 and image counts >= 0, got {self.shapes}, {self.trainval}, {self.test}")
        if self.target == CIRCLE or self.target[0] < 3 or not 1 <= self.target[1] < self.target[0] / 2 + 0.5:
            raise ValueError(f"target must be a polygon (p, q) with p >= 3 and 1 <= q <= p/2, got {self.target}")


def polygon_lines(p: int, q: int, centre: tuple[float, float], radius: float, angle: float) -> list[tuple]:
    """The segments of star polygon (p, q): vertex i joined to vertex (i + q) mod p."""
    vertices = [(centre[0] + radius * math.cos(angle + 2 * math.pi * i / p),
                 centre[1] + radius * math.sin(angle + 2 * math.pi * i / p)) for i in range(p)]
    return [(vertices[i], vertices[(i + q) % p]) for i in range(p)]


def _place(rng: np.random.Generator, size: int, radius: float, placed: list[tuple[float, float, float]]
           ) -> tuple[float, float] | None:
    """A centre whose circle of ``radius`` stays inside the image and apart from ``placed``; None after 200 tries."""
    for _ in range(200):
        x, y = rng.uniform(radius + 1, size - radius - 2, 2)
        if all(math.hypot(x - px, y - py) > radius + pr + 2 for px, py, pr in placed):
            return float(x), float(y)
    return None


def render(rng: np.random.Generator, config: PolygonConfig) -> tuple[np.ndarray, np.ndarray, int, list[list[int]]]:
    """One image: (image HxWx3 uint8, mask HxW bool, label 0/1, inclusive boxes of the target instances)."""
    size, scale = config.image_size, SUPERSAMPLE
    canvas = Image.new("RGB", (size * scale, size * scale), "white")
    draw = ImageDraw.Draw(canvas)
    label = int(rng.random() < 0.5)
    placed, boxes = [], []
    for index in range(config.shapes):
        target = label == 1 and index == 0
        if target:
            shape = config.target
        elif config.simplified:
            shape = CIRCLE
        else:
            others = [s for s in OTHER_SHAPES if s != tuple(config.target)]
            shape = others[rng.integers(len(others))]
        radius = float(rng.uniform(*config.radius))
        centre = _place(rng, size, radius, placed)
        if centre is None:
            if target:
                raise ValueError(f"no room for the target at {size} px with radius {config.radius}")
            continue
        placed.append((*centre, radius))
        colour = tuple(config.target_color) if target and config.target_color else (0, 0, 0)
        big = (centre[0] * scale, centre[1] * scale)
        if shape == CIRCLE:
            draw.ellipse([big[0] - radius * scale, big[1] - radius * scale, big[0] + radius * scale,
                          big[1] + radius * scale], outline=colour, width=scale)
        else:
            for start, end in polygon_lines(*shape, big, radius * scale, float(rng.uniform(0, 2 * math.pi))):
                draw.line([start, end], fill=colour, width=scale)
        if target:
            boxes.append([max(0, math.floor(centre[0] - radius)), max(0, math.floor(centre[1] - radius)),
                          min(size - 1, math.ceil(centre[0] + radius)), min(size - 1, math.ceil(centre[1] + radius))])
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    if config.noise > 0:
        image = image + rng.normal(0, config.noise * 255, image.shape)
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[y1:y2 + 1, x1:x2 + 1] = True
    return np.clip(image, 0, 255).round().astype(np.uint8), mask, label, boxes


def write_polygons(root: str | Path, config: PolygonConfig = PolygonConfig(), progress: bool = True) -> Path:
    """Write ``root/trainval`` and ``root/test`` (see :mod:`saliencylab.data.inmodel`); return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(config.seed)
    total = config.trainval + config.test
    samples = []
    for index in tqdm(range(total), desc="polygons", disable=not progress):
        image, mask, label, boxes = render(rng, config)
        samples.append((f"{index:06d}", label, image, mask, boxes))
    write_split(root / "trainval", samples[:config.trainval])
    write_split(root / "test", samples[config.trainval:])
    return root
