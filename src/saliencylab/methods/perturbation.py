"""Perturbation attributions that need forward passes only: occlusion and RISE.

Both override ``attribute_targets``: one forward of each perturbed image serves every target
class of that image. The (perturbation, image) rows are flattened and run ``max_batch`` at a time.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register
from saliencylab.models.classifier import Classifier
from saliencylab.perturb import FILLS, fill_images
from saliencylab.targets import check_class_range

RISE_SCORES = ("sigmoid", "softmax", "classifier")
RISE_CHUNK = 32  # TorchRay draws its masks 32 at a time (its batch_size): the order of the random numbers


def target_scores(classifier: Classifier, images: Tensor, classes: Tensor, score: str = "classifier") -> Tensor:
    """Scores (N,K) of classes (N,K) (padded slots clamped to 0) under ``score`` (see RISE_SCORES)."""
    logits = classifier(images)
    check_class_range(classes, logits.shape[1])
    if score == "sigmoid":
        values = logits.sigmoid()
    elif score == "softmax":
        values = logits.softmax(dim=1)
    else:
        values = classifier.apply_score(logits)
    return values.gather(1, classes.clamp_min(0))


def window_starts(size: int, window: int, stride: int) -> Tensor:
    """Captum's window offsets along one axis: 0, stride, … (⌈(size − window)/stride⌉ + 1 of them)."""
    return torch.arange(math.ceil((size - window) / stride) + 1) * stride


def band(starts: Tensor, window: int, size: int) -> Tensor:
    """(n, size) 0/1 float: position p is inside the window starting at starts[i] (truncated at the border)."""
    positions = torch.arange(size)
    return ((positions >= starts[:, None]) & (positions < starts[:, None] + window)).float()


