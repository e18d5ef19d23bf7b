"""Classifier wrapper, zoo builders and safe weight files."""
import pickle

import pytest
import torch
from torch import nn

from saliencylab import Classifier, build_classifier
from saliencylab.models import ARCHITECTURES, load_state_dict, save_state_dict


def test_classifier_normalizes_inside_and_applies_the_score():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    classifier = Classifier(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    image = torch.tensor([1.0, 0.75, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(classifier.normalize(image).flatten(), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(classifier(image), model(torch.tensor([[1.0, 1.0, 0.0]]).view(1, 3, 1, 1)))
    classifier.score = "softmax"
    torch.testing.assert_close(classifier.scores(image), classifier(image).softmax(1))
    classifier.score = "sigmoid"
    torch.testing.assert_close(classifier.scores(image), classifier(image).sigmoid())


def test_mask_images_is_zero_fill_in_normalized_space():
    classifier = Classifier(nn.Identity(), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    images, masks = torch.rand(2, 3, 5, 5), torch.rand(2, 1, 5, 5)
    torch.testing.assert_close(classifier.normalize(classifier.mask_images(images, masks)),
                               masks * classifier.normalize(images))


def test_classifier_rejects_bad_settings():
    with pytest.raises(ValueError, match="score must be one of"):
        Classifier(nn.Identity(), score="probability")
    with pytest.raises(ValueError, match="std > 0"):
        Classifier(nn.Identity(), std=(0, 1, 1))
    with pytest.raises(ValueError, match="not a module of the model"):
        Classifier(nn.Identity(), layers={"features": "layer9"})


@pytest.mark.parametrize("arch, size, layer_shape", [
    ("small_cnn", 32, (16, 4, 4)),
    ("resnet18", 64, (512, 2, 2)),
    ("alexnet", 96, (256, 2, 2)),
])
def test_zoo_builds_each_architecture_with_a_new_head(arch, size, layer_shape):
    classifier = build_classifier(arch, 5, width=2) if arch == "small_cnn" else build_classifier(arch, 5)
    classifier.eval()
    outputs = []
    handle = classifier.layer("auto").register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        logits = classifier(torch.rand(2, 3, size, size))
    handle.remove()
    assert logits.shape == (2, 5)
    assert tuple(outputs[0].shape[1:]) == layer_shape
    if arch != "small_cnn":  # NN-Explainer recipe: frozen backbone, trainable new head
        trainable = [n for n, p in classifier.model.named_parameters() if p.requires_grad]
        assert trainable and all(n.startswith(("fc.", "classifier.")) for n in trainable)


def test_zoo_vgg16_and_resnet50_heads_follow_spec_000():
    vgg = build_classifier("vgg16", 20)
    assert [m.out_features for m in vgg.model.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 20]
    assert vgg.layers["pool5"] == "features.30" and isinstance(vgg.layer("auto"), nn.MaxPool2d)
    resnet = build_classifier("resnet50", 91)
    assert resnet.model.fc.in_features == 2048 and resnet.model.fc.out_features == 91


def test_zoo_loads_backbone_and_full_weights_from_files(tmp_path):
    reference = build_classifier("resnet18", 3)
    backbone = torch.nn.Sequential()  # an "ImageNet" state dict: the torchvision model with its 1000-way fc
    from torchvision.models import resnet18
    imagenet = resnet18(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    built = build_classifier("resnet18", 3, backbone_weights=tmp_path / "r18.pth")
    torch.testing.assert_close(built.model.conv1.weight, imagenet.conv1.weight)
    save_state_dict(reference.model.state_dict(), tmp_path / "full.safetensors")
    again = build_classifier("resnet18", 3, weights=tmp_path / "full.safetensors")
    torch.testing.assert_close(again.model.fc.weight, reference.model.fc.weight)
    with pytest.raises(ValueError, match="does not fit a resnet18 with 7 classes"):
        build_classifier("resnet18", 7, weights=tmp_path / "full.safetensors")
    del backbone


def test_unknown_architecture_and_bad_counts():
    with pytest.raises(ValueError, match="choose one of small_cnn"):
        build_classifier("resnet51", 3)
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        build_classifier("small_cnn", 3, class_names=["a", "b"])
    assert set(ARCHITECTURES) == {"small_cnn", "vgg16", "resnet18", "resnet50", "alexnet"}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weight_files_load_safely_and_fail_clearly(tmp_path):
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": {"classifier.model.w": torch.ones(2)}, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert torch.equal(load_state_dict(tmp_path / "plain.pt")["w"], torch.arange(3.0))
    assert torch.equal(load_state_dict(tmp_path / "lightning.ckpt", prefix="classifier.model.")["w"], torch.ones(2))
    with (tmp_path / "evil.pt").open("wb") as handle:
        pickle.dump({"w": Evil()}, handle)
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_state_dict(tmp_path / "evil.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read weights file .*broken.safetensors"):
        load_state_dict(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no keys starting with 'head.'"):
        load_state_dict(tmp_path / "plain.pt", prefix="head.")


def test_described_network_errors_name_the_missing_or_mismatched_file(tmp_path):
    from saliencylab.models.io import load_described_network, save_state_dict

    def build(description):
        return torch.nn.Linear(description["inputs"], 2)

    with pytest.raises(FileNotFoundError, match="net.json not found: train a net with fit_net first"):
        load_described_network(tmp_path, "net", build, "fit_net")
    (tmp_path / "net.json").write_text('{"inputs": 3}')
    save_state_dict(torch.nn.Linear(4, 2).state_dict(), tmp_path / "net.safetensors")
    with pytest.raises(ValueError, match="net.safetensors does not fit the net described in"):
        load_described_network(tmp_path, "net", build, "fit_net")
    trained = torch.nn.Linear(3, 2)
    save_state_dict(trained.state_dict(), tmp_path / "net.safetensors")
    network, description = load_described_network(tmp_path, "net", build, "fit_net")
    assert description == {"inputs": 3} and not network.training
    assert torch.equal(network.weight, trained.weight)
