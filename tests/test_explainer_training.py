"""Explainer networks, presets, tiny real fits on VOC/COCO-format fixtures, and the Method adapters."""
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from saliencylab import methods, presets
from saliencylab.data.coco import COCODataset, write_coco
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, generate
from saliencylab.data.voc import VOCDataset, write_voc
from saliencylab.models.explainer import build_explainer, load_trained_explainer
from saliencylab.models.load import load_trained_classifier, save_classifier
from saliencylab.models.zoo import build_classifier
from saliencylab.training.explainer import ExplainerModule, fit_explainer


@pytest.fixture(scope="module")
def splits():
    return generate(SyntheticConfig(image_size=32, train=16, val=8, test=4, seed=3))


@pytest.fixture(scope="module")
def voc_datamodule(splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    samples = splits["train"] + splits["val"]
    write_voc(root, samples, list(CLASSES), {"train": [s.image_id for s in splits["train"]],
                                             "val": [s.image_id for s in splits["val"]]})
    return SaliencyDataModule(InMemory(VOCDataset(root, "train", CLASSES)), InMemory(VOCDataset(root, "val", CLASSES)),
                              batch_size=8)


@pytest.fixture(scope="module")
def coco_datamodule(splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    datasets = {}
    for split in ("train", "val"):
        annotations = write_coco(root / f"{split}.json", root / split, splits[split], list(CLASSES))
        datasets[split] = InMemory(COCODataset(root / split, annotations))
    return SaliencyDataModule(datasets["train"], datasets["val"], batch_size=8)


class WatchClassifier(Callback):
    """Records the frozen classifier's mode and grad flags at every training batch."""

    def __init__(self) -> None:
        self.modes: set[bool] = set()
        self.grads: set[bool] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.classifier is not None:
            self.modes |= {m.training for m in pl_module.classifier.modules()}
            self.grads |= {p.requires_grad for p in pl_module.classifier.parameters()}


def test_explainer_networks_give_all_class_logits_at_input_resolution(tmp_path):
    torch.manual_seed(0)
    light = build_explainer("light", 5, width=4).eval()
    for size in ((24, 20), (33, 47)):
        assert light(torch.randn(2, 3, *size)).shape == (2, 5, *size)
    with pytest.raises(ValueError, match="unknown explainer architecture"):
        build_explainer("unet", 5)
    classifier = build_classifier("small_cnn", 5, width=4, class_names=CLASSES[:5])
    save_classifier(classifier, tmp_path / "small", arch="small_cnn", width=4)
    started = build_explainer("light", 5, width=4, backbone_weights=tmp_path / "small" / "classifier.safetensors")
    for ours, theirs in zip(started.features.state_dict().values(), classifier.model.features.state_dict().values()):
        assert torch.equal(ours, theirs)  # the encoder starts from the classifier's features
    with pytest.raises(ValueError, match="not those of a small_cnn of width 8"):
        build_explainer("light", 5, width=8, backbone_weights=tmp_path / "small" / "classifier.safetensors")
    from torchvision.models import resnet50
    torch.save(resnet50(weights=None).state_dict(), tmp_path / "resnet50.pt")  # a user's ImageNet file, say
    deeplab = build_explainer("deeplabv3_resnet50", 3, backbone_weights=tmp_path / "resnet50.pt").eval()
    with torch.no_grad():
        assert deeplab(torch.randn(1, 3, 40, 36)).shape == (1, 3, 40, 36)
    assert deeplab.net.aux_classifier is None


@pytest.mark.parametrize("name", ["vgg16_voc", "resnet50_voc", "vgg16_coco", "resnet50_coco", "synthetic"])
def test_presets_load_and_build_their_architectures(name):
    preset = presets.load("explainer", name)
    data, clf, exp = preset["data"], preset["classifier"], preset["explainer"]
    size = 64
    if name != "synthetic":
        assert exp["arch"] == "deeplabv3_resnet50" and data["image_size"] == 224 and data["batch_size"] == 16
        assert exp["patience"] == (2 if name.endswith("coco") else 5) and exp["min_delta"] == 1e-3
        assert clf["arch"] == name.split("_")[0]
    with torch.device("meta"):  # build + one forward on meta tensors: every shape checked, nothing computed
        explainer = build_explainer(exp["arch"], clf["num_classes"], width=exp.get("width", 16)).eval()
        classifier = build_classifier(clf["arch"], clf["num_classes"]).eval()
        images = torch.empty(2, 3, size, size)
        assert explainer(images).shape == (2, clf["num_classes"], size, size)
        assert classifier.model(images).shape == (2, clf["num_classes"])


def test_preset_values_follow_the_spec_table():
    table = {"vgg16_voc": (1e-5, 1.0, 1.0, 1.0, 0.1, 0.3), "resnet50_voc": (1e-4, 3.0, 1.0, 0.8, 0.01, 0.3),
             "vgg16_coco": (1e-5, 1.0, 0.3, 0.3, 0.03, 0.1), "resnet50_coco": (1e-5, 3.0, 0.05, 0.1, 0.01, 0.03)}
    for name, values in table.items():
        exp = presets.load("explainer", name)["explainer"]
        assert (exp["lr"], exp["entropy_weight"], exp["tv_weight"], exp["class_area_weight"],
                exp["mask_area_weight"], exp["non_target_area_weight"]) == values
    assert set(table) | {"synthetic"} <= set(presets.names("explainer"))
    with pytest.raises(FileNotFoundError, match="known presets"):
        presets.load("explainer", "nowhere")


def test_classifier_stays_frozen_in_eval_unless_asked(classifier_dir):
    module = ExplainerModule(classifier_dir=str(classifier_dir), width=4).train()
    assert module.explainer.training and not module.classifier.training
    assert not any(p.requires_grad for p in module.classifier.parameters())
    assert module.num_classes == len(CLASSES)
    assert ExplainerModule(classifier_dir=str(classifier_dir), width=4, classifier_train_mode=True).train() \
        .classifier.training
    with pytest.raises(ValueError, match="classifier_dir"):
        ExplainerModule(variant="explainer")
    with pytest.raises(ValueError, match="num_classes"):
        ExplainerModule(variant="fcnn")
    with pytest.raises(ValueError, match="has 6 classes"):
        ExplainerModule(classifier_dir=str(classifier_dir), num_classes=3)
    started = ExplainerModule(classifier_dir=str(classifier_dir), width=4, backbone_from_classifier=True)
    assert torch.equal(started.explainer.features[0].weight, started.classifier.model.features[0].weight)
    with pytest.raises(ValueError, match="backbone_from_classifier=True .* needs classifier_dir"):
        ExplainerModule(variant="fcnn", num_classes=6, backbone_from_classifier=True)
    with pytest.raises(ValueError, match="needs arch='light'"):
        ExplainerModule(classifier_dir=str(classifier_dir), arch="deeplabv3_resnet50", backbone_from_classifier=True)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant,data", [("explainer", "voc"), ("rt_saliency", "voc"), ("fcnn", "voc"),
                                          ("explainer", "coco")])
