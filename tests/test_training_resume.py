"""A training command killed with SIGKILL mid-epoch continues from its last checkpoint with --resume."""
import os
import signal
import subprocess
import sys
import time

import lightning as L
import torch

from saliencylab.cli import main
from saliencylab.data.synthetic import SyntheticConfig, write_synthetic
from saliencylab.models.load import load_trained_classifier
from saliencylab.training.classifier import ClassifierModule
from saliencylab.training.fit import fit_module, last_checkpoint

EPOCHS = 3


def saved_epoch(out) -> int:
    """The epoch recorded in OUT/checkpoints/last.ckpt (our own file: full unpickling is fine here)."""
    return torch.load(last_checkpoint(out), map_location="cpu", weights_only=False)["epoch"]


def test_train_classifier_killed_mid_epoch_resumes_from_the_last_saved_epoch(tmp_path, monkeypatch, capsys):
    write_synthetic(tmp_path / "data", SyntheticConfig(image_size=32, train=64, val=8, test=2, seed=3), progress=False)
    out = tmp_path / "classifier"
    command = ["train-classifier", "--voc", str(tmp_path / "data" / "voc"), "--out", str(out), "--epochs", str(EPOCHS),
               "--image-size", "32", "--batch-size", "4", "--set", "width=4", "--set", "patience=100",
               "--test-split", "none", "--device", "cpu", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "saliencylab.cli", *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 300
    while last_checkpoint(out) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the fit ended before it could be killed: {err.decode()[-2000:]}"
    killed_at = saved_epoch(out)
    assert killed_at < EPOCHS - 1 and not (out / "classifier.safetensors").exists()

    trained: list[int] = []
    monkeypatch.setattr(ClassifierModule, "on_train_epoch_start", lambda self: trained.append(self.current_epoch))
    assert main([*command, "--resume"]) == 0
    assert trained == list(range(killed_at + 1, EPOCHS))  # the finished epochs are not trained again
    assert saved_epoch(out) == EPOCHS - 1
    classifier, description = load_trained_classifier(out)
    assert classifier(torch.rand(1, 3, 32, 32)).shape == (1, len(description["class_names"]))
    other = [*command[:command.index("width=4")], "width=8", *command[command.index("width=4") + 1:]]
    assert main([*other, "--resume"]) == 2  # a checkpoint of other settings is not continued
    assert "last.ckpt was saved with other settings (width: 4 then, 8 now)" in capsys.readouterr().err


class WorseningFit(L.LightningModule):
    """A one-weight model whose logged validation loss is the epoch number: the best epoch is the first."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_index):
        return (self.weight - batch[0]).square().mean()

    def validation_step(self, batch, batch_index):
        self.log("val_loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_when_the_best_is_an_earlier_one(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    datamodule = L.LightningDataModule.from_datasets(train_dataset=loader.dataset, val_dataset=loader.dataset,
                                                     batch_size=2)
    _, checkpoint = fit_module(WorseningFit(), datamodule, tmp_path, max_epochs=EPOCHS, progress=False,
                               accelerator="cpu")
    assert torch.load(checkpoint.best_model_path, weights_only=False)["epoch"] == 0
    assert saved_epoch(tmp_path) == EPOCHS - 1  # Lightning's own save_last would leave epoch 0 here
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
