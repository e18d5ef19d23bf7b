"""Joint training of a classifier and its hardness predictor (Wang & Vasconcelos, "Deliberative Explanations",
NeurIPS 2019, with the predictor of "Towards Realistic Predictors", ECCV 2018; the review-time scripts' losses).

Per batch, with p_i the classifier's softmax probability of the true class and s_i the predictor's sigmoid output:

- classifier F: L_F = mean_i(s_i · CE_i), the hardness-weighted cross-entropy (s enters as a weight: only F's
  optimiser steps on it); SGD lr 1e-3, momentum 0.9, weight decay 1e-4, lr × 0.95 after every epoch;
- predictor S: the "opposite" loss on p_i (F's output, a target: only S's optimisers step on it): a correctly
  classified sample's p_i is raised to at least 0.55 (the bonus); ℓ_i = 1 − (1−p_i)·s_i − (1−s_i)·p_i; easy
  samples (p > 0.5) weigh frac(p <= 0.5) / press, hard ones frac(p > 0.5) · press; L_S = mean(2 · w · ℓ).
  Trunk and head each have their own Adam, lr 1e-5, weight decay 1e-3.

The checkpoint kept is the epoch of the largest area under the validation accuracy-after-rejection curve
(:func:`rejection_auc`; logged negated as ``val_rejection_auc_negated`` for a minimising monitor). The original's
crashes (``opposite_loss`` called without ``press``, a 3-tuple assigned to one loss) are not reproduced.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saliencylab.files import write_atomic
from saliencylab.models.classifier import Classifier
from saliencylab.models.hardness import DROPOUT, HIDDEN, HardnessPredictor, hardness_classifier
from saliencylab.models.io import load_weights, save_state_dict
from saliencylab.models.load import load_trained_classifier, save_classifier
from saliencylab.scale import Scale
from saliencylab.training.fit import fit_module, on_rank_zero
from saliencylab.types import Batch

BONUS = 0.55
PRESS = 5.0
"""``press`` of the CUB VGG scripts (10 for ADE VGG / ResNet)."""
MONITOR = "val_rejection_auc_negated"


def opposite_loss(probability: Tensor, hardness: Tensor, correct: Tensor, press: float = PRESS,
                  bonus: float = BONUS) -> tuple[Tensor, Tensor, Tensor]:
    """(L_S, per-sample ℓ (N,), per-sample weights (N,)) for true-class probabilities p (N,), hardness s (N,) in
    (0,1) and ``correct`` (N,) bool; see the module docstring."""
    target = torch.where(correct, probability.clamp_min(bonus), probability)
    per_sample = 1 - (1 - target) * hardness - (1 - hardness) * target
    easy = target > 0.5
    easy_fraction = easy.float().mean()
    weights = torch.where(easy, (1 - easy_fraction) / press, easy_fraction * press)
    return (2 * weights * per_sample).mean(), per_sample, weights


def rejection_auc(hardness: Tensor, correct: Tensor) -> float:
    """Area (trapezoid rule, unit steps) under accuracy after rejecting the i % hardest images, i = 1..99: the
    original's checkpoint criterion; at most 98 (every kept image correct)."""
    order = hardness.argsort(descending=True, stable=True)
    ranked = correct[order].float()
    accuracies = []
    for percent in range(1, 100):
        kept = ranked[int(len(ranked) * percent / 100):]
        accuracies.append(float(kept.mean()) if len(kept) else float("nan"))
    return float(np.trapezoid(accuracies))


