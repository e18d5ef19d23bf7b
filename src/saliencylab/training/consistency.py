"""Grad-CAM consistency training (Pillai & Pirsiavash, 'Explainable Models with Consistent Interpretations',
AAAI 2021, Sec. 3).

Per step, the classifier (train mode, shared weights) runs on the images and on their 2x2 composites
(:mod:`saliencylab.data.gridding`). The differentiable element-wise Grad-CAM of the explained class,
M = ReLU(Σ_k ∂S/∂A_k ⊙ A_k) at a named layer, with S = Σ_b logit_b[t_b] and the gradient taken with
``create_graph=True`` (double backpropagation), is normalised to sum 1 (M / (ΣM + 1e-8) + 1e-8). The image's
map placed in the positive cell of a zero grid (:func:`gridded_target`) is the target of the composite's map;
the consistency loss is their L1 distance (mean over cells). Neither map is detached, as the original
(``detach_target=True`` stops the gradient through the image's map). When the layer's grid of the composite is
not twice the image's (AlexNet's ``features``: 6 vs 13), both maps are upsampled bilinearly to pixel
resolution first (the original's AlexNet variant; ``resolution="pixel"`` forces it).

Loss: single-label CE + λ·L1 (README: λ 25 on ImageNet); multi-label w·BCE + λ·L1 with w the number of
classes (80 on COCO) and λ 1. λ = 0 trains the baseline (no composite pass). λ is the paper's, i.e. calibrated on
its 14x14 composite grid (ResNet ``layer4`` of 448 px): the mean L1 of maps that sum to 1 scales as 1/cells, so
on a grid of other size λ is multiplied by cells / 196 (:func:`grid_weight`); every grid then weighs the maps'
total L1 as the paper's λ/196 does (unchanged for the ResNet presets; x256/196 for small_cnn's 16x16). ``pooling="max"`` is the GMP
variant. SGD with momentum, the learning rate × ``gamma`` at each milestone epoch.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from saliencylab.data.gridding import QUADRANTS, GriddedBatch, GriddedDataset, collate_gridded
from saliencylab.data.module import SaliencyDataModule
from saliencylab.methods.cam import single_output, upsample
from saliencylab.metrics.functional import label_counts, multilabel_f1
from saliencylab.models.classifier import Classifier, captured_output
from saliencylab.models.load import save_classifier
from saliencylab.models.zoo import build_classifier
from saliencylab.scale import Scale
from saliencylab.training.fit import fit_module, on_rank_zero
from saliencylab.training.staged import StagedModule
from saliencylab.types import Batch

EPS = 1e-8
"""The original's normaliser: M / (ΣM + EPS) + EPS."""
REFERENCE_CELLS = 14 * 14
"""Cells of the composite's map on which the paper's λ is set (ResNet ``layer4`` of the 448 px composite)."""
RESOLUTIONS = ("auto", "feature", "pixel")


def normalise_sum(maps: Tensor) -> Tensor:
    """(B,h,w) non-negative maps -> M / (Σ_hw M + 1e-8) + 1e-8 (each sums to ≈ 1; the original's normalisation)."""
    return maps / (maps.sum((1, 2), keepdim=True) + EPS) + EPS


def differentiable_gradcam(classifier: Classifier, images: Tensor, classes: Tensor, layer: str = "auto", *,
                           create_graph: bool = True) -> tuple[Tensor, Tensor]:
    """Logits (B,C) of ``images`` (B,3,H,W) in [0,1] and the normalised element-wise Grad-CAM (B,h,w) of
    ``classes`` (B,) at ``layer``, read through the layer's layout (any CNN map, channels-last map or tokens).

    ∂(Σ_b logit_b[classes_b]) / ∂A with ``create_graph``, so a loss on the maps trains the network (double
    backward); the model's mode and ``requires_grad`` flags are left as they are.
    """
    with torch.enable_grad(), captured_output(classifier.layer(layer)) as outputs:
        logits = classifier(images)
        activation = single_output(outputs, layer)
        score = logits.gather(1, classes.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, activation, create_graph=create_graph, retain_graph=True)
    layout = classifier.read_layout(layer, activation, images.shape[-2:])
    maps = (layout.to_grid(grad) * layout.to_grid(activation)).sum(1).relu()
    return logits, normalise_sum(maps)


