"""Sanity checks for saliency maps (Adebayo et al. 2018, as Phang et al. 2020 use them).

* **Model-parameter randomisation**: re-initialise the classifier's layers from the output side to
  the input side, either *cascading* (layers stay random, more each step) or *independent* (one
  layer at a time), and measure how similar the maps stay to the maps of the trained model. A
  method whose maps do not change is not explaining the model.
* **Data randomisation**: compare the maps of a normally trained model with those of a model
  trained on random labels (:func:`compare_maps`).

Four similarity measures, one value per map: Spearman rank correlation, Spearman of |0.5 − m|,
Pearson correlation of HOG features and SSIM. All but plain Spearman expect maps in [0,1]: masks
(sigmoid outputs) or attribution maps normalised by the explain callable (e.g.
``saliencylab.maps.normalize_minmax``). NaN means undefined (a NaN map, or a constant map for
the correlations), never a silent 0 or 1.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torch import Tensor, nn
from tqdm import tqdm

from saliencylab.bench.report import save_png
from saliencylab.models.classifier import Classifier, check_images

MEASURES = ("spearman", "spearman_abs", "hog_pearson", "ssim")
HOG_CELL = 16
HOG_BLOCK = 3
SSIM_WINDOW = 5
SSIM_DATA_RANGE = 1.0

Targets = int | list[int] | Tensor
Explain = Callable[[Classifier, Tensor, Targets], Tensor]
"""``explain(classifier, images, targets) -> maps`` (B,H,W) or (B,K,H,W)."""


def _check_pair(a: Tensor, b: Tensor) -> None:
    for name, maps in (("a", a), ("b", b)):
        if not isinstance(maps, Tensor):
            raise TypeError(f"maps {name} must be a torch.Tensor (B,H,W), got {type(maps).__name__}")
        if maps.dim() != 3:
            raise ValueError(f"maps {name} must have shape (B,H,W), got {tuple(maps.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_unit_range(maps: Tensor, measure: str) -> None:
    finite = maps[maps.isfinite()]
    if finite.numel() and (float(finite.min()) < 0.0 or float(finite.max()) > 1.0):
        raise ValueError(f"{measure} expects maps in [0,1], got range [{float(finite.min()):.3g}, "
                         f"{float(finite.max()):.3g}]; apply a sigmoid to mask logits or normalise "
                         "attribution maps (saliencylab.maps.normalize_minmax)")


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of each row of x and y (N,P) float64; NaN where a row is constant."""
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    value = (x * y).sum(dim=1) / ((x * x).sum(dim=1) * (y * y).sum(dim=1)).sqrt()
    return value.clamp(-1.0, 1.0)


def rank(values: Tensor) -> Tensor:
    """Ranks 1..P of each row of values (N,P), ties get their average rank (scipy's "average")."""
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, right=False)
    up_to = torch.searchsorted(ordered, values, right=True)
    return (below + up_to + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per map: maps (B,H,W), any real values -> (B,) float64 in [-1,1] on the CPU.

    NaN for a map holding NaN or a constant map.
    """
    _check_pair(a, b)
    x, y = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    value = _pearson_rows(rank(x), rank(y))
    return value.masked_fill(x.isnan().any(dim=1) | y.isnan().any(dim=1), math.nan).cpu()


def spearman_abs(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of |0.5 − m| per map: maps (B,H,W) in [0,1] -> (B,) float64 on the CPU.

    Ranks pixels by how far the mask is from undecided (0.5), so a map and its inverse 1 − m
    score 1.
    """
    _check_pair(a, b)
    _check_unit_range(a, "spearman_abs")
    _check_unit_range(b, "spearman_abs")
    return spearman((0.5 - a).abs(), (0.5 - b).abs())


def _per_map(a: Tensor, b: Tensor, score: Callable[[np.ndarray, np.ndarray], float]) -> Tensor:
    """score(a_i, b_i) for each pair of (H,W) float64 arrays; NaN where either map holds NaN."""
    x, y = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    values = [math.nan if np.isnan(xi).any() or np.isnan(yi).any() else score(xi, yi) for xi, yi in zip(x, y)]
    return torch.tensor(values, dtype=torch.float64)


def _hog(image: np.ndarray) -> np.ndarray:
    """HOG descriptor of one (H,W) map: 9 orientations, 16×16-pixel cells, 3×3-cell blocks, L2-Hys."""
    return hog(image, orientations=9, pixels_per_cell=(HOG_CELL, HOG_CELL),
               cells_per_block=(HOG_BLOCK, HOG_BLOCK), block_norm="L2-Hys", feature_vector=True)


def hog_pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the HOG features of each pair of maps (B,H,W) -> (B,) float64 on the CPU.

    Maps need H,W >= 48 (one block of 3×3 cells of 16 px). NaN when a map has no gradient at all.
    """
    _check_pair(a, b)
    size = HOG_CELL * HOG_BLOCK
    if min(a.shape[1:]) < size:
        raise ValueError(f"hog_pearson needs maps of at least {size}x{size} pixels "
                         f"({HOG_BLOCK}x{HOG_BLOCK} cells of {HOG_CELL} px), got {tuple(a.shape[1:])}")

    def score(x: np.ndarray, y: np.ndarray) -> float:
        features = torch.from_numpy(np.stack([_hog(x), _hog(y)]))
        return float(_pearson_rows(features[:1], features[1:]))

    return _per_map(a, b, score)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per map: maps (B,H,W) in [0,1] -> (B,) float64 in [-1,1] on the CPU.

    scikit-image's SSIM with a 5×5 uniform window and data_range 1; maps need H,W >= 5.
    """
    _check_pair(a, b)
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(a.shape[1:])}")
    _check_unit_range(a, "ssim")
    _check_unit_range(b, "ssim")
    return _per_map(a, b, lambda x, y: float(structural_similarity(
        x, y, win_size=SSIM_WINDOW, data_range=SSIM_DATA_RANGE)))


