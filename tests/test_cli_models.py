"""Any classifier from the command line: --model torchvision:/timm: with a weights file, and train-classifier."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import models

from saliencylab import methods
from saliencylab.bench.export import load_maps
from saliencylab.cli import main
from saliencylab.data import ImageFolder, Resize
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.models.explainer import load_trained_explainer
from saliencylab.models.load import load_classifier
from saliencylab.types import collate


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three 64 px PNGs of random noise."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    return folder


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("synthetic"), SyntheticConfig(image_size=32, train=8, val=4, test=4,
                                                                                 seed=2), progress=False)
    return root / "voc"


def _expected_maps(classifier, folder):
    """Grad-CAM maps (N,1,64,64) of the top-1 class of each picture, computed in this process."""
    batch = collate([ImageFolder(folder, classifier.class_names, transform=Resize(64))[i] for i in range(3)])
    with torch.no_grad():
        top1 = classifier(batch.images).argmax(dim=1, keepdim=True)
    return methods.build("gradcam", classifier).attribute(batch.images, top1), top1


def _check_written(out, expected, top1):
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["images"]) == ["p0", "p1", "p2"] and manifest["targets"] == "top1"
    for index in range(3):
        maps, targets = load_maps(out, f"p{index}")
        assert targets.tolist() == top1[index].tolist()
        torch.testing.assert_close(maps, expected[index], rtol=1e-4, atol=1e-5)
    assert float(expected.abs().sum()) > 0


def test_explain_a_torchvision_model_with_a_weights_file_in_one_command(pictures, tmp_path):
    torch.manual_seed(0)
    torch.save(models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    assert main(["explain", "gradcam", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
                 "--num-classes", "10", "--images", str(pictures), "--out", str(out), "--image-size", "64",
                 "--no-progress"]) == 0
    classifier, _ = load_classifier("torchvision:resnet18", weights=tmp_path / "w.pth", num_classes=10)
    _check_written(out, *_expected_maps(classifier, pictures))


def test_explain_a_timm_model_with_names_and_layer(pictures, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    options = {"weights": tmp_path / "w.safetensors", "class_names": str(tmp_path / "names.txt"), "layer": "layer3"}
    out = tmp_path / "out"
    assert main(["explain", "gradcam", "--model", "timm:resnet10t", "--weights", str(options["weights"]),
                 "--class-names", options["class_names"], "--layer", "layer3", "--images", str(pictures),
                 "--out", str(out), "--image-size", "64", "--no-progress"]) == 0
    classifier, _ = load_classifier("timm:resnet10t", **options)
    _check_written(out, *_expected_maps(classifier, pictures))


def test_classifier_option_errors_exit_2_with_one_message(pictures, classifier_dir, tmp_path, capsys):
    torch.save(models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pth")
    common = ["--images", str(pictures), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(["explain", "gradcam", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
                 "--num-classes", "7", *common]) == 2
    assert "fc.weight (10, 512) vs (7, 512)" in capsys.readouterr().err
    assert main(["explain", "gradcam", "--classifier", str(classifier_dir), "--weights", str(tmp_path / "w.pth"),
                 *common]) == 2
    assert "--weights belong to --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "gradcam", "--classifier", str(classifier_dir), "--model", "timm:resnet10t", *common])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_train_classifier_writes_a_folder_that_load_classifier_reads(voc_root, tmp_path, capsys):
    out = tmp_path / "classifier"
    assert main(["train-classifier", "--voc", str(voc_root), "--out", str(out), "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--set", "width=4", "--device", "cpu", "--no-progress"]) == 0
    classifier, description = load_classifier(out)
    assert classifier.class_names == list(CLASSES) and description["arch"] == "small_cnn"
    assert description["width"] == 4 and description["data"]["image_size"] == 32 and description["epochs"] == 1
    assert set(description["test"]) == {"accuracy", "precision", "recall", "micro_f1"}
    assert "test: accuracy" in capsys.readouterr().out
    with torch.no_grad():
        logits = classifier(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


def test_train_explainer_with_model_saves_the_classifier_it_explains(voc_root, tmp_path):
    torch.manual_seed(0)
    torch.save(models.resnet18(num_classes=len(CLASSES)).state_dict(), tmp_path / "w.pth")
    (tmp_path / "names.json").write_text(json.dumps(list(CLASSES)))
    out = tmp_path / "explainer"
    assert main(["train-explainer", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
                 "--class-names", str(tmp_path / "names.json"), "--voc", str(voc_root), "--out", str(out),
                 "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--set", "backbone_from_classifier=false",
                 "--set", "width=4", "--device", "cpu", "--no-progress"]) == 0
    _, description = load_trained_explainer(out)
    assert description["classifier_dir"] == str(out / "classifier")
    saved, _ = load_classifier(out / "classifier")
    original, _ = load_classifier("torchvision:resnet18", weights=tmp_path / "w.pth", class_names=list(CLASSES))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(saved(images), original(images))
    maps = methods.build("explainer", saved, checkpoint=str(out)).attribute(images, torch.tensor([[0], [1]]))
    assert maps.shape == (2, 1, 32, 32) and bool(((maps >= 0) & (maps <= 1)).all())
