"""A training command killed with SIGKILL mid-epoch continues from its last checkpoint with --resume."""
import os
import signal
import subprocess
import sys
import time

import torch

from saliencylab.cli import main
from saliencylab.data.synthetic import SyntheticConfig, write_synthetic
from saliencylab.models.load import load_trained_classifier
from saliencylab.training.classifier import ClassifierModule
from saliencylab.training.fit import last_checkpoint

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
