"""Three-phase training of the in-model explainer-classifier (Rio-Torto et al., "Understanding the decisions of
CNNs: an in-model approach", Pattern Recognition Letters 2020; network in :mod:`saliencylab.models.inmodel`).

Loss: α·CE + (1−α)·L_expl, with L_expl the unsupervised β·sparsity + (1−β)·TV, or the hybrid one adding
γ·(mean explanation outside the label's ground-truth mask: the target instances' boxes or pixels).

- phase 1: the classifier trains; the explainer is frozen **and in eval mode** (its BatchNorm uses the initial
  running statistics, so its map stays ≈ tanh(init_bias) ≈ 1 everywhere);
- phase 2: the explainer trains; the classifier is frozen. ``phase2_classifier_bn="train"`` keeps it in train mode
  as the original does (its BatchNorm running statistics keep moving with the new maps, dropout runs);
  ``"frozen"`` puts it in eval mode (BatchNorm uses and keeps its phase-1 statistics, no dropout);
- phase 3: both train.

Each phase builds a new optimiser (SGD with momentum 0.9 and weight decay 1e-4, or Adadelta) with one
learning rate per module, early-stops on the validation loss (min delta 1e-4), uses ReduceLROnPlateau
(factor 0.2, patience 10, min lr 1e-5) for ResNet classifiers, and the next phase starts from the best
checkpoint of the previous one.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from saliencylab.metrics.ground_truth import class_masks
from saliencylab.models.classifier import Classifier
from saliencylab.models.inmodel import build_inmodel_classifier
from saliencylab.models.load import save_classifier
from saliencylab.scale import Scale
from saliencylab.training.fit import fit_module, on_rank_zero
from saliencylab.training.losses import balanced_class_weights, explanation_loss, joint_loss
from saliencylab.training.staged import StagedModule
from saliencylab.types import Batch

LOSSES = ("unsupervised", "hybrid")
OPTIMIZERS = ("sgd", "adadelta")
CLASSIFIER_BN = ("train", "frozen")


class InModelModule(StagedModule):
    """One phase (1, 2 or 3) of in-model training; logs ``{stage}_loss``, ``_ce``, ``_explanation`` and ``_accuracy``.

    ``classifier``: "vgg" or "resnet18/34/50"; ``class_weights``: CE weights (C,) or None; ``plateau``:
    ReduceLROnPlateau on val_loss (None: for ResNet classifiers only, as the original). Network sizes:
    ``init_bias``, ``explainer_widths``, ``vgg_widths`` (see :class:`~saliencylab.models.inmodel.InModelNet`).
    ``phase2_classifier_bn``: "train" (the original: the frozen classifier stays in train mode in phase 2, so its
    BatchNorm running statistics follow the changing maps) or "frozen" (eval mode: they stay those of phase 1).
    ``precise_bn``: before each validation, recompute the running statistics of the BatchNorm layers this phase
    trains in train mode over the whole training set with the current weights (Wu & Johnson, "Rethinking 'Batch'
    in BatchNorm", 2021: "precise BN"). The original keeps PyTorch's moving averages (momentum 0.1), which lag
    behind a map that moves: the explainer's single-channel head has a tiny output variance (~1e-5 at the start)
    that its moving average needs ~100 steps to reach from its initial 1, and whose mean shifts freely (train-mode
    BatchNorm removes it from the loss), so the validation and test maps (running statistics) can differ from
    the training maps (batch statistics) by several standard deviations.
    """

    def __init__(self, num_classes: int = 2, classifier: str = "resnet18", class_names: Sequence[str] | None = None,
                 phase: int = 1, loss: str = "hybrid", alpha: float = 1.0, beta: float = 0.9, gamma: float = 1.0,
                 lr_clf: float = 0.01, lr_expl: float = 0.01, optimizer: str = "sgd",
                 class_weights: Sequence[float] | None = None, plateau: bool | None = None, init_bias: float = 3.0,
                 explainer_widths: Sequence[int] = (32, 64, 128),
                 vgg_widths: Sequence[int] = (32, 64, 128, 256), phase2_classifier_bn: str = "train",
                 precise_bn: bool = False) -> None:
        super().__init__()
        if phase not in (1, 2, 3):
            raise ValueError(f"phase must be 1, 2 or 3, got {phase}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if phase2_classifier_bn not in CLASSIFIER_BN:
            raise ValueError(f"phase2_classifier_bn must be one of {CLASSIFIER_BN}, got {phase2_classifier_bn!r}")
        self.save_hyperparameters()
        self.classifier = build_inmodel_classifier(num_classes, classifier, class_names=class_names,
                                                   init_bias=init_bias, explainer_widths=tuple(explainer_widths),
                                                   vgg_widths=tuple(vgg_widths))
        self.net = self.classifier.model
        self.net.explainer.requires_grad_(phase != 1)
        self.net.classifier.requires_grad_(phase != 2)
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights))
        self._correct: dict[str, list[int]] = {}

    def on_train_epoch_start(self) -> None:
        """Phase 1 keeps the frozen explainer in eval mode, phase 2 the frozen classifier when
        ``phase2_classifier_bn`` is "frozen" (Lightning put the whole module in train mode)."""
        if self.hparams.phase == 1:
            self.net.explainer.eval()
        if self.hparams.phase == 2 and self.hparams.phase2_classifier_bn == "frozen":
            self.net.classifier.eval()

    def _trained_batchnorms(self) -> list[nn.Module]:
        """The BatchNorm layers that run in train mode in this phase's training steps."""
        hp = self.hparams
        modules = ([self.net.explainer] if hp.phase != 1 else []) + \
            ([self.net.classifier] if hp.phase != 2 or hp.phase2_classifier_bn == "train" else [])
        return [layer for module in modules for layer in module.modules()
                if isinstance(layer, nn.modules.batchnorm._BatchNorm)]

    def on_validation_epoch_start(self) -> None:
        """``precise_bn``: the trained BatchNorm layers' statistics recomputed over the training set (not for the
        sanity check), as a cumulative average of the batch statistics, then averaged over the processes."""
        if not self.hparams.precise_bn or self.trainer.sanity_checking:
            return
        layers = self._trained_batchnorms()
        momenta = [layer.momentum for layer in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average
            layer.train()
        with torch.no_grad():
            for batch in self.trainer.train_dataloader:
                self.net(self.classifier.normalize(batch.to(self.device).images))
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
            layer.eval()
            for buffer in (layer.running_mean, layer.running_var):
                buffer.copy_(self.trainer.strategy.reduce(buffer, reduce_op="mean"))

    def _step(self, batch: Batch, stage: str) -> Tensor:
        hp = self.hparams
        labels = batch.labels.argmax(1)
        logits, explanation = self.net.logits_and_map(self.classifier.normalize(batch.images))
        mask = class_masks(batch, labels[:, None]) if hp.loss == "hybrid" else None
        explanation_losses = explanation_loss(explanation, hp.beta, hp.gamma, mask)
        loss = joint_loss(logits, labels, explanation_losses, hp.alpha, self.class_weights)
        size = len(batch)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", batch_size=size, sync_dist=True)
        self.log(f"{stage}_explanation", explanation_losses.mean(), batch_size=size, sync_dist=True)
        self.log(f"{stage}_ce", torch.nn.functional.cross_entropy(logits, labels), batch_size=size, sync_dist=True)
        correct = self._correct.setdefault(stage, [0, 0])
        correct[0] += int((logits.argmax(1) == labels).sum())
        correct[1] += size
        return loss

    def _log_epoch(self, stage: str) -> None:
        counts = self._correct.pop(stage, None)
        if counts is not None:  # every rank's images
            correct, total = self.trainer.strategy.reduce(torch.tensor(counts, dtype=torch.float32, device=self.device),
                                                          reduce_op="sum")
            self.log(f"{stage}_accuracy", float(correct / total), prog_bar=stage != "test", sync_dist=True)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": lr}
                  for module, lr in ((self.net.classifier, hp.lr_clf), (self.net.explainer, hp.lr_expl))]
        groups = [g for g in groups if g["params"]]
        optimizer = (torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9, weight_decay=1e-4)
                     if hp.optimizer == "sgd" else torch.optim.Adadelta(groups))
        plateau = hp.classifier.startswith("resnet") if hp.plateau is None else hp.plateau
        if not plateau:
            return {"optimizer": optimizer}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.2, patience=10, min_lr=1e-5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def _three(name: str, values: Sequence) -> list:
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per phase (3), got {list(values)}")
    return list(values)


