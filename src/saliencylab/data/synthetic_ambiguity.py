"""Synthetic sets for deliberative explanations (paper 003) whose class ambiguities are known exactly, written in
the real CUB-200-2011 and ADE20K layouts so the reproduction runs the real loaders.

- **Birds** (CUB layout): a body ellipse carrying six parts at fixed places (back, beak, belly, crown, left wing,
  tail), each part a shape of its own with one of three looks (a texture: solid, stripes or checker, in a bright
  colour of random hue, so colour says nothing); a class is one look per part.
  Two classes share a part when they give it the same look, and the attribute table encodes exactly that (each
  part's CUB attribute groups put 100 % on the look's column), so the Endres-Schindelin rule recovers the shared
  parts. Each part is hidden (not drawn, written invisible) with probability ``hide``, which makes images whose
  visible parts fit several classes: these are the hard ones, and their shared visible parts are what an
  insecurity should point at.
- **Scenes** (ADE20K layout): a scene class is a pair of objects (the shapes of :mod:`.synthetic`); an image shows
  both, or (probability ``hide`` each) only one of them, so it fits every scene holding that object; a stray third
  object appears with probability 0.15 (under the 0.3 co-occurrence cut). objectInfo150.txt lists 150 objects as
  ADE20K does; only ids 1-6 occur, so co-occurrence is as sparse as in ADE20K and the rule recovers exactly the
  objects two scenes share.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from saliencylab.data.ade20k import write_ade20k
from saliencylab.data.cub import CUB_ATTRIBUTES, CUB_PART_GROUPS, CUB_PARTS, write_cub
from saliencylab.data.synthetic import CLASSES as SHAPES, TEXTURES, _background, _color, _shape_mask, _texture

BIRD_PARTS = {"back": (0.0, -0.17), "beak": (-0.36, -0.16), "belly": (-0.04, 0.17), "crown": (-0.24, -0.3),
              "left wing": (0.13, 0.0), "tail": (0.36, 0.02)}
"""The drawn parts and their offsets from the body centre (fractions of the image side)."""
LOOKS = 3
LOOK_TEXTURES = ("solid", "hstripes", "checker")
COLOUR_SEEDS = (0.0, 0.33, 0.62)
"""Per look, the base of the seed of its colour generator (jittered per part, so the hue comes out random)."""
SCENE_OBJECTS = ((0, 1), (0, 2), (1, 3), (2, 3), (4, 5), (0, 4), (1, 5), (3, 5))
"""Scene class -> its two objects (indices of the shapes; object id = index + 1)."""
STRAY_OBJECT = 0.15
OBJECT_NAMES = tuple(SHAPES) + tuple(f"unused_{i:03d}" for i in range(len(SHAPES) + 1, 151))


@dataclass(frozen=True)
class AmbiguityConfig:
    """Size and seed of a synthetic bird or scene set (``classes`` is the number of bird classes)."""

    image_size: int = 64
    train: int = 1000
    test: int = 300
    classes: int = 10
    hide: float = 0.3
    seed: int = 0


def bird_looks(config: AmbiguityConfig) -> np.ndarray:
    """(classes, 6) distinct looks (0..2) per class and drawn part, drawn with the config's seed."""
    rng = np.random.default_rng(config.seed)
    looks: list[tuple[int, ...]] = []
    while len(looks) < config.classes:
        candidate = tuple(int(v) for v in rng.integers(LOOKS, size=len(BIRD_PARTS)))
        if candidate not in looks:
            looks.append(candidate)
    return np.array(looks)


def bird_attributes(looks: np.ndarray) -> np.ndarray:
    """(classes, 312) percentages: per drawn part, each of its CUB attribute groups holds 100 on the column of
    the class's look; every other column is 0 for every class."""
    table = np.zeros((len(looks), CUB_ATTRIBUTES))
    for slot, name in enumerate(BIRD_PARTS):
        for first, _ in CUB_PART_GROUPS[CUB_PARTS.index(name)]:
            table[np.arange(len(looks)), first - 1 + looks[:, slot]] = 100.0
    return table


