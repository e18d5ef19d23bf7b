"""Train explainer networks against a frozen classifier, as NN-Explainer
(Stalder et al., 'What You See is What You Classify: Black Box Attributions', NeurIPS 2022).

Variants: ``"explainer"`` (NN-Explainer, §2), ``"rt_saliency"`` (the adapted Real-Time Saliency
of §4) and ``"fcnn"`` (the self-explaining InterpretableFCNN of §5: the network is its own
classifier, no Explanandum). The classifier is named by a directory written by
:func:`saliencylab.training.classifier.fit_classifier` (a plain string hyper-parameter, so
``load_from_checkpoint`` rebuilds it). Masking is in the classifier's *normalised* space:
x_in = m ⊙ normalise(x), x_out = (1 − m) ⊙ normalise(x); the explainer also sees normalise(x).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from saliencylab.files import write_atomic
from saliencylab.models.explainer import LightExplainer, build_explainer
from saliencylab.models.io import save_state_dict
from saliencylab.models.load import load_trained_classifier
from saliencylab.training.classifier import multilabel_counts, multilabel_scores
from saliencylab.training.fit import fit_module
from saliencylab.training.losses import (ALTERNATIVES, LossWeights, aggregate_masks, alternative_image,
                                         explainer_loss, fcnn_loss, rt_saliency_loss)
from saliencylab.training.staged import StagedModule
from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD, Batch

VARIANTS = ("explainer", "rt_saliency", "fcnn")


class ExplainerModule(StagedModule):
    """Trains ``explainer`` (an ``nn.Module`` giving (B,C,H,W) logits) with Adam; logs ``{stage}_loss`` and each term.

    Hyper-parameters are plain values. ``classifier_dir``: the frozen classifier (required for
    "explainer" and "rt_saliency", unused by "fcnn"); its requires_grad is off and it stays in
    eval mode unless ``classifier_train_mode=True``, which reproduces the original's likely
    behaviour (Lightning's ``.train()`` reaching the frozen classifier: dropout active, BatchNorm
    on batch statistics and updating its running stats). ``num_classes`` defaults to the
    classifier's. ``mean``/``std``: normalisation for "fcnn" (default ImageNet's); the other
    variants always use the classifier's. ``backbone_from_classifier``: the light explainer's encoder
    starts from the explained small_cnn's feature weights (as the paper's starts from ImageNet
    weights; ``backbone_weights`` names any other file) and ``width`` defaults to the classifier's
    (else to 16). Loss weights: see :class:`LossWeights` (the NN-Explainer authors' defaults);
    RT-saliency: ``rt_area_weight`` (λ_area, 1.0), ``rt_alternative`` ("random" per batch, "blur",
    "color") and ``color_noise_mean_bug``. Metrics: micro F1 of the masked-in ("explainer"),
    preserved ("rt_saliency") or student ("fcnn") logits at logit >= -1 (as the authors' released code).
    """

    def __init__(self, arch: str = "light", num_classes: int | None = None, classifier_dir: str | None = None,
                 variant: str = "explainer", lr: float = 1e-5, entropy_weight: float = 1.0, tv_weight: float = 1.0,
                 class_area_weight: float = 1.0, mask_area_weight: float = 0.1, non_target_area_weight: float = 0.3,
                 min_area: float = 0.05, max_area: float = 0.3, classifier_train_mode: bool = False,
                 width: int | None = None, backbone_weights: str | None = None, rt_area_weight: float = 1.0,
                 rt_alternative: str = "random", color_noise_mean_bug: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 backbone_from_classifier: bool = False, seed: int = 42) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if rt_alternative not in ALTERNATIVES:
            raise ValueError(f"rt_alternative must be one of {ALTERNATIVES}, got {rt_alternative!r}")
        if classifier_dir is not None:
            classifier_dir = str(classifier_dir)
        self.save_hyperparameters()
        self.classifier: nn.Module | None = None
        classifier_width = None
        if variant == "fcnn":
            mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
            if num_classes is None:
                raise ValueError("variant 'fcnn' has no classifier to take the class count from: pass num_classes")
            self.class_names: list[str] | None = None
        else:
            if classifier_dir is None:
                raise ValueError(f"variant {variant!r} explains a classifier: pass classifier_dir, a directory "
                                 "written by saliencylab.training.classifier.fit_classifier")
            classifier, description = load_trained_classifier(classifier_dir)
            classifier.requires_grad_(False)
            self.classifier = classifier
            self.class_names = description.get("class_names") or None
            classifier_width = description.get("width")
            mean, std = tuple(classifier.mean.tolist()), tuple(classifier.std.tolist())
            if num_classes is None:
                num_classes = int(description["num_classes"])
            elif num_classes != int(description["num_classes"]):
                raise ValueError(f"num_classes={num_classes} but the classifier in {classifier_dir} has "
                                 f"{description['num_classes']} classes")
        self.num_classes = int(num_classes)
        self.hparams["num_classes"] = self.num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if backbone_from_classifier and (self.classifier is None or backbone_weights is not None):
            raise ValueError("backbone_from_classifier=True starts the explainer's encoder from the explained "
                             "classifier's weights: it needs classifier_dir and no backbone_weights")
        if backbone_from_classifier and width is None:
            width = classifier_width
        elif backbone_from_classifier and width != classifier_width:
            raise ValueError(f"width={width} but the classifier in {classifier_dir} is a small_cnn of width "
                             f"{classifier_width}, whose weights backbone_from_classifier copies: leave width "
                             f"unset (or set width={classifier_width})")
        width = 16 if width is None else int(width)
        self.hparams["width"] = width
        self.explainer = build_explainer(arch, self.num_classes, backbone_weights=backbone_weights, width=width)
        if backbone_from_classifier:
            if not isinstance(self.explainer, LightExplainer):
                raise ValueError(f"backbone_from_classifier=True needs arch='light' (the small_cnn's layout), "
                                 f"got {arch!r}")
            self.explainer.load_backbone(self.classifier.model.state_dict(), f"of the classifier in {classifier_dir}")
        self.weights = LossWeights(entropy_weight, tv_weight, class_area_weight, mask_area_weight,
                                   non_target_area_weight, min_area, max_area)
        self._generators = {"train": torch.Generator().manual_seed(seed), "val": torch.Generator(),
                            "test": torch.Generator()}
        self._counts: dict[str, Tensor] = {}

    # -- model state ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "ExplainerModule":
        """Lightning calls this on the whole module; the frozen classifier stays in eval mode unless asked."""
        super().train(mode)
        if self.classifier is not None and not self.hparams.classifier_train_mode:
            self.classifier.eval()
        return self

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Explainer logits (B,C,H,W) for images (B,3,H,W) in [0,1]."""
        return self.explainer(self.normalize(images))

    # -- loss ----------------------------------------------------------------------------------
    def losses(self, batch: Batch, stage: str = "train") -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(total loss, unweighted terms, logits scored by the metrics) for one batch."""
        labels = batch.labels
        x = self.normalize(batch.images)
        seg = self.explainer(x)
        variant = self.hparams.variant
        if variant == "fcnn":
            teacher_mask, _ = aggregate_masks(seg, labels)
            student = self.explainer(teacher_mask * x)
            total, terms = fcnn_loss(seg, student, labels, self.weights)
            return total, terms, student.mean(dim=(2, 3))
        m, n = aggregate_masks(seg, labels)
        model = self.classifier.model
        if variant == "explainer":
            logits_in = model(m * x)
            logits_out = model((1 - m) * x)
            total, terms = explainer_loss(logits_in, logits_out, labels, m, n, seg, self.weights)
            return total, terms, logits_in
        alternative = alternative_image(x, self._generators[stage], self.hparams.rt_alternative,
                                        color_noise_mean_bug=self.hparams.color_noise_mean_bug)
        preserved = model(m * x + (1 - m) * alternative)
        destroyed = model((1 - m) * x + m * alternative)
        total, terms = rt_saliency_loss(preserved, destroyed, labels, m, area_weight=self.hparams.rt_area_weight)
        return total, terms, preserved

    def _step(self, batch: Batch, stage: str) -> Tensor:
        total, terms, logits = self.losses(batch, stage)
        size = len(batch)
        self.log(f"{stage}_loss", total, prog_bar=stage != "test", on_step=False, on_epoch=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"{stage}_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        threshold = 0.0 if self.hparams.variant == "fcnn" else -1.0
        counts = multilabel_counts(logits.detach(), batch.labels, threshold=threshold)
        self._counts[stage] = self._counts.get(stage, torch.zeros(4, device=counts.device)) + counts
        return total

    def _log_epoch(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is not None:
            self.log(f"{stage}_f1", multilabel_scores(counts)["micro_f1"], prog_bar=stage == "val")

    def on_validation_epoch_start(self) -> None:
        self._generators["val"].manual_seed(self.hparams.seed + 1)  # the same alternatives every epoch

    def on_test_epoch_start(self) -> None:
        self._generators["test"].manual_seed(self.hparams.seed + 2)


    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.explainer.parameters() if p.requires_grad], lr=self.hparams.lr)


def fit_explainer(datamodule: L.LightningDataModule, out_dir: str | Path, *, classifier_dir: str | Path | None = None,
                  arch: str = "light", variant: str = "explainer", num_classes: int | None = None,
                  max_epochs: int = 100, patience: int = 5, min_delta: float = 1e-3, seed: int = 42,
                  progress: bool = True, accelerator: str = "auto", callbacks: Sequence[Callback] = (),
                  resume: bool = False, **module_kwargs: object) -> ExplainerModule:
    """Train with early stopping on ``val_loss`` (the full loss), keep the best checkpoint, write it out.

    ``module_kwargs``: the other :class:`ExplainerModule` hyper-parameters (lr, the loss weights,
    width, ...). The datamodule needs a validation set. ``resume``: continue an interrupted fit into ``out_dir``
    from its last checkpoint (:func:`~saliencylab.training.fit.fit_module`). Writes ``out_dir/explainer.safetensors``
    (the explainer network's weights) and ``out_dir/explainer.json`` (arch, num_classes, variant,
    classifier_dir, class names, normalisation, hyper-parameters, epochs, best val loss) and
    returns the best module (explainer in eval mode). The original kept the last epoch
    (ModelCheckpoint without monitor); here the best val_loss is kept, as for classifiers.
    """
    out_dir = Path(out_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    module = ExplainerModule(arch=arch, num_classes=num_classes, variant=variant, seed=seed,
                             classifier_dir=None if classifier_dir is None else str(classifier_dir), **module_kwargs)
    trainer, checkpoint = fit_module(module, datamodule, out_dir, max_epochs=max_epochs, patience=patience,
                                     min_delta=min_delta, resume=resume, progress=progress, accelerator=accelerator,
                                     deterministic="warn",  # bilinear upsampling has no deterministic CUDA backward
                                     callbacks=callbacks)
    best = ExplainerModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    best.eval()
    save_state_dict(best.explainer.state_dict(), out_dir / "explainer.safetensors")
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(best.hparams).items()}
    description = {
        "arch": arch, "num_classes": best.num_classes, "variant": variant,
        "classifier_dir": hparams.get("classifier_dir"), "class_names": best.class_names,
        "width": hparams["width"], "mean": best.mean.flatten().tolist(), "std": best.std.flatten().tolist(),
        "hyper_parameters": hparams, "epochs": trainer.current_epoch,
        "best_val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
    }
    write_atomic(out_dir / "explainer.json", json.dumps(description, indent=2))
    return best