def gridded_target(maps: Tensor, quadrants: Tensor) -> Tensor:
    """(B,h,w) maps and quadrants (B,) -> (B,2h,2w): each map in its quadrant's cell (see ``gridding.QUADRANTS``),
    zero elsewhere; differentiable."""
    height, width = maps.shape[-2:]
    cells = [QUADRANTS[int(q)] for q in quadrants]
    return torch.stack([F.pad(m, (col * width, (1 - col) * width, row * height, (1 - row) * height))
                        for m, (row, col) in zip(maps, cells)])


def consistency_loss(image_maps: Tensor, composite_maps: Tensor, quadrants: Tensor, *, detach_target: bool = False,
                     resolution: str = "auto", image_size: tuple[int, int] | None = None) -> Tensor:
    """L1 (mean) between the composites' maps (B,h',w') and the gridded image maps (B,h,w).

    ``resolution``: "feature" needs h',w' = 2h,2w; "pixel" upsamples both maps bilinearly to ``image_size`` (H,W)
    and (2H,2W) first; "auto" is "feature" when the grids tile, else "pixel". ``detach_target``: no gradient
    through the image maps.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    tiles = tuple(composite_maps.shape[-2:]) == (2 * image_maps.shape[-2], 2 * image_maps.shape[-1])
    if resolution == "feature" and not tiles:
        raise ValueError(f"the composite's map is {tuple(composite_maps.shape[-2:])}, not twice the image's "
                         f"{tuple(image_maps.shape[-2:])}: the layer's grids do not tile; use resolution='pixel'")
    if resolution == "pixel" or not tiles:
        if image_size is None:
            raise ValueError("the pixel-resolution consistency loss needs image_size (H,W)")
        height, width = image_size
        image_maps = upsample(image_maps, (height, width))
        composite_maps = upsample(composite_maps, (2 * height, 2 * width))
    target = gridded_target(image_maps.detach() if detach_target else image_maps, quadrants)
    return F.l1_loss(composite_maps, target)


def grid_weight(consistency_weight: float, composite_grid: tuple[int, int]) -> float:
    """The paper's λ on a composite map grid (h', w') of the layer: λ · h'w' / 196.

    The L1 is a mean over cells of maps summing to 1, so its size is ~1/cells: λ = 25 weighs a map's total L1
    by 25/196 on the paper's 14x14 grid, and this keeps that weight on any grid. In the pixel-resolution
    variant the maps are upsampled without renormalising, so the feature grid (before upsampling) counts.
    """
    return consistency_weight * composite_grid[0] * composite_grid[1] / REFERENCE_CELLS


@torch.no_grad()
def heldout_consistency(classifier: Classifier, dataset: Dataset, num_classes: int, *, multi_label: bool,
                        layer: str = "auto", seed: int = 0, batch_size: int = 32) -> dict[str, float]:
    """How consistent a trained classifier's Grad-CAM is on ``dataset`` (images it was not trained on), each image
    gridded with negatives from ``dataset`` (:class:`~saliencylab.data.gridding.GriddedDataset`, draws seeded by
    ``seed``, the global RNG left as it was), the classifier in its mode as given (trained classifiers load in
    eval mode): ``consistency_l1``, the mean :func:`consistency_loss` (the training loss before λ), and
    ``positive_cell_mass``, the mean share of the composite's map in the positive cell (1 for a perfectly
    consistent map; NaN when the grids do not tile).
    """
    gridded = GriddedDataset(dataset, num_classes, multi_label=multi_label)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        items = [gridded[i] for i in range(len(gridded))]
    l1, mass = [], []
    for start in range(0, len(items), batch_size):
        batch = collate_gridded(items[start:start + batch_size])
        _, image_maps = differentiable_gradcam(classifier, batch.batch.images, batch.targets, layer, create_graph=False)
        _, composite_maps = differentiable_gradcam(classifier, batch.composites, batch.targets, layer,
                                                   create_graph=False)
        size = tuple(batch.batch.images.shape[-2:])
        l1.append(consistency_loss(image_maps, composite_maps, batch.quadrants, image_size=size) * len(batch))
        if tuple(composite_maps.shape[-2:]) == (2 * image_maps.shape[-2], 2 * image_maps.shape[-1]):
            mass.append((composite_maps * gridded_target(torch.ones_like(image_maps), batch.quadrants)).sum((1, 2)))
        else:
            mass.append(torch.full((len(batch),), float("nan")))
    return {"consistency_l1": float(sum(l1) / len(items)), "positive_cell_mass": float(torch.cat(mass).mean())}


class ConsistencyModule(StagedModule):
    """A classifier trained with the Grad-CAM consistency loss (see the module docstring).

    Train batches are :class:`~saliencylab.data.gridding.GriddedBatch`es, validation and test batches plain
    Batches. ``consistency_weight`` λ (0: the baseline); ``bce_weight`` (multi-label; None: the number of
    classes); ``backbone_weights``: a torchvision ImageNet state dict loaded before the head is replaced
    (COCO training starts from an ImageNet checkpoint with a new head). Logged: ``train_ce``/``train_bce``,
    ``train_consistency`` (the L1, before λ); with ``grad_norm_every`` = n > 0, every n-th step the gradient norms
    of the two terms over all parameters, ``train_grad_norm_classification`` and ``train_grad_norm_consistency``
    (of λ·L1 as weighed; two extra backward passes, a diagnostic); validation ``val_loss`` and ``val_top1`` (single-label) or ``val_f1_per_class`` and
    ``val_f1_overall`` at logit > 0 (multi-label).
    """

    def __init__(self, arch: str = "small_cnn", num_classes: int = 6, class_names: Sequence[str] | None = None,
                 width: int = 32, pooling: str = "avg", layer: str = "auto", multi_label: bool = False,
                 consistency_weight: float = 25.0, detach_target: bool = False, resolution: str = "auto",
                 bce_weight: float | None = None, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
                 milestones: Sequence[int] = (30, 60), gamma: float = 0.1, backbone_weights: str | None = None,
                 grad_norm_every: int = 0) -> None:
        super().__init__()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.save_hyperparameters()
        self.classifier = build_classifier(arch, num_classes, class_names=class_names, width=width, pooling=pooling,
                                           backbone_weights=backbone_weights, freeze_backbone=False)
        self.classifier.layer(layer)  # fail now when the layer does not exist
        self._totals: dict[str, Tensor] = {}

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)

    def classification_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """CE of the single label, or bce_weight · BCE-with-logits of the multi-hot labels."""
        if self.hparams.multi_label:
            weight = self.hparams.bce_weight if self.hparams.bce_weight is not None else labels.shape[1]
            return weight * F.binary_cross_entropy_with_logits(logits, labels)
        return F.cross_entropy(logits, labels.argmax(1))

    def training_step(self, batch: GriddedBatch, batch_idx: int) -> Tensor:
        images, size = batch.batch.images, tuple(batch.batch.images.shape[-2:])
        name = "train_bce" if self.hparams.multi_label else "train_ce"
        if not self.hparams.consistency_weight:
            loss = self.classification_loss(self(images), batch.batch.labels)
            self.log(name, loss, prog_bar=True, batch_size=len(batch))
            return loss
        logits, image_maps = differentiable_gradcam(self.classifier, images, batch.targets, self.hparams.layer)
        _, composite_maps = differentiable_gradcam(self.classifier, batch.composites, batch.targets, self.hparams.layer)
        classification = self.classification_loss(logits, batch.batch.labels)
        consistency = consistency_loss(image_maps, composite_maps, batch.quadrants,
                                       detach_target=self.hparams.detach_target, resolution=self.hparams.resolution,
                                       image_size=size)
        self.log_dict({name: classification, "train_consistency": consistency}, prog_bar=True, batch_size=len(batch))
        weighted = grid_weight(self.hparams.consistency_weight, tuple(composite_maps.shape[-2:])) * consistency
        if self.hparams.grad_norm_every and batch_idx % self.hparams.grad_norm_every == 0:
            self.log_dict({"train_grad_norm_classification": self.gradient_norm(classification),
                           "train_grad_norm_consistency": self.gradient_norm(weighted)}, batch_size=len(batch))
        return classification + weighted

    def gradient_norm(self, loss: Tensor) -> Tensor:
        """L2 norm of ∂loss/∂(all trainable parameters), graph kept (a diagnostic of the terms' balance)."""
        params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None))

    def _step(self, batch: Batch, stage: str) -> Tensor:
        logits = self(batch.images)
        loss = self.classification_loss(logits, batch.labels)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if self.hparams.multi_label:
            counts = label_counts(logits.detach(), batch.labels).sum(0)
        else:
            counts = torch.stack([(logits.argmax(1) == batch.labels.argmax(1)).sum(), logits.new_tensor(len(batch))])
        self._totals[stage] = self._totals.get(stage, 0) + counts.float()
        return loss

    def _log_epoch(self, stage: str) -> None:
        totals = self._totals.pop(stage, None)
        if totals is None:
            return
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # every rank's images
        if self.hparams.multi_label:
            per_class, overall = multilabel_f1(*totals)
            self.log_dict({f"{stage}_f1_per_class": per_class, f"{stage}_f1_overall": overall}, prog_bar=True,
                          sync_dist=True)  # equal on every rank already
        else:
            top1 = totals[0] / totals[1].clamp(min=1)
            self.log_dict({f"{stage}_top1": top1, f"{stage}_top1_error": 1 - top1}, prog_bar=stage != "train",
                          sync_dist=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                                    weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.hparams.milestones), self.hparams.gamma)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def fit_consistent(datamodule: SaliencyDataModule, out_dir: str | Path, *, num_classes: int,
                   class_names: Sequence[str] | None = None, multi_label: bool = False, max_epochs: int = 90,
                   seed: int = 0, drop_last: bool = False, negatives_cache: str | Path | None = None,
                   progress: bool = True, accelerator: str = "auto", resume: bool = False, data: dict | None = None,
                   scale: Scale = Scale(), **module_kwargs: object) -> tuple[Classifier, dict[str, float]]:
    """Train a :class:`ConsistencyModule` on ``datamodule`` (its train set is gridded here with
    :class:`~saliencylab.data.gridding.GriddedDataset`; a validation set is needed) for ``max_epochs`` epochs;
    keep the best epoch by validation top-1 (single-label, as the original's ImageNet script) or the last epoch
    (multi-label, as the original's COCO script, which saves every epoch and marks none best).

    ``drop_last``: leave out the last partial training batch (the original COCO loader); ``negatives_cache``:
    JSON file of the instance lists; ``resume``: continue from ``out_dir``'s last checkpoint (:func:`fit_module`);
    ``scale``: devices, nodes, strategy, precision (:class:`~saliencylab.scale.Scale`; rank 0 writes the files);
    ``module_kwargs``: the module's hyper-parameters (arch, pooling, consistency_weight, lr, milestones, ...).
    Writes the classifier folder (``classifier.safetensors`` + ``classifier.json`` with ``pooling``, the
    training settings under ``consistency``, the validation and test scores, ``data``); returns the classifier
    (eval mode) and its validation scores (and ``test_*`` ones when the datamodule has a test set).
    """
    out_dir = Path(out_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    gridded = SaliencyDataModule(GriddedDataset(datamodule.train, num_classes, multi_label=multi_label,
                                                cache=negatives_cache, progress=progress),
                                 datamodule.val, datamodule.test, datamodule.batch_size, datamodule.num_workers,
                                 train_collate=collate_gridded, drop_last=drop_last)
    module = ConsistencyModule(num_classes=num_classes, class_names=class_names, multi_label=multi_label,
                               **module_kwargs)
    monitor = None if multi_label else "val_top1_error"
    trainer, checkpoint = fit_module(module, gridded, out_dir, max_epochs=max_epochs, monitor=monitor, resume=resume,
                                     progress=progress, accelerator=accelerator, scale=scale,
                                     deterministic="warn")  # max pooling and upsampling lack deterministic CUDA backwards
    best = ConsistencyModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    scores = {}
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        if getattr(gridded, stage) is not None:
            results = run(best, datamodule=gridded, verbose=False)
            scores.update({k: float(v) for k, v in (results or [{}])[0].items()})
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(best.hparams).items()}
    on_rank_zero(trainer, lambda: save_classifier(
        best.classifier, out_dir, arch=hparams["arch"], width=hparams["width"], num_classes=num_classes,
        pooling=hparams["pooling"], consistency=hparams, scores=scores, epochs=trainer.current_epoch, seed=seed,
        **({"data": data} if data is not None else {})))
    return best.classifier.eval(), scores
