"""Classifier loading: folders, torchvision:/timm: specs with user weights, and the errors users meet."""
import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision import models

from saliencylab.models.load import (classifier_image_size, load_classifier, load_trained_classifier,
                                     read_class_names, save_classifier)
from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD


def _normalised(images, mean, std):
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def resnet18():
    """A random-weight torchvision ResNet-18 with 10 classes and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = models.resnet18(num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["pth", "safetensors", "ckpt"])
def test_torchvision_weights_give_the_original_logits(resnet18, images, tmp_path, kind):
    state = resnet18.state_dict()
    path = tmp_path / f"w.{kind}"
    if kind == "pth":
        torch.save(state, path)
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a Lightning checkpoint of a module holding the network as self.model
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    classifier, description = load_classifier("torchvision:resnet18", weights=path, num_classes=10)
    with torch.no_grad():
        expected = resnet18(_normalised(images, IMAGENET_MEAN, IMAGENET_STD))
        torch.testing.assert_close(classifier(images), expected)
    assert not classifier.training
    assert description["class_names"] == [f"class_{i}" for i in range(10)]
    assert description["mean"] == list(IMAGENET_MEAN) and classifier_image_size(description) == 224


def test_timm_weights_give_the_original_logits_with_the_models_normalisation(images, tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    classifier, description = load_classifier("timm:resnet10t", weights=tmp_path / "w.safetensors", num_classes=4,
                                              mean=mean, std=std, layer="layer3")
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), model(_normalised(images, mean, std)))
    assert classifier.layer_path() == "layer3"
    _, defaults = load_classifier("timm:resnet10t", num_classes=4)
    assert defaults["mean"] == list(model.pretrained_cfg["mean"])
    assert defaults["image_size"] == model.pretrained_cfg["input_size"][-1] == classifier_image_size(defaults)


def test_saved_torchvision_classifier_reloads_from_its_folder(resnet18, images, tmp_path):
    torch.save(resnet18.state_dict(), tmp_path / "w.pth")
    names = [f"n{i}" for i in range(10)]
    classifier, _ = load_classifier("torchvision:resnet18", weights=tmp_path / "w.pth", class_names=names,
                                    mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3), layer="layer3")
    save_classifier(classifier, tmp_path / "folder", arch="torchvision:resnet18")
    for reloaded, description in (load_trained_classifier(tmp_path / "folder"), load_classifier(tmp_path / "folder")):
        with torch.no_grad():
            torch.testing.assert_close(reloaded(images), classifier(images))
        assert reloaded.class_names == names and reloaded.layer_path() == "layer3"
        assert description["arch"] == "torchvision:resnet18"
    assert load_classifier(tmp_path / "folder")[1]["source"] == str(tmp_path / "folder")


def test_class_names_from_text_json_and_torchvision_weights(tmp_path):
    (tmp_path / "names.txt").write_text("cat\n\ndog\nbird\n")
    (tmp_path / "names.json").write_text(json.dumps(["cat", "dog"]))
    assert read_class_names(tmp_path / "names.txt") == ["cat", "dog", "bird"]
    assert read_class_names(tmp_path / "names.json") == ["cat", "dog"]
    imagenet = read_class_names("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert len(imagenet) == 1000 and imagenet[0] == "tench"
    classifier, description = load_classifier("torchvision:resnet18", class_names=str(tmp_path / "names.txt"))
    assert classifier.num_classes == description["num_classes"] == 3
    assert classifier.model.fc.out_features == 3


def test_errors_name_the_file_and_what_was_expected(resnet18, tmp_path):
    torch.save(resnet18.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w.pth does not fit torchvision:resnet18 with 7 classes.*"
                                         r"fc.weight \(10, 512\) vs \(7, 512\)"):
        load_classifier("torchvision:resnet18", weights=tmp_path / "w.pth", num_classes=7)
    with pytest.raises(ValueError, match=r"w.pth does not fit torchvision:resnet34.*missing keys: layer1.2"):
        load_classifier("torchvision:resnet34", weights=tmp_path / "w.pth", num_classes=10)
    with pytest.raises(FileNotFoundError, match="weights file .*nowhere.pth does not exist"):
        load_classifier("torchvision:resnet18", weights=tmp_path / "nowhere.pth")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="num_classes=10 disagrees with the 3 class names .*names.txt"):
        load_classifier("torchvision:resnet18", num_classes=10, class_names=str(tmp_path / "names.txt"))
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="bad.json must hold a JSON list of strings"):
        load_classifier("torchvision:resnet18", class_names=str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="class names file .*missing.txt does not exist"):
        read_class_names(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="expected torchvision:<Weights enum>"):
        read_class_names("torchvision:ResNet18_Weights.NOPE")
    with pytest.raises(ValueError, match="unknown torchvision classification model: 'resnet19'; close names: resnet18"):
        load_classifier("torchvision:resnet19")
    with pytest.raises(ValueError, match="unknown timm model: 'resnet10x'; close names: .*resnet10t"):
        load_classifier("timm:resnet10x")
    with pytest.raises(ValueError, match="unknown layer of torchvision:resnet18 .*'layer5'; close names: layer4"):
        load_classifier("torchvision:resnet18", layer="layer5")
    with pytest.raises(ValueError, match="mean and std need 3 values each"):
        load_classifier("torchvision:resnet18", mean=(0.5, 0.5))
    with pytest.raises(FileNotFoundError, match="neither a classifier folder .* nor torchvision:NAME / timm:NAME"):
        load_classifier(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="weights, num_classes apply to torchvision:NAME / timm:NAME models"):
        load_classifier(tmp_path, weights=tmp_path / "w.pth", num_classes=3)


def test_methods_load_checkpoints_without_importing_lightning(tmp_path):
    code = f"""
import sys
from saliencylab import build_classifier, methods
classifier = build_classifier("small_cnn", 3, width=4)
for name in ("explainer", "masker"):
    try:
        methods.build(name, classifier, checkpoint={str(tmp_path / 'nowhere')!r})
    except FileNotFoundError:
        pass
print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' or m.startswith('saliencylab.training')))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
