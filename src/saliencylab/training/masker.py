"""Train a CASME masker (Phang et al., 'Investigating and Simplifying Masking-based Saliency Methods for
Model Interpretability', 2020): FIX (frozen classifier) or CA (classifier trained alongside).

Single-label training (softmax cross-entropy and entropy): every image needs exactly one label.
Masking is in the classifier's *normalised* space: x_in = x⊙m, x_out = x⊙(1−m) (or an infiller's
composition, :mod:`saliencylab.training.infill`). The masker reads the classifier's features from
its clean forward, detached. Per batch (as the authors' released code):

1. clean forward of x (CA: classifier in train mode; FIX: eval, never updated); CA: SGD step on CE(f(x), y)
   and, every ``save_freq`` batches (or when the pool is empty), a snapshot into the historic pool;
2. m = masker(features of step 1); with probability ``prob_historic`` (CA only) the masked images are
   scored by a random pool snapshot, in eval mode, and the classifier does not learn from them
   (``historic_mode="paper"``, the paper's classifier-agnostic pool and the original CASM); with
   ``historic_mode="released"`` the live classifier always scores and the draw only decides whether
   the classifier learns from the masked images (the released code's behaviour since its
   "dual criterion refactor"; then no snapshot is ever stored, as none would be read);
3. masker loss L_M (:func:`masker_loss`); CA when the live classifier scored: classifier loss
   w_in·CE(f(x_in), y) + w_out·CE(f(x_out), y). Both gradients are taken *before* either step (the
   original stepped the classifier first, which modern PyTorch rejects); the masker's gradient is
   clipped to norm ``grad_clip`` (10); Adam steps the masker, SGD the classifier.

An "epoch" runs ⌊epoch_fraction·len(train loader)⌋+1 batches (the original's perc_of_training, 0.2),
and both learning rates are lr·0.1^⌊epoch/lrde⌋.
"""
from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from saliencylab.files import write_atomic
from saliencylab.models.io import save_state_dict
from saliencylab.models.load import load_trained_classifier, save_classifier
from saliencylab.models.masker import Masker, classifier_features, default_layers, layer_channels
from saliencylab.training.fit import fit_module
from saliencylab.training.infill import SIDES, build_infiller
from saliencylab.types import Batch

MODES = ("fix", "ca")
HISTORIC_MODES = ("paper", "released")


def single_labels(labels: Tensor) -> Tensor:
    """Class indices (B,) of multi-hot labels (B,C) holding exactly one positive per row; ValueError otherwise."""
    positive = labels > 0.5
    counts = positive.sum(dim=1)
    if labels.dim() != 2 or bool((counts != 1).any()):
        raise ValueError("the masker trains on single-label images (softmax cross-entropy and entropy, Phang et al. 2020), "
                         f"got label counts {counts.tolist()}; keep single-label samples, e.g. "
                         "[s for s in samples if s.labels.sum() == 1]")
    return positive.to(torch.uint8).argmax(dim=1)


def masker_tv(mask: Tensor, border_penalty: float = 0.3) -> Tensor:
    """[Σ(Δ_x m)² + Σ(Δ_y m)² + border_penalty·Σ(m² on the first/last row and column)] / (2B) (as the authors' released code).

    mask (B,1,H,W); sums over the whole batch; a corner pixel is counted in its row and its column.
    """
    dx = (mask[..., :, 1:] - mask[..., :, :-1]).square().sum()
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).square().sum()
    border = (mask[..., 0, :].square().sum() + mask[..., -1, :].square().sum()
              + mask[..., :, 0].square().sum() + mask[..., :, -1].square().sum())
    return (dx + dy + border_penalty * border) / (2 * mask.shape[0])


