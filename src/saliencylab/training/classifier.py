"""Train the classifier to be explained (multi-label, BCE; Stalder et al. 2022)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliencylab.models.classifier import Classifier
from saliencylab.models.load import save_classifier
from saliencylab.models.zoo import build_classifier
from saliencylab.training.fit import fit_module
from saliencylab.training.staged import StagedModule
from saliencylab.types import Batch


def multilabel_counts(logits: Tensor, labels: Tensor, threshold: float = 0.0) -> Tensor:
    """Micro counts [tp, fp, fn, tn] over all (image, class) pairs; positive if logit >= threshold."""
    predicted = logits >= threshold
    truth = labels > 0.5
    return torch.stack([(predicted & truth).sum(), (predicted & ~truth).sum(),
                        (~predicted & truth).sum(), (~predicted & ~truth).sum()]).float()


def multilabel_scores(counts: Tensor) -> dict[str, float]:
    """Micro accuracy, precision, recall and F1 (Stalder et al. 2022) from :func:`multilabel_counts`."""
    tp, fp, fn, tn = counts.tolist()
    return {
        "accuracy": (tp + tn) / max(tp + fp + fn + tn, 1),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "micro_f1": 2 * tp / max(2 * tp + fp + fn, 1),
    }


def frozen_batchnorm_to_eval(model: nn.Module) -> None:
    """Keep BatchNorm layers whose parameters are frozen in eval mode (no running-stat updates)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()


class ClassifierModule(StagedModule):
    """Multi-label classifier training: BCE-with-logits, Adam, micro metrics at logit >= 0.

    Built from plain hyper-parameters (arch name, class count) so ``load_from_checkpoint``
    rebuilds it; ``backbone_weights`` is an optional ImageNet state-dict file.
    """

    def __init__(self, arch: str = "small_cnn", num_classes: int = 6, class_names: Sequence[str] | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, freeze_backbone: bool = True,
                 backbone_weights: str | None = None, width: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classifier = build_classifier(arch, num_classes, class_names=class_names, freeze_backbone=freeze_backbone,
                                           backbone_weights=backbone_weights, width=width)
        self._counts: dict[str, Tensor] = {}

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)

    def on_train_epoch_start(self) -> None:
        frozen_batchnorm_to_eval(self.classifier)

    def _step(self, batch: Batch, stage: str) -> Tensor:
        logits = self(batch.images)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", batch_size=len(batch))
        counts = multilabel_counts(logits.detach(), batch.labels)
        self._counts[stage] = self._counts.get(stage, torch.zeros(4, device=counts.device)) + counts
        return loss

    def _log_epoch(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is not None:
            scores = multilabel_scores(counts)
            if stage == "test":
                for name, value in scores.items():
                    self.log(f"test_{name}", value)
            else:
                self.log(f"{stage}_f1", scores["micro_f1"], prog_bar=True)


    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def fit_classifier(datamodule: L.LightningDataModule, out_dir: str | Path, *, arch: str = "small_cnn",
                   num_classes: int, class_names: Sequence[str] | None = None, lr: float = 1e-3,
                   max_epochs: int = 30, patience: int = 5, seed: int = 42, width: int = 32,
                   progress: bool = True, accelerator: str = "auto", data: dict | None = None,
                   resume: bool = False, **module_kwargs: object) -> tuple[Classifier, dict[str, float]]:
    """Train with early stopping on ``val_loss`` (min_delta 1e-3), keep the best checkpoint, test it.

    ``resume``: continue an interrupted fit into ``out_dir`` from its last checkpoint (:func:`fit_module`).

    Writes ``out_dir/classifier.safetensors`` (the model's weights) and ``out_dir/classifier.json``
    (how to rebuild it, its test scores, and ``data``, e.g. ``{"image_size": 224}``, the size
    ``saliencylab explain`` then resizes to); see :func:`saliencylab.models.load.save_classifier`.
    ``module_kwargs``: the other :class:`ClassifierModule` hyper-parameters (weight_decay,
    freeze_backbone, backbone_weights). Returns the trained Classifier in eval mode and the test
    scores (micro accuracy / precision / recall / F1; empty when the datamodule has no test set).
    """
    out_dir = Path(out_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    module = ClassifierModule(arch=arch, num_classes=num_classes, class_names=class_names, lr=lr, width=width,
                              **module_kwargs)
    trainer, checkpoint = fit_module(module, datamodule, out_dir, max_epochs=max_epochs, patience=patience,
                                     min_delta=1e-3, resume=resume, progress=progress, accelerator=accelerator)
    best = ClassifierModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    results = trainer.test(best, datamodule=datamodule, verbose=False)
    scores = {k.removeprefix("test_"): float(v) for k, v in (results or [{}])[0].items() if k != "test_loss"}
    extra = {"data": data} if data is not None else {}
    save_classifier(best.classifier, out_dir, arch=arch, width=width, test=scores, epochs=trainer.current_epoch,
                    **extra)
    return best.classifier.eval(), scores