class HardnessModule(L.LightningModule):
    """A classifier (from ``classifier_dir``, fine-tuned) and its hardness predictor, trained jointly; built from
    plain hyper-parameters so ``load_from_checkpoint`` rebuilds it."""

    def __init__(self, classifier_dir: str, hidden: int = HIDDEN, dropout: float = DROPOUT, press: float = PRESS,
                 bonus: float = BONUS, classifier_lr: float = 1e-3, momentum: float = 0.9,
                 classifier_weight_decay: float = 1e-4, lr_decay: float = 0.95, hardness_lr: float = 1e-5,
                 hardness_weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.classifier, _ = load_trained_classifier(classifier_dir)
        self.classifier.requires_grad_(True).train()  # loaded in eval mode; Lightning keeps a module's mode
        self.predictor = HardnessPredictor(self.classifier.model, hidden, dropout)
        self._validation: list[tuple[Tensor, Tensor]] = []

    def hardness(self, images: Tensor) -> Tensor:
        """Pre-sigmoid hardness scores (N,) of images (N,3,H,W) in [0,1]."""
        return self.predictor(self.classifier.normalize(images))[:, 0]

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """L_F, L_S and what they are made of, for one batch."""
        labels = batch.labels.argmax(1)
        logits = self.classifier(batch.images)
        hardness = self.hardness(batch.images).sigmoid()
        cross_entropy = F.cross_entropy(logits, labels, reduction="none")
        probability = logits.softmax(1).gather(1, labels[:, None])[:, 0].detach()
        correct = logits.argmax(1) == labels
        hardness_loss, _, _ = opposite_loss(probability, hardness, correct, self.hparams.press, self.hparams.bonus)
        return {"classifier_loss": (hardness.detach() * cross_entropy).mean(), "hardness_loss": hardness_loss,
                "hardness": hardness, "correct": correct}

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizers = self.optimizers()
        out = self.losses(batch)
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(out["classifier_loss"] + out["hardness_loss"])  # disjoint parameters: one backward
        for optimizer in optimizers:
            optimizer.step()
        self.log_dict({"train_classifier_loss": out["classifier_loss"], "train_hardness_loss": out["hardness_loss"]},
                      prog_bar=True, batch_size=len(batch))

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.losses(batch)
        self.log_dict({"val_classifier_loss": out["classifier_loss"], "val_hardness_loss": out["hardness_loss"]},
                      batch_size=len(batch), sync_dist=True)
        self._validation.append((out["hardness"].cpu(), out["correct"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if self._validation:
            hardness, correct = (torch.cat(parts) for parts in zip(*self._validation))
            # every rank's images (one process: unchanged); the criterion is then the same on every rank
            hardness, correct = (self.all_gather(x.to(self.device)).flatten().cpu() for x in (hardness, correct))
            auc = rejection_auc(hardness, correct)
            self.log_dict({"val_rejection_auc": auc, MONITOR: -auc, "val_accuracy": float(correct.float().mean())},
                          prog_bar=True, sync_dist=True)
        self._validation.clear()

    def configure_optimizers(self):
        h = self.hparams
        classifier = torch.optim.SGD(self.classifier.parameters(), lr=h.classifier_lr, momentum=h.momentum,
                                     weight_decay=h.classifier_weight_decay)
        trunk = torch.optim.Adam(self.predictor.trunk.parameters(), lr=h.hardness_lr,
                                 weight_decay=h.hardness_weight_decay)
        head = torch.optim.Adam(self.predictor.head.parameters(), lr=h.hardness_lr,
                                weight_decay=h.hardness_weight_decay)
        schedule = torch.optim.lr_scheduler.ExponentialLR(classifier, gamma=h.lr_decay)
        return [classifier, trunk, head], [schedule]


def fit_hardness(datamodule: L.LightningDataModule, out_dir: str | Path, *, classifier_dir: str | Path,
                 max_epochs: int = 60, seed: int = 0, progress: bool = True, accelerator: str = "auto",
                 resume: bool = False, scale: Scale = Scale(), **hyperparameters: object) -> dict:
    """Train :class:`HardnessModule` (``hyperparameters`` as its own), keep the epoch of the best validation
    rejection AUC, and write ``out_dir/classifier/`` (the fine-tuned classifier, a classifier folder),
    ``out_dir/hardness.safetensors`` (the predictor) and ``out_dir/hardness.json``; return the description.
    ``resume``: continue an interrupted fit from its last checkpoint (:func:`fit_module`); ``scale``: devices,
    nodes, strategy, precision (:class:`~saliencylab.scale.Scale`; rank 0 writes the files)."""
    out_dir = Path(out_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    module = HardnessModule(str(classifier_dir), **hyperparameters)
    trainer, checkpoint = fit_module(module, datamodule, out_dir, max_epochs=max_epochs, monitor=MONITOR,
                                     progress=progress, accelerator=accelerator, resume=resume, scale=scale)
    best = HardnessModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    _, source = load_trained_classifier(classifier_dir)
    extra = {k: v for k, v in source.items() if k not in ("arch", "num_classes", "class_names", "width", "mean",
                                                            "std", "layers")}
    description = {"classifier": "classifier", "source_classifier": str(classifier_dir),
                   "hyperparameters": dict(best.hparams), "best_val_rejection_auc": -float(checkpoint.best_model_score),
                   "epochs": trainer.current_epoch, "checkpoint": str(checkpoint.best_model_path)}

    def write() -> None:
        save_classifier(best.classifier, out_dir / "classifier", arch=source["arch"], width=source["width"], **extra)
        save_state_dict(best.predictor.state_dict(), out_dir / "hardness.safetensors")
        write_atomic(out_dir / "hardness.json", json.dumps(description, indent=2))

    on_rank_zero(trainer, write)
    return description


def load_hardness(out_dir: str | Path) -> tuple[Classifier, Classifier]:
    """The fine-tuned classifier and the hardness predictor (wrapped, see
    :func:`saliencylab.models.hardness.hardness_classifier`) that :func:`fit_hardness` wrote, in eval mode."""
    out_dir = Path(out_dir)
    description_file = out_dir / "hardness.json"
    if not description_file.is_file():
        raise FileNotFoundError(f"{description_file} not found: train one with saliencylab train-hardness")
    description = json.loads(description_file.read_text())
    classifier, _ = load_trained_classifier(out_dir / description["classifier"])
    h = description["hyperparameters"]
    predictor = HardnessPredictor(classifier.model, h["hidden"], h["dropout"])
    load_weights(predictor, out_dir / "hardness.safetensors", "a hardness predictor")
    return classifier.eval(), hardness_classifier(predictor, classifier).eval()