def entropy(logits: Tensor) -> Tensor:
    """Natural-log entropy (B,) of softmax(logits (B,C))."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def masker_loss(logits_in: Tensor, logits_out: Tensor, labels: Tensor, clean_correct: Tensor, mask: Tensor, *,
                lambda_in: float = 1.0, lambda_out: float = 10.0, lambda_tv: float = 1e-3,
                border_penalty: float = 0.3, mask_in_weight: float = 1.0,
                mask_out_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_M = w_in·L_in + w_out·L_out of Phang et al. 2020; returns (total, unweighted terms).

    logits_in/out (B,C) of x_in, x_out; labels (B,) class indices; clean_correct (B,) bool (argmax f(x) = y);
    mask (B,1,H,W) in [0,1], ā its per-image mean.
    L_in = CE(f(x_in), y) + λ_in·in_area + λ_tv·tv, in_area = mean(−relu(1[argmax f(x_in) = y] − ā)): an
    area penalty on the images still recognised. L_out = out_entropy + λ_out·out_area + λ_tv·tv, with
    out_entropy = −mean(c·H(f(x_out))) (counted on clean-correct images, averaged over the batch) and
    out_area = mean(−relu(c·1[argmax f(x_out) ≠ y] − ā)): on images correct when clean and fooled after
    masking out. TV (:func:`masker_tv`) is inside both, so it counts twice when both weights are 1.
    Terms: in_ce, in_area, out_entropy, out_area, tv.
    """
    area = mask.mean(dim=(1, 2, 3))
    in_correct = (logits_in.detach().argmax(dim=1) == labels).to(area.dtype)
    fooled = (clean_correct & (logits_out.detach().argmax(dim=1) != labels)).to(area.dtype)
    terms = {
        "in_ce": F.cross_entropy(logits_in, labels),
        "in_area": -(in_correct - area).relu().mean(),
        "out_entropy": -(clean_correct.to(area.dtype) * entropy(logits_out)).mean(),
        "out_area": -(fooled - area).relu().mean(),
        "tv": masker_tv(mask, border_penalty),
    }
    mask_in = terms["in_ce"] + lambda_in * terms["in_area"] + lambda_tv * terms["tv"]
    mask_out = terms["out_entropy"] + lambda_out * terms["out_area"] + lambda_tv * terms["tv"]
    return mask_in_weight * mask_in + mask_out_weight * mask_out, terms