def shared_bird_parts(looks: np.ndarray) -> np.ndarray:
    """(classes, classes, 15) bool, the truth by construction: a part is shared when the classes give it equal
    looks; an undrawn part (never visible) is shared unless it has a drawn part's attribute groups (the right
    wing has the left wing's), as its attributes are equal."""
    shared = np.ones((len(looks), len(looks), len(CUB_PARTS)), dtype=bool)
    for slot, name in enumerate(BIRD_PARTS):
        groups = CUB_PART_GROUPS[CUB_PARTS.index(name)]
        for part in range(len(CUB_PARTS)):
            if CUB_PART_GROUPS[part] == groups:
                shared[:, :, part] = looks[:, None, slot] == looks[None, :, slot]
    return shared


def _paint(image: np.ndarray, mask: np.ndarray, top: int, left: int, look: int, rng: np.random.Generator) -> None:
    """Paint ``mask`` at (top, left) with the texture of ``look`` in a bright colour of random hue (clipped to the
    image)."""
    side = mask.shape[0]
    pattern = _texture(LOOK_TEXTURES[look], side, period=max(4, side // 3) // 2 * 2, phase=int(rng.integers(4)))
    seed = int((COLOUR_SEEDS[look] + rng.uniform(-0.04, 0.04)) % 1.0 * 1e6)
    color = _color(np.random.default_rng([seed]), (0.8, 0.8), (0.95, 0.95))
    patch = pattern[..., None] * color + (1 - pattern[..., None]) * color * 0.3
    n = image.shape[0]
    ys, xs = np.nonzero(mask)
    ys, xs = ys + top, xs + left
    keep = (ys >= 0) & (ys < n) & (xs >= 0) & (xs < n)
    image[ys[keep], xs[keep]] = patch[ys[keep] - top, xs[keep] - left]


def render_bird(rng: np.random.Generator, looks: np.ndarray, label: int, config: AmbiguityConfig):
    """(image (3,n,n), keypoints (15,2), visible (15,)) of one bird of class ``label``."""
    n = config.image_size
    image = _background(rng, n)
    cx, cy = n / 2 + rng.uniform(-0.05, 0.05) * n, n / 2 + rng.uniform(-0.05, 0.05) * n
    yy, xx = np.mgrid[0:n, 0:n]
    body = ((xx - cx) / (0.34 * n)) ** 2 + ((yy - cy) / (0.22 * n)) ** 2 <= 1
    image[body] = _color(rng, (0.0, 0.25), (0.45, 0.65))
    keypoints, visible = torch.zeros(len(CUB_PARTS), 2), torch.zeros(len(CUB_PARTS), dtype=torch.bool)
    hidden = rng.random(len(BIRD_PARTS)) < config.hide
    if hidden.all():
        hidden[rng.integers(len(BIRD_PARTS))] = False
    side = max(6, round(0.17 * n))
    for slot, (name, (dx, dy)) in enumerate(BIRD_PARTS.items()):
        x, y = cx + dx * n, cy + dy * n
        if hidden[slot]:
            continue
        mask = _shape_mask(SHAPES[slot], side, float(rng.uniform(-20, 20)))
        _paint(image, mask, round(y - side / 2), round(x - side / 2), int(looks[label, slot]), rng)
        part = CUB_PARTS.index(name)
        keypoints[part] = torch.tensor([min(max(x, 0), n - 1), min(max(y, 0), n - 1)])
        visible[part] = True
    return torch.from_numpy(image.transpose(2, 0, 1)).float(), keypoints, visible


def render_scene_image(rng: np.random.Generator, scene: int, config: AmbiguityConfig):
    """(image (3,n,n), object ids (n,n)) of one image of scene class ``scene``."""
    n = config.image_size
    image = _background(rng, n)
    objects = torch.zeros(n, n, dtype=torch.long)
    first, second = SCENE_OBJECTS[scene]
    drawn = [first, second]
    roll = rng.random()
    if roll < config.hide:
        drawn = [first]
    elif roll < 2 * config.hide:
        drawn = [second]
    if rng.random() < STRAY_OBJECT:
        drawn.append(int(rng.choice([o for o in range(len(SHAPES)) if o not in (first, second)])))
    cells = rng.permutation(4)[:len(drawn)]  # one object per image quadrant, so none hides another
    for obj, cell in zip(drawn, cells):
        side = int(rng.uniform(0.34, 0.46) * n)
        top = (cell // 2) * n // 2 + int(rng.integers(0, max(1, n // 2 - side + 1)))
        left = (cell % 2) * n // 2 + int(rng.integers(0, max(1, n // 2 - side + 1)))
        mask = _shape_mask(SHAPES[obj], side, float(rng.uniform(0, 360)))
        pattern = _texture(TEXTURES[obj], side, period=max(4, side // 5) // 2 * 2, phase=int(rng.integers(8)))
        color = _color(rng, (0.6, 1.0), (0.7, 1.0))
        patch = pattern[..., None] * color + (1 - pattern[..., None]) * color * 0.35
        region = image[top:top + side, left:left + side]
        region[mask] = patch[mask]
        objects[top:top + side, left:left + side][torch.from_numpy(mask)] = obj + 1
    return torch.from_numpy(image.transpose(2, 0, 1)).float(), objects


def shared_scene_objects() -> np.ndarray:
    """(scenes, scenes, 150) bool, the truth by construction: the objects two scenes both hold (axis o = id o+1)."""
    shared = np.zeros((len(SCENE_OBJECTS), len(SCENE_OBJECTS), len(OBJECT_NAMES)), dtype=bool)
    for a, objects_a in enumerate(SCENE_OBJECTS):
        for b, objects_b in enumerate(SCENE_OBJECTS):
            shared[a, b, sorted(set(objects_a) & set(objects_b))] = True
    return shared


def _reuse(root: Path, config: AmbiguityConfig, kind: str) -> bool:
    marker = root / "synthetic.json"
    return marker.is_file() and json.loads(marker.read_text()) == {"kind": kind, **asdict(config)}


def _mark(root: Path, config: AmbiguityConfig, kind: str) -> Path:
    (root / "synthetic.json").write_text(json.dumps({"kind": kind, **asdict(config)}, indent=2))
    return root


def write_synthetic_birds(root: str | Path, config: AmbiguityConfig = AmbiguityConfig(),
                          progress: bool = False) -> Path:
    """Write (or reuse, same config) the bird set in the CUB_200_2011 layout under ``root``; return ``root``.
    Labels cycle through the classes; the first ``train`` images are the official training split."""
    root = Path(root)
    if _reuse(root, config, "birds"):
        return root
    looks = bird_looks(config)
    rng = np.random.default_rng([config.seed, 1])
    total = config.train + config.test
    labels = [i % config.classes for i in range(total)]
    rendered = [render_bird(rng, looks, label, config) for label in tqdm(labels, desc="synthetic birds",
                                                                        disable=not progress)]
    names = [f"bird_{''.join(str(v) for v in row)}" for row in looks]
    write_cub(root, [r[0] for r in rendered], labels, [r[1] for r in rendered], [r[2] for r in rendered],
              [i < config.train for i in range(total)], names, bird_attributes(looks))
    return _mark(root, config, "birds")


def write_synthetic_scenes(root: str | Path, config: AmbiguityConfig = AmbiguityConfig(),
                           progress: bool = False) -> Path:
    """Write (or reuse, same config) the scene set in the ADEChallengeData2016 layout under ``root``; return
    ``root``. ``config.classes`` is ignored: the scenes are :data:`SCENE_OBJECTS`."""
    root = Path(root)
    if _reuse(root, config, "scenes"):
        return root
    rng = np.random.default_rng([config.seed, 2])
    total = config.train + config.test
    scenes = [i % len(SCENE_OBJECTS) for i in range(total)]
    rendered = [render_scene_image(rng, s, config) for s in tqdm(scenes, desc="synthetic scenes",
                                                                 disable=not progress)]
    names = ["scene_" + "_".join(SHAPES[o] for o in objects) for objects in SCENE_OBJECTS]
    write_ade20k(root, [r[0] for r in rendered], [r[1] for r in rendered], [names[s] for s in scenes],
                 [i < config.train for i in range(total)], list(OBJECT_NAMES))
    return _mark(root, config, "scenes")
