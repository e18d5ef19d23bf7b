"""The hardness predictor and its joint training (paper 003): the opposite loss and the rejection AUC on hand
values, and a tiny fit whose saved models reproduce the logged selection criterion."""
import json

import numpy as np
import pytest
import torch

from saliencylab.data.cub import CUBDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.synthetic_ambiguity import AmbiguityConfig, write_synthetic_birds
from saliencylab.models.hardness import HardnessPredictor, hardness_classifier
from saliencylab.models.load import save_classifier
from saliencylab.models.zoo import build_classifier
from saliencylab.training.hardness import fit_hardness, load_hardness, opposite_loss, rejection_auc
from saliencylab.types import collate


def test_opposite_loss_bonus_and_class_balance_by_hand():
    probability = torch.tensor([0.9, 0.3, 0.52, 0.1])
    correct = torch.tensor([True, False, True, False])
    hardness = torch.tensor([0.2, 0.6, 0.5, 0.9])
    loss, per_sample, weights = opposite_loss(probability, hardness, correct, press=5.0)
    # targets 0.9, 0.3, 0.55 (bonus), 0.1; ℓ = 1 − (1−t)s − (1−s)t
    torch.testing.assert_close(per_sample, torch.tensor([0.26, 0.46, 0.5, 0.18]))
    torch.testing.assert_close(weights, torch.tensor([0.1, 2.5, 0.1, 2.5]))  # half easy: 0.5/5 and 0.5·5
    assert float(loss) == pytest.approx((2 * 0.1 * 0.26 + 2 * 2.5 * 0.46 + 2 * 0.1 * 0.5 + 2 * 2.5 * 0.18) / 4)
    _, _, unpressed = opposite_loss(probability, hardness, correct, press=1.0)
    torch.testing.assert_close(unpressed, torch.full((4,), 0.5))


def test_rejection_auc_by_hand():
    hardness = torch.tensor([0.9, 0.1, 0.5, 0.3])
    correct = torch.tensor([False, True, True, True])
    # rejecting 1..24 %: none of 4 images (accuracy .75); 25..99 %: the wrong one goes first (accuracy 1)
    assert rejection_auc(hardness, correct) == pytest.approx(24 * 0.75 + 75 - (0.75 + 1) / 2)
    assert rejection_auc(-hardness, correct) < rejection_auc(hardness, correct)


def test_hardness_predictor_shapes_and_layers():
    classifier = build_classifier("small_cnn", 5, width=4)
    predictor = HardnessPredictor(classifier.model, hidden=8, dropout=0.0).eval()
    assert predictor(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    assert predictor.trunk.head.out_features == 8 and classifier.model.head.out_features == 5  # a copy
    wrapped = hardness_classifier(predictor, classifier)
    assert wrapped.layer_path("features") == "trunk.features"


def test_tiny_hardness_fit_saves_what_it_selected(tmp_path):
    root = write_synthetic_birds(tmp_path / "birds", AmbiguityConfig(image_size=32, train=40, test=4, classes=5))
    train, val = (InMemory(CUBDataset(root, split, image_size=32)) for split in ("train", "val"))
    names = CUBDataset(root, "test", image_size=32).class_names
    torch.manual_seed(0)
    source = save_classifier(build_classifier("small_cnn", 5, class_names=names, width=4), tmp_path / "classifier",
                             arch="small_cnn", width=4)
    before = build_classifier("small_cnn", 5, class_names=names, width=4, weights=source / "classifier.safetensors")
    datamodule = SaliencyDataModule(train, val, batch_size=8)
    description = fit_hardness(datamodule, tmp_path / "hp", classifier_dir=source, max_epochs=2, hidden=16,
                               progress=False, accelerator="cpu", classifier_lr=0.05, hardness_lr=1e-3)
    assert json.loads((tmp_path / "hp" / "hardness.json").read_text())["epochs"] == 2
    classifier, predictor = load_hardness(tmp_path / "hp")
    assert not torch.equal(classifier.model.head.weight, before.model.head.weight)  # F was fine-tuned
    batch = collate([val[i] for i in range(len(val))])
    with torch.no_grad():
        correct = classifier(batch.images).argmax(1) == batch.labels.argmax(1)
        hardness = predictor(batch.images)[:, 0].sigmoid()
    assert rejection_auc(hardness, correct) == pytest.approx(description["best_val_rejection_auc"], abs=1e-4)


def test_cli_train_hardness_then_insecurity_writes_maps_and_figures(tmp_path):
    from saliencylab.cli import main

    root = write_synthetic_birds(tmp_path / "birds", AmbiguityConfig(image_size=32, train=30, test=6, classes=5))
    names = CUBDataset(root, "test", image_size=32).class_names
    torch.manual_seed(1)
    save_classifier(build_classifier("small_cnn", 5, class_names=names, width=4), tmp_path / "classifier",
                    arch="small_cnn", width=4, data={"image_size": 32})
    assert main(["train-hardness", "--classifier", str(tmp_path / "classifier"), "--data", f"cub:{root}",
                 "--out", str(tmp_path / "hp"), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--set", "hidden=8", "--no-progress"]) == 0
    assert main(["insecurity", "--hardness", str(tmp_path / "hp"), "--data", f"cub:{root}", "--images", "3",
                 "--out", str(tmp_path / "maps"), "--figures", "2", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "maps" / "manifest.json").read_text())
    assert len(manifest["images"]) == 3
    first = manifest["images"][0]
    stored = np.load(tmp_path / "maps" / first["file"])
    assert stored["maps"].shape[1:] == (32, 32) or stored["maps"].shape[0] == 0
    assert len(first["pairs"]) == len(stored["pairs"]) and len(first["top5"]) == 5
    assert all((tmp_path / "maps" / e["figure"]).is_file() for e in manifest["images"][:2] if e["pairs"])
    assert main(["insecurity", "--classifier", str(tmp_path / "classifier"), "--data", f"cub:{root}",
                 "--out", str(tmp_path / "x")]) == 2  # the hardness score needs --hardness