def compare_maps(maps_a: Tensor, maps_b: Tensor) -> dict[str, Tensor]:
    """All four measures between two sets of maps, one value per map.

    maps (B,H,W), or (B,K,H,W) compared per (image, target) as B·K maps; values in [0,1].
    Returns ``{measure: (B·K,) float64}`` for each name in MEASURES. Used for the data
    randomisation test: the maps of a normally trained model against a random-label model's.
    """
    for name, maps in (("maps_a", maps_a), ("maps_b", maps_b)):
        if not isinstance(maps, Tensor) or maps.dim() not in (3, 4):
            shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise ValueError(f"{name} must be a tensor (B,H,W) or (B,K,H,W), got {shape}")
    if maps_a.shape != maps_b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}")
    a, b = maps_a.flatten(0, -3), maps_b.flatten(0, -3)
    _check_unit_range(a, "compare_maps")
    _check_unit_range(b, "compare_maps")
    return {"spearman": spearman(a, b), "spearman_abs": spearman_abs(a, b),
            "hog_pearson": hog_pearson(a, b), "ssim": ssim(a, b)}


def _layer_of(parameter_name: str) -> str:
    """The randomisation unit of a parameter: its module path cut to two names (a root parameter: itself)."""
    module_path = parameter_name.split(".")[:-1]
    return ".".join(module_path[:2]) if module_path else parameter_name


def _parameters_of(model: nn.Module, layer: str) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if name == layer or name.startswith(layer + ".")]


def randomization_layers(classifier: Classifier) -> list[str]:
    """The layers that get randomised, from the output side to the input side.

    Module paths of ``classifier.model`` with parameters, at name depth <= 2 (``"head"``,
    ``"features.3"``, ``"layer4.2"``, ``"conv1"``); every parameter belongs to exactly one. The
    order is the reverse of ``named_parameters()``, so parameters of the model itself (a ViT's
    ``cls_token``, one layer each) come last, with the input side.
    """
    layers = dict.fromkeys(_layer_of(name) for name, _ in classifier.model.named_parameters())
    if not layers:
        raise ValueError("the classifier's model has no parameters to randomise")
    return list(reversed(layers))


@torch.no_grad()
def randomize_layer(classifier: Classifier, layer: str, generator: torch.Generator) -> None:
    """Re-initialise, in place, every parameter of ``layer`` (a name from :func:`randomization_layers`).

    Rules of the masking-saliency authors' released code (Phang et al. 2020): 4-D weights ~ N(0, std = sqrt(2 / (shape0·shape1·shape3))); other
    parameters with >= 2 dims: kaiming_uniform(a=√5) (PyTorch's default for Linear and ConvNd);
    1-D (and 0-D) parameters ~ U(±1/√numel). Values are drawn on the CPU from ``generator``.
    """
    params = _parameters_of(classifier.model, layer)
    if not params:
        raise ValueError(f"{layer!r} is not a layer of the model; "
                         f"randomisable layers: {', '.join(randomization_layers(classifier))}")
    for param in params:
        fresh = torch.empty(param.shape, dtype=torch.float32)
        if param.dim() == 4:
            std = math.sqrt(2.0 / (param.shape[0] * param.shape[1] * param.shape[3]))
            nn.init.normal_(fresh, 0.0, std, generator=generator)
        elif param.dim() >= 2:
            nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        else:
            bound = 1.0 / math.sqrt(param.numel())
            nn.init.uniform_(fresh, -bound, bound, generator=generator)
        param.copy_(fresh)