def fit_inmodel(datamodule: L.LightningDataModule, out_dir: str | Path, *, num_classes: int,
                class_names: Sequence[str] | None = None, classifier: str = "resnet18", loss: str = "hybrid",
                epochs: Sequence[int] = (10, 10, 60), alpha: Sequence[float] = (1.0, 0.25, 0.9),
                lr_clf: Sequence[float] = (0.01, 0.0, 0.01), lr_expl: Sequence[float] = (0.0, 0.01, 0.01),
                patience: Sequence[int] = (100, 100, 10), balanced_weights: bool = False, seed: int = 0,
                progress: bool = True, accelerator: str = "auto", resume: bool = False, data: dict | None = None,
                scale: Scale = Scale(), initial_state: dict[str, Tensor] | None = None,
                **module_kwargs: object) -> tuple[Classifier, dict]:
    """Run the three phases (a phase of 0 epochs is skipped) into ``out_dir/phase{1,2,3}/``; return the final
    network wrapped as a Classifier (eval mode) and its description.

    Per-phase lists: ``epochs``, ``alpha``, ``lr_clf``, ``lr_expl``, ``patience`` (the README's ImagenetHVZ run
    by default). ``balanced_weights``: CE weighted by scikit-learn's "balanced" class weights of the training
    labels. ``initial_state``: the network's weights before the first phase that trains (e.g. the best phase 1 of a
    run that differs only in the loss, with ``epochs`` (0, e2, e3): with α = 1, phase 1 does not depend on the
    explanation loss).
    ``module_kwargs``: the other :class:`InModelModule` hyper-parameters (beta, gamma, optimizer,
    init_bias, widths). ``resume``: each phase continues from its last checkpoint; ``scale``: devices, nodes,
    strategy, precision (:class:`~saliencylab.scale.Scale`; rank 0 writes the files). Writes
    ``out_dir/classifier.safetensors`` + ``classifier.json`` (arch "inmodel": a classifier folder for every
    command and the checkpoint of method ``inmodel``) with the phases' epochs, best validation losses and the
    test accuracy when the datamodule has a test set.
    """
    out_dir = Path(out_dir)
    phases = [_three(n, v) for n, v in (("epochs", epochs), ("alpha", alpha), ("lr_clf", lr_clf),
                                         ("lr_expl", lr_expl), ("patience", patience))]
    L.seed_everything(seed, workers=True, verbose=False)
    weights = None
    if balanced_weights:
        labels = torch.cat([batch.labels.argmax(1) for batch in datamodule.train_dataloader()])
        weights = balanced_class_weights(labels, num_classes).tolist()
    state, history, module = initial_state, [], None
    for phase, (max_epochs, a, lr_c, lr_e, wait) in enumerate(zip(*phases), start=1):
        if max_epochs == 0:
            continue
        module = InModelModule(num_classes, classifier, class_names, phase=phase, loss=loss, alpha=a, lr_clf=lr_c,
                               lr_expl=lr_e, class_weights=weights, **module_kwargs)
        if state is not None:
            module.net.load_state_dict(state)
        trainer, checkpoint = fit_module(module, datamodule, out_dir / f"phase{phase}", max_epochs=max_epochs,
                                         patience=wait, min_delta=1e-4, resume=resume, progress=progress,
                                         accelerator=accelerator, scale=scale)
        best = InModelModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        state = best.net.state_dict()
        module.net.load_state_dict(state)
        history.append({"phase": phase, "epochs": trainer.current_epoch, "alpha": a, "lr_clf": lr_c, "lr_expl": lr_e,
                        "best_val_loss": float(checkpoint.best_model_score)
                        if checkpoint.best_model_score is not None else None})
    if module is None:
        raise ValueError(f"every phase has 0 epochs ({list(epochs)}): nothing to train")
    module = module.cpu().eval()
    test = {}
    if datamodule.test is not None:
        correct = total = 0
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                correct += int((module.classifier(batch.images).argmax(1) == batch.labels.argmax(1)).sum())
                total += len(batch)
        test = {"accuracy": correct / max(total, 1), "images": total}
    hp = module.hparams
    network = {"classifier": hp.classifier, "init_bias": hp.init_bias, "explainer_widths": list(hp.explainer_widths),
               "vgg_widths": list(hp.vgg_widths)}
    description = {"loss": loss, "beta": hp.beta, "gamma": hp.gamma, "optimizer": hp.optimizer, "phases": history,
                   "class_weights": weights, "seed": seed}
    on_rank_zero(trainer, lambda: save_classifier(module.classifier, out_dir, arch="inmodel", num_classes=num_classes,
                                                  inmodel=network, training=description, test=test,
                                                  **({"data": data} if data is not None else {})))
    return module.classifier, {**network, **description, "test": test}