def test_tiny_fit_reloads_to_the_same_outputs(variant, data, splits, classifier_dir, voc_datamodule,
                                              coco_datamodule, tmp_path):
    datamodule = voc_datamodule if data == "voc" else coco_datamodule
    before = _state(load_trained_classifier(classifier_dir)[0])
    watch = WatchClassifier()
    extra = {"num_classes": len(CLASSES)} if variant == "fcnn" else {"classifier_dir": classifier_dir}
    if data == "coco":
        extra["backbone_from_classifier"] = True
    module = fit_explainer(datamodule, tmp_path, variant=variant, max_epochs=2, width=4, lr=1e-3, progress=False,
                           accelerator="cpu", callbacks=[watch], **extra)
    description = json.loads((tmp_path / "explainer.json").read_text())
    assert description["variant"] == variant and description["arch"] == "light"
    assert description["num_classes"] == len(CLASSES) and description["epochs"] == 2
    assert description["hyper_parameters"]["lr"] == 1e-3
    if variant != "fcnn":
        assert watch.modes == {False} and watch.grads == {False}  # frozen and in eval mode while training
        after = _state(module.classifier)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert description["classifier_dir"] == str(classifier_dir)
        assert description["class_names"] == list(CLASSES)
    network, _ = load_trained_explainer(tmp_path)
    images = torch.stack([s.image for s in splits["test"]])
    mean, std = (torch.tensor(description[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = module.eval()(images)
        torch.testing.assert_close(network((images - mean) / std), expected)
    classifier = load_trained_classifier(classifier_dir)[0]
    maps = methods.build(variant, classifier, checkpoint=str(tmp_path)).attribute(images, torch.tensor([[0, 5]] * 4))
    torch.testing.assert_close(maps, expected[:, [0, 5]].sigmoid())
    other = "fcnn" if variant != "fcnn" else "explainer"
    with pytest.raises(ValueError, match=f"holds a '{variant}' explainer"):
        methods.build(other, classifier, checkpoint=str(tmp_path))
    reloaded = ExplainerModule.load_from_checkpoint(next((tmp_path / "checkpoints").glob("*.ckpt")),
                                                    map_location="cpu", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(images), expected)


def test_method_needs_a_trained_explainer_and_maps_per_class_sigmoids():
    classifier = build_classifier("small_cnn", 4, width=4)
    with pytest.raises(ValueError, match="checkpoint directory|trained explainer"):
        methods.build("explainer", classifier)
    torch.manual_seed(0)
    network = build_explainer("light", 4, width=4).eval()
    images = torch.rand(3, 3, 24, 20)
    method = methods.build("rt_saliency", classifier, explainer=network)
    maps = method.attribute(images, torch.tensor([[2, 0], [1, -1], [3, 3]]))
    with torch.no_grad():
        probs = network(classifier.normalize(images)).sigmoid()
    torch.testing.assert_close(maps[0], probs[0, [2, 0]])
    torch.testing.assert_close(maps[2], probs[2, [3, 3]])
    assert maps[1, 1].isnan().all() and maps.nan_to_num(0.5).min() >= 0 and maps.nan_to_num(0.5).max() <= 1
    passes = method.passes(24, 20)  # one forward of the explainer network, the unit bench speed times
    assert (passes.forward, passes.backward) == (1, 0)
    with torch.no_grad():
        torch.testing.assert_close(passes.network(images).sigmoid(), probs)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, 4)


def test_train_explainer_command_fits_from_a_preset_on_a_voc_tree(splits, classifier_dir, tmp_path, capsys):
    from saliencylab.cli import main

    root = tmp_path / "voc"
    write_voc(root, splits["train"] + splits["val"], list(CLASSES),
              {"train": [s.image_id for s in splits["train"]], "val": [s.image_id for s in splits["val"]]})
    out = tmp_path / "explainer"
    command = ["train-explainer", "--classifier", str(classifier_dir), "--out", str(out), "--voc", str(root),
               "--epochs", "1", "--image-size", "32", "--set", "lr=0.002", "--no-progress",
               "--device", "cpu"]
    assert main(command) == 0
    description = json.loads((out / "explainer.json").read_text())
    assert description["epochs"] == 1 and description["variant"] == "explainer"
    assert description["width"] == 4  # the classifier's: the synthetic preset starts from its weights
    assert description["hyper_parameters"]["lr"] == 0.002  # --set overrides the preset's 1e-2
    assert description["hyper_parameters"]["backbone_from_classifier"] is True  # the synthetic preset's setting
    assert "methods.build('explainer'" in capsys.readouterr().out
    assert main(["train-explainer", "--classifier", str(classifier_dir), "--out", str(out)]) == 2
    assert "exactly one data source" in capsys.readouterr().err
    assert main([*command, "--set", "widht=4"]) == 2
    assert "--set widht: not explainer settings; known: " in capsys.readouterr().err


@pytest.mark.parametrize("width", [16, 32])  # 32: fit_classifier's default
def test_synthetic_preset_takes_the_width_of_the_classifier_it_starts_from(width, voc_datamodule, tmp_path):
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=width)
    classifier_dir = save_classifier(classifier, tmp_path / "classifier", arch="small_cnn", width=width)
    settings = {**presets.load("explainer", "synthetic")["explainer"], "max_epochs": 1}
    module = fit_explainer(voc_datamodule, tmp_path / "explainer", classifier_dir=classifier_dir, progress=False,
                           accelerator="cpu", **settings)
    assert json.loads((tmp_path / "explainer" / "explainer.json").read_text())["width"] == width
    assert module.explainer.features[0].out_channels == width
    with pytest.raises(ValueError, match=f"width=8 but .* small_cnn of width {width}.* set width={width}"):
        ExplainerModule(classifier_dir=str(classifier_dir), width=8, backbone_from_classifier=True)