def lr_factor(epoch: int, lrde: int) -> float:
    """The step schedule 0.1^⌊epoch/lrde⌋ (lrde = 0: constant 1)."""
    return 0.1 ** (epoch // lrde) if lrde > 0 else 1.0


def epoch_batches(num_batches: int, fraction: float) -> int:
    """Batches in one "epoch" of ``fraction`` of a loader: ⌊fraction·num_batches⌋+1, at most num_batches."""
    if not 0 < fraction <= 1:
        raise ValueError(f"epoch_fraction must be in (0, 1], got {fraction}")
    return min(int(fraction * num_batches) + 1, num_batches)


class SnapshotPool:
    """Up to ``size`` classifier state dicts (CPU copies); when full, a seeded uniformly random slot is replaced."""

    def __init__(self, size: int = 30, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"the snapshot pool needs size >= 1, got {size}")
        self.size = size
        self.snapshots: list[dict[str, Tensor]] = []
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.snapshots)

    def add(self, model: nn.Module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if len(self.snapshots) < self.size:
            self.snapshots.append(state)
        else:
            self.snapshots[self._rng.randrange(self.size)] = state

    def sample(self) -> dict[str, Tensor]:
        """A uniformly random snapshot (seeded)."""
        if not self.snapshots:
            raise RuntimeError("the snapshot pool is empty")
        return self._rng.choice(self.snapshots)


class MaskerModule(L.LightningModule):
    """Trains a :class:`Masker` on the classifier in ``classifier_dir`` (written by ``fit_classifier`` or
    ``save_classifier``); manual optimisation, see the module docstring. Logs ``{stage}_loss``, the
    terms of :func:`masker_loss`, ``{stage}_mask_area`` and the accuracies on x, x_in and x_out.

    ``mode``: "fix" or "ca". Masker: ``layers`` (default ResNet layer3 + layer4), ``raw_layers``,
    ``channels``, ``head_stride``, ``gumbel``, ``tau``, ``class_embedding`` (see :class:`Masker`);
    ``area_prior``: an extra channel with a target area p ~ U(``area_range``) per training image
    (the midpoint in validation) and the loss term ``area_prior_weight``·mean|ā − p| (our definition: the
    release's "l1" prior loss is not described further). Loss: ``lambda_*``, ``border_penalty``,
    ``mask_*_weight`` (:func:`masker_loss`). Optimisation: ``lr`` (masker Adam), ``classifier_lr``,
    ``momentum`` (CA's SGD), ``weight_decay`` (both), ``grad_clip``, ``lrde``. CA pool:
    ``prob_historic``, ``save_freq``, ``pool_size``, ``historic_mode``. Infilling: ``infiller``
    (none, blur, noise, generator), ``infill_sides``, ``blur_sigma``, ``generator`` (an inpainting
    network, not a hyper-parameter: pass it again to ``load_from_checkpoint``). ``seed``: the pool,
    the historic draws and the noise infiller.
    """

    def __init__(self, classifier_dir: str, mode: str = "fix", layers: Sequence[str] | None = None,
                 raw_layers: Sequence[str] = (), channels: int = 64, head_stride: int | None = 4,
                 gumbel: str | None = None, tau: float = 0.1, area_prior: bool = False,
                 area_range: Sequence[float] = (0.25, 0.75), area_prior_weight: float = 1.0,
                 class_embedding: int = 0, lambda_in: float = 1.0, lambda_out: float = 10.0,
                 lambda_tv: float = 1e-3, border_penalty: float = 0.3, mask_in_weight: float = 1.0,
                 mask_out_weight: float = 1.0, lr: float = 1e-3, classifier_lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 1e-4, grad_clip: float = 10.0, lrde: int = 20,
                 prob_historic: float = 0.0, save_freq: int = 100, pool_size: int = 30,
                 historic_mode: str = "paper", infiller: str = "none", infill_sides: Sequence[str] = SIDES,
                 blur_sigma: float = 20.0, generator: Callable[[Tensor, Tensor], Tensor] | None = None,
                 seed: int = 42) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if historic_mode not in HISTORIC_MODES:
            raise ValueError(f"historic_mode must be one of {HISTORIC_MODES}, got {historic_mode!r}")
        if not 0 <= prob_historic <= 1 or (mode == "fix" and prob_historic > 0):
            raise ValueError(f"prob_historic must be in [0, 1] and 0 for mode 'fix' (the pool holds snapshots of a "
                             f"classifier that learns), got {prob_historic} with mode {mode!r}")
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1, got {save_freq}")
        classifier_dir = str(classifier_dir)
        layers = list(layers) if layers is not None else None
        self.save_hyperparameters(ignore=["generator"])
        self.automatic_optimization = False
        classifier, self.classifier_description = load_trained_classifier(classifier_dir)
        classifier.requires_grad_(mode == "ca").train(mode == "ca")  # Lightning keeps submodules' modes
        self.classifier = classifier
        self.num_classes = int(self.classifier_description["num_classes"])
        self.class_names = self.classifier_description.get("class_names") or None
        layers = layers if layers is not None else list(default_layers(classifier))
        self.hparams["layers"] = layers
        self.masker = Masker(layers, layer_channels(classifier, layers), channels=channels, head_stride=head_stride,
                             raw_layers=raw_layers, gumbel=gumbel, tau=tau, area_prior=area_prior,
                             class_embedding=class_embedding, num_classes=self.num_classes)
        self.infiller = build_infiller(infiller, mean=classifier.mean.tolist(), std=classifier.std.tolist(),
                                       sides=infill_sides, sigma=blur_sigma, generator=generator, seed=seed)
        self.pool = SnapshotPool(pool_size, seed)
        self._rng = random.Random(seed + 1)
        self._historic: list[nn.Module] = []  # the model snapshots are loaded into; a list keeps it out of state_dict

    # -- model state ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "MaskerModule":
        """``module.train()`` (a user's, or a Lightning hook's) leaves FIX's classifier in eval mode."""
        super().train(mode)
        if self.hparams.mode == "fix":
            self.classifier.eval()
        return self

    def _extra_inputs(self, labels: Tensor, batch: int, device: torch.device) -> dict[str, Tensor | None]:
        """The masker's optional inputs: target areas (training: U(area_range); else its midpoint) and classes."""
        area = None
        if self.hparams.area_prior:
            low, high = self.hparams.area_range
            area = (torch.rand(batch, device=device) * (high - low) + low if self.training
                    else torch.full((batch,), (low + high) / 2, device=device))
        return {"area": area, "classes": labels if self.hparams.class_embedding else None}

    def forward(self, images: Tensor, *, area: Tensor | None = None, classes: Tensor | None = None) -> Tensor:
        """Masks (B,1,H,W) in [0,1] of images (B,3,H,W) in [0,1], from the classifier's detached features."""
        x = self.classifier.normalize(images)
        _, features = classifier_features(self.classifier, x, self.masker.layers)
        return self.masker([f.detach() for f in features], x.shape[-2:], area=area, classes=classes)

    # -- one batch -----------------------------------------------------------------------------
    def _losses(self, x: Tensor, labels: Tensor, logits: Tensor, features: list[Tensor],
                scorer: nn.Module) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor, Tensor]:
        """(L_M, terms, mask, logits_in, logits_out) for normalised x, clean logits and their features."""
        hp = self.hparams
        extra = self._extra_inputs(labels, x.shape[0], x.device)
        mask = self.masker([f.detach() for f in features], x.shape[-2:], **extra)
        x_in, x_out = self.infiller(x, mask)
        logits_in, logits_out = scorer(x_in), scorer(x_out)
        total, terms = masker_loss(logits_in, logits_out, labels, logits.detach().argmax(dim=1) == labels, mask,
                                   lambda_in=hp.lambda_in, lambda_out=hp.lambda_out, lambda_tv=hp.lambda_tv,
                                   border_penalty=hp.border_penalty, mask_in_weight=hp.mask_in_weight,
                                   mask_out_weight=hp.mask_out_weight)
        if hp.area_prior:
            terms["area_prior"] = (mask.mean(dim=(1, 2, 3)) - extra["area"]).abs().mean()
            total = total + hp.area_prior_weight * terms["area_prior"]
        return total, terms, mask, logits_in, logits_out

    def _log_batch(self, stage: str, total: Tensor, terms: dict[str, Tensor], mask: Tensor, labels: Tensor,
                   logits: Tensor, logits_in: Tensor, logits_out: Tensor) -> None:
        size = labels.shape[0]
        self.log(f"{stage}_loss", total, prog_bar=stage != "test", on_step=False, on_epoch=True, batch_size=size)
        values = {**terms, "mask_area": mask.mean()}
        for name, scores in (("acc", logits), ("in_acc", logits_in), ("out_acc", logits_out)):
            values[name] = (scores.argmax(dim=1) == labels).float().mean()
        for name, value in values.items():
            self.log(f"{stage}_{name}", value.detach(), on_step=False, on_epoch=True, batch_size=size)

    def scorer(self) -> tuple[nn.Module, bool]:
        """The network scoring this batch's masked images and whether the classifier learns from them (§2.7, 4)."""
        live = self.classifier.model
        if self.hparams.mode == "fix":
            return live, False
        if self._rng.random() >= self.hparams.prob_historic:
            return live, True
        if self.hparams.historic_mode == "released":
            return live, False
        if not self._historic:
            self._historic.append(copy.deepcopy(live).requires_grad_(False))
        historic = self._historic[0]
        historic.load_state_dict(self.pool.sample())
        return historic.eval(), False

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        hp = self.hparams
        labels = single_labels(batch.labels)
        x = self.classifier.normalize(batch.images)
        ca = hp.mode == "ca"
        optimizers = self.optimizers()
        masker_opt, classifier_opt = optimizers if ca else (optimizers, None)
        with torch.set_grad_enabled(ca):
            logits, features = classifier_features(self.classifier, x, self.masker.layers)
        if ca:
            classifier_opt.zero_grad()
            self.manual_backward(F.cross_entropy(logits, labels))
            classifier_opt.step()
            if hp.prob_historic > 0 and hp.historic_mode == "paper" and (
                    batch_idx % hp.save_freq == hp.save_freq - 1 or not len(self.pool)):
                self.pool.add(self.classifier.model)
        scorer, update_classifier = self.scorer()
        total, terms, mask, logits_in, logits_out = self._losses(x, labels, logits, features, scorer)
        masker_opt.zero_grad()
        self.manual_backward(total, inputs=list(self.masker.parameters()), retain_graph=update_classifier)
        if update_classifier:
            classifier_opt.zero_grad()
            adversarial = (hp.mask_in_weight * F.cross_entropy(logits_in, labels)
                           + hp.mask_out_weight * F.cross_entropy(logits_out, labels))
            self.manual_backward(adversarial, inputs=list(self.classifier.parameters()))
        self.clip_gradients(masker_opt, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
        masker_opt.step()
        if update_classifier:
            classifier_opt.step()
        self._log_batch("train", total, terms, mask, labels, logits, logits_in, logits_out)
        return total.detach()

    def _evaluate(self, batch: Batch, stage: str) -> None:
        labels = single_labels(batch.labels)
        x = self.classifier.normalize(batch.images)
        logits, features = classifier_features(self.classifier, x, self.masker.layers)
        total, terms, mask, logits_in, logits_out = self._losses(x, labels, logits, features, self.classifier.model)
        self._log_batch(stage, total, terms, mask, labels, logits, logits_in, logits_out)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        optimizers = [torch.optim.Adam(self.masker.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)]
        if hp.mode == "ca":
            optimizers.append(torch.optim.SGD(self.classifier.parameters(), lr=hp.classifier_lr,
                                              momentum=hp.momentum, weight_decay=hp.weight_decay))
        return optimizers

    def on_train_epoch_start(self) -> None:
        """Both learning rates follow lr·0.1^⌊epoch/lrde⌋."""
        factor = lr_factor(self.current_epoch, self.hparams.lrde)
        for optimizer, base in zip(self.trainer.optimizers, (self.hparams.lr, self.hparams.classifier_lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor


def fit_masker(datamodule: L.LightningDataModule, out_dir: str | Path, *, classifier_dir: str | Path,
               mode: str = "fix", max_epochs: int = 60, epoch_fraction: float = 0.2, seed: int = 42,
               progress: bool = True, accelerator: str = "auto", callbacks: Sequence[Callback] = (),
               resume: bool = False, generator: Callable[[Tensor, Tensor], Tensor] | None = None,
               **module_kwargs: object) -> MaskerModule:
    """Train ``max_epochs`` epochs of ⌊epoch_fraction·len⌋+1 batches; save the last epoch (as the original).

    ``module_kwargs``: the other :class:`MaskerModule` hyper-parameters. The datamodule's
    ``train_dataloader()`` must have a length before fit; its batches single-label images; a
    validation set is optional (logged only). ``resume``: continue from ``out_dir/checkpoints/last.ckpt``
    (:func:`~saliencylab.training.fit.fit_module`; the pool starts empty, as in the original). Writes ``out_dir/masker.safetensors``,
    ``out_dir/masker.json`` (the masker's config, mode, classifier_dir, class names, normalisation,
    hyper-parameters, epochs) and, for CA, the co-trained classifier as ``classifier.safetensors`` +
    ``classifier.json`` (so ``out_dir`` is also a classifier directory and ``classifier_dir`` in the
    description points to it). Returns the module in eval mode, on the CPU.
    """
    out_dir = Path(out_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    module = MaskerModule(classifier_dir=str(classifier_dir), mode=mode, seed=seed, generator=generator,
                          **module_kwargs)
    batches = epoch_batches(len(datamodule.train_dataloader()), epoch_fraction)
    trainer, _ = fit_module(module, datamodule, out_dir, max_epochs=max_epochs, monitor=None, resume=resume,
                            progress=progress, accelerator=accelerator, callbacks=callbacks,
                            deterministic="warn",  # bilinear upsampling has no deterministic CUDA backward
                            limit_train_batches=batches)
    module.eval().cpu()
    hp = module.hparams
    classifier_out = hp.classifier_dir
    if hp.mode == "ca":
        base = module.classifier_description
        save_classifier(module.classifier, out_dir, arch=base["arch"], width=base["width"],
                        num_classes=module.num_classes, co_trained_from=hp.classifier_dir)
        classifier_out = str(out_dir)
    save_state_dict(module.masker.state_dict(), out_dir / "masker.safetensors")
    description = {
        "mode": hp.mode, "masker": module.masker.config(), "num_classes": module.num_classes,
        "class_names": module.class_names, "classifier_dir": classifier_out, "base_classifier_dir": hp.classifier_dir,
        "mean": module.classifier.mean.tolist(), "std": module.classifier.std.tolist(),
        "hyper_parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(hp).items()},
        "epochs": trainer.current_epoch, "batches_per_epoch": batches,
    }
    write_atomic(out_dir / "masker.json", json.dumps(description, indent=2))
    return module