@dataclass
class RandomizationResult:
    """Similarity to the trained model's maps after each randomisation step.

    ``layers``: ``"original"`` (a second run of the unchanged model: 1 for a deterministic
    method, its noise floor otherwise) then the randomised layers, output side first.
    ``per_image[measure]``: (L+1, N) float64, one row per entry of ``layers``, one column per map.
    ``mean[measure]``: (L+1,) mean over maps, NaN values left out.
    """

    mode: str
    layers: list[str]
    per_image: dict[str, Tensor]
    mean: dict[str, Tensor]

    def to_dict(self) -> dict:
        """Plain lists and floats (NaN kept) for JSON."""
        return {"mode": self.mode, "layers": list(self.layers),
                "mean": {m: v.tolist() for m, v in self.mean.items()},
                "per_image": {m: v.tolist() for m, v in self.per_image.items()}}


def _randomization(mode: str, explain: Explain, classifier: Classifier, images: Tensor, targets: Targets,
                   seed: int, layers: Sequence[str] | None, progress: bool) -> RandomizationResult:
    check_images(images)
    all_layers = randomization_layers(classifier)
    layers = all_layers if layers is None else list(layers)
    unknown = [name for name in layers if name not in all_layers]
    if unknown or not layers:
        raise ValueError(f"unknown layer(s) {unknown or '(none given)'}; randomisable layers, output side first: "
                         f"{', '.join(all_layers)}")
    model = classifier.model
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    try:
        gold = explain(classifier, images, targets)
        rows = [compare_maps(gold, explain(classifier, images, targets))]
        for layer in tqdm(layers, desc=f"{mode} randomization", unit="layer", disable=not progress):
            randomize_layer(classifier, layer, generator)
            rows.append(compare_maps(gold, explain(classifier, images, targets)))
            if mode == "independent":
                model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    per_image = {m: torch.stack([row[m] for row in rows]) for m in MEASURES}
    mean = {m: values.nanmean(dim=1) for m, values in per_image.items()}
    return RandomizationResult(mode, ["original", *layers], per_image, mean)


def cascading_randomization(explain: Explain, classifier: Classifier, images: Tensor, targets: Targets,
                            seed: int = 0, layers: Sequence[str] | None = None,
                            progress: bool = False) -> RandomizationResult:
    """Randomise layers one after another from the output side, keeping earlier ones random.

    ``explain(classifier, images, targets)`` returns maps (B,H,W) or (B,K,H,W) in [0,1] (see the
    module docstring); pass explicit ``targets`` so every run explains the same classes.
    ``layers``: a subset of :func:`randomization_layers` in the order to randomise (default all).
    ``seed`` fixes the new weights; the original weights are restored afterwards, always. ``progress``:
    a progress bar over the layers.
    """
    return _randomization("cascading", explain, classifier, images, targets, seed, layers, progress)


def independent_randomization(explain: Explain, classifier: Classifier, images: Tensor, targets: Targets,
                              seed: int = 0, layers: Sequence[str] | None = None,
                              progress: bool = False) -> RandomizationResult:
    """Randomise one layer at a time (restored after its run); arguments as :func:`cascading_randomization`.

    With the same seed and layers, each layer gets the same new weights as in the cascading test.
    """
    return _randomization("independent", explain, classifier, images, targets, seed, layers, progress)


def plot_randomization(result: RandomizationResult, path: Path | str, title: str = "") -> Path:
    """Save the mean similarity per step as a PNG: x the steps (original, then layers from the top),
    one line per measure. Returns the path."""
    from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg

    figure = Figure(figsize=(max(5.0, 0.45 * len(result.layers) + 2.0), 4.0), dpi=100)
    axes = figure.add_subplot()
    steps = range(len(result.layers))
    for measure, values in result.mean.items():
        axes.plot(steps, values.numpy(), marker="o", label=measure)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_ylim(-1.05, 1.05)
    axes.set_xticks(steps, result.layers, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("similarity to the trained model's maps")
    axes.set_title(title or f"{result.mode} randomisation", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    save_png(Image.open(buffer).convert("RGB"), path)
    return path
