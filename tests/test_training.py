"""Classifier training: micro metrics by hand, and a tiny real fit that writes reloadable weights."""
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from saliencylab.data.module import SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, generate
from saliencylab.models.load import load_trained_classifier
from saliencylab.training.classifier import ClassifierModule, fit_classifier, multilabel_counts, multilabel_scores
from saliencylab.training.fit import fit_module, last_checkpoint


def test_micro_metrics_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 1.0, -0.5]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    counts = multilabel_counts(logits, labels)  # positives at logit >= 0: (0,0) tp, (0,2) fp, (1,1) tp
    assert counts.tolist() == [2, 1, 2, 1]  # tp, fp, fn, tn
    scores = multilabel_scores(counts)
    assert scores == pytest.approx({"accuracy": 3 / 6, "precision": 2 / 3, "recall": 2 / 4, "micro_f1": 4 / 7})


def test_tiny_fit_writes_weights_that_reload_to_the_same_model(tmp_path):
    splits = generate(SyntheticConfig(image_size=32, train=16, val=8, test=8, seed=1))
    datamodule = SaliencyDataModule(splits["train"], splits["val"], splits["test"], batch_size=8)
    classifier, scores = fit_classifier(datamodule, tmp_path, num_classes=len(CLASSES), class_names=CLASSES,
                                        max_epochs=2, width=4, progress=False)
    assert set(scores) == {"accuracy", "precision", "recall", "micro_f1"}
    assert all(0 <= v <= 1 for v in scores.values())
    description = json.loads((tmp_path / "classifier.json").read_text())
    assert description["arch"] == "small_cnn" and description["class_names"] == list(CLASSES)
    reloaded, _ = load_trained_classifier(tmp_path)
    images = torch.stack([s.image for s in splits["test"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), classifier(images))
    with pytest.raises(FileNotFoundError, match="train a classifier"):
        load_trained_classifier(tmp_path / "nowhere")


class EpochLog(Callback):
    """Records the epochs a fit trains."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epochs.append(trainer.current_epoch)


def test_fit_module_resumes_from_the_last_checkpoint(tmp_path):
    splits = generate(SyntheticConfig(image_size=32, train=16, val=8, test=8, seed=1))
    datamodule = SaliencyDataModule(splits["train"], splits["val"], splits["test"], batch_size=8)
    options = {"progress": False, "deterministic": True}
    first = EpochLog()
    fit_module(ClassifierModule(num_classes=len(CLASSES), width=4), datamodule, tmp_path, max_epochs=2,
               callbacks=[first], **options)
    assert first.epochs == [0, 1] and last_checkpoint(tmp_path) is not None
    resumed = EpochLog()
    trainer, checkpoint = fit_module(ClassifierModule(num_classes=len(CLASSES), width=4), datamodule, tmp_path,
                                     max_epochs=3, resume=True, callbacks=[resumed], **options)
    assert resumed.epochs == [2] and trainer.current_epoch == 3 and checkpoint.best_model_path
    fresh = EpochLog()
    fit_module(ClassifierModule(num_classes=len(CLASSES), width=4), datamodule, tmp_path / "fresh", max_epochs=1,
               resume=True, callbacks=[fresh], **options)  # nothing to resume from: starts at epoch 0
    assert fresh.epochs == [0]