@register("occlusion")
class Occlusion(Method):
    """Occlusion (Zeiler & Fergus, 2014): map(p) = mean over the windows w covering p of S(x) − S(x with w filled).

    Square windows of ``window`` px slide with ``stride`` px (defaults 16 / 8); offsets are
    Captum's (0, stride, …, ⌈(H − window)/stride⌉·stride, the last window truncated at the border),
    and the averaging over covering windows is Captum's ``Occlusion``. A window longer than one
    side of the image is shrunk to it; one covering the whole image (a constant map) is refused. ``fill``: ``"mean"`` (the classifier's mean colour, i.e. zero
    after normalisation), ``"black"``, or ``"blur"`` (the image blurred with std ``blur_sigma`` px).
    S is the classifier's score. Each occluded image's forward serves all of its targets.
    """

    def __init__(self, classifier: Classifier, *, window: int = 16, stride: int = 8, fill: str = "mean",
                 blur_sigma: float = 10.0, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
        if stride > window:
            raise ValueError(f"stride ({stride}) must not exceed window ({window}): pixels would be left uncovered")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        self.window, self.stride, self.fill, self.blur_sigma = window, stride, fill, blur_sigma

    def bands(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Row bands (ny,H) and column bands (nx,W) of the windows; window (i,j) is their outer product."""
        wh, ww = min(self.window, height), min(self.window, width)
        return (band(window_starts(height, wh, self.stride), wh, height),
                band(window_starts(width, ww, self.stride), ww, width))

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        if self.window >= height and self.window >= width:
            raise ValueError(f"occlusion window {self.window} px covers the whole {height}x{width} image (every pixel "
                             f"would get the same value); expected window < {max(height, width)}")
        rows, cols = (b.to(images) for b in self.bands(height, width))
        fill = fill_images(images, self.fill, self.classifier.mean, self.blur_sigma)
        with torch.no_grad():
            base = target_scores(self.classifier, images, targets)  # (B,K)
            total = torch.zeros(batch, targets.shape[1], height, width, device=images.device)
            for chunk in torch.arange(len(rows) * len(cols) * batch, device=images.device).split(self.max_batch):
                window, image = chunk // batch, chunk % batch  # window-major rows
                masks = (rows[window // len(cols)][:, :, None] * cols[window % len(cols)][:, None, :]).unsqueeze(1)
                occluded = images[image] * (1 - masks) + fill[image] * masks
                drop = base[image] - target_scores(self.classifier, occluded, targets[image])  # (r,K)
                total.index_add_(0, image, drop[:, :, None, None] * masks)
        counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        return total / counts

    def passes(self, height: int, width: int) -> Passes:
        rows, cols = self.bands(height, width)
        return Passes(forward=1 + len(rows) * len(cols), backward=0)


def upsample_reflect(grids: Tensor, size: tuple[int, int]) -> Tensor:
    """TorchRay's RISE upsampling of (m,1,s,s) grids to ``size``: reflect-pad one cell, bilinear, crop the pad."""
    cells = grids.shape[-2:]
    cell = [math.ceil(out / n) for out, n in zip(size, cells)]
    padded = F.interpolate(F.pad(grids, (1, 1, 1, 1), mode="reflect"),
                           [c * (n + 2) for c, n in zip(cell, cells)], mode="bilinear", align_corners=False)
    return padded[:, :, cell[0]:cell[0] + size[0], cell[1]:cell[1] + size[1]]


def rise_masks(num_masks: int, cells: int, p: float, height: int, width: int, seed: int,
               group: int, device: torch.device) -> Iterator[Tensor]:
    """TorchRay's RISE masks (num_masks,H,W) in [0,1], yielded ``group`` (a multiple of 32) at a time.

    Per chunk of 32 (TorchRay's order of random numbers, so the masks equal TorchRay's for the
    same seed on the CPU): grids (32,1,cells,cells) with cells ON with probability p, upsampled
    (``upsample_reflect``) to (H + ⌈H/cells⌉, W + ⌈W/cells⌉), then cropped to H×W at a random
    shift in [0, ⌈H/cells⌉) × [0, ⌈W/cells⌉). Random numbers come from a CPU generator of ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    for start in range(0, num_masks, group):
        grids, shift_y, shift_x = [], [], []
        for chunk_start in range(start, min(start + group, num_masks), RISE_CHUNK):
            count = min(RISE_CHUNK, num_masks - chunk_start)
            grids.append((torch.rand(count, 1, cells, cells, generator=generator) < p).float())
            shift_y.append(torch.randint(0, cell_h, (count,), generator=generator))
            shift_x.append(torch.randint(0, cell_w, (count,), generator=generator))
        large = upsample_reflect(torch.cat(grids).to(device), (height + cell_h, width + cell_w))[:, 0]
        ys = torch.cat(shift_y).to(device)[:, None, None] + torch.arange(height, device=device)[None, :, None]
        xs = torch.cat(shift_x).to(device)[:, None, None] + torch.arange(width, device=device)[None, None, :]
        yield large[torch.arange(len(large), device=device)[:, None, None], ys, xs]


def rise_saliency(classifier: Classifier, images: Tensor, masks: Tensor, targets: Tensor, score: str,
                  max_batch: int = 64) -> Tensor:
    """(1/M) Σ_i score(F(x ⊙ M_i))[t] · M_i: (B,K,H,W) for images (B,3,H,W), masks (M,H,W), targets (B,K).

    x ⊙ M is ``classifier.mask_images`` (the normalised image times the mask, as TorchRay).
    The (mask, image) rows run ``max_batch`` at a time.
    """
    batch, _, height, width = images.shape
    total = torch.zeros(batch, targets.shape[1], height, width, device=images.device)
    with torch.no_grad():
        for chunk in torch.arange(len(masks) * batch, device=images.device).split(max_batch):
            mask, image = masks[chunk // batch].unsqueeze(1), chunk % batch  # mask-major rows
            scores = target_scores(classifier, classifier.mask_images(images[image], mask), targets[image], score)
            total.index_add_(0, image, scores[:, :, None, None] * mask)
    return total / len(masks)


@register("rise")
class RISE(Method):
    """RISE (Petsiuk et al., 2018): saliency_c = (1/N) Σ_i score(F(x ⊙ M_i))_c · M_i over N random masks M_i.

    TorchRay's ``rise`` semantics and defaults: ``num_masks=8000`` masks from ``cells=7`` × 7
    binary grids (a cell is 1 with probability ``p=0.5``), see :func:`rise_masks`; no division by
    p; ``score="sigmoid"`` (TorchRay's; ``"softmax"``, or ``"classifier"`` for the classifier's own
    score). x ⊙ M fills the masked-out part with the mean colour (the normalised input times M,
    as TorchRay). The masks come from ``seed`` and are shared by all images; for a CPU run they are
    TorchRay's masks for the same seed, so the maps equal ``torchray.attribution.rise``'s.
    One set of N forwards per image serves all of its targets. Maps lie in [0, 1] (for
    sigmoid/softmax scores), mean ≈ p·E[score]: non-negative scores, not masks.
    """

    output_range = "nonnegative"

    def __init__(self, classifier: Classifier, *, num_masks: int = 8000, cells: int = 7, p: float = 0.5,
                 score: str = "sigmoid", seed: int = 0, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        if cells < 2:
            raise ValueError(f"cells must be >= 2 (reflect padding of the grid), got {cells}")
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p}")
        if score not in RISE_SCORES:
            raise ValueError(f"score must be one of {RISE_SCORES}, got {score!r}")
        self.num_masks, self.cells, self.p, self.score, self.seed = num_masks, cells, p, score, seed
        self.output_range = "raw" if score == "classifier" else "nonnegative"

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        if min(height, width) < self.cells:
            raise ValueError(f"images of {height}x{width} are smaller than the {self.cells}x{self.cells} RISE grid")
        group = RISE_CHUNK * max(1, self.max_batch // (RISE_CHUNK * batch))  # masks per group: ~max_batch rows
        total = torch.zeros(batch, targets.shape[1], height, width, device=images.device)
        for masks in rise_masks(self.num_masks, self.cells, self.p, height, width, self.seed, group, images.device):
            total += rise_saliency(self.classifier, images, masks, targets, self.score, self.max_batch) * len(masks)
        return total / self.num_masks

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=self.num_masks, backward=0)
