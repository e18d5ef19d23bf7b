"""In-model explainer-classifier (Rio-Torto et al. 2020): networks, losses, three-phase training, polygon data."""
import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saliencylab import methods, presets
from saliencylab.bench.reproduce_004 import POLYGONS_004
from saliencylab.data.formats import load_dataset
from saliencylab.data.inmodel import InModelDataset, stratified_split, write_split
from saliencylab.data.module import SaliencyDataModule
from saliencylab.data.polygons import CLASS_NAMES, PolygonConfig, polygon_lines, render, write_polygons
from saliencylab.methods.base import captured_output
from saliencylab.models.inmodel import Explainer, InModelNet, ResNetMod, VGGMod, build_inmodel_classifier, pooled
from saliencylab.models.load import load_trained_classifier
from saliencylab.training.inmodel import InModelModule, fit_inmodel
from saliencylab.training.losses import (balanced_class_weights, contiguity, explanation_loss, joint_loss,
                                         sparsity)
from saliencylab.types import BACKGROUND


def test_the_map_is_average_pooled_and_multiplied_at_every_vgg_stage():
    torch.manual_seed(0)
    vgg = VGGMod(3, widths=(4, 4, 4, 4)).eval()
    images, explanation = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    x = images
    for i, stage in enumerate(vgg.stages):  # by hand: AvgPool2d(2) once more before each stage's product
        x = stage(x)
        assert pooled(explanation, x).shape == (2, 1, 32 >> i, 32 >> i)
        torch.testing.assert_close(pooled(explanation, x), F.avg_pool2d(explanation, 2 ** i))
        x = F.max_pool2d(x * F.avg_pool2d(explanation, 2 ** i), 2)
    torch.testing.assert_close(vgg(images, explanation), vgg.head(x.amax((2, 3))))
    zero = torch.zeros(2, 1, 32, 32)
    torch.testing.assert_close(vgg(images, zero), vgg.head(torch.zeros(2, 4)))  # nothing passes a black map


def test_resnet_mod_multiplies_the_stem_and_every_block():
    torch.manual_seed(0)
    resnet = ResNetMod(3, 18).eval()
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(resnet(images, torch.ones(2, 1, 64, 64)), resnet.net(images))  # all-ones map: plain
    explanation = torch.rand(2, 1, 64, 64)
    net, seen = resnet.net, []
    x = net.maxpool(net.relu(net.bn1(net.conv1(images)))) * F.avg_pool2d(explanation, 4)
    for layer, stride in ((net.layer1, 4), (net.layer2, 8), (net.layer3, 16), (net.layer4, 32)):
        for block in layer:
            x = block(x) * F.avg_pool2d(explanation, stride)
            seen.append(x.shape[-1])
    assert seen == [16, 16, 8, 8, 4, 4, 2, 2]
    torch.testing.assert_close(resnet(images, explanation), net.fc(x.mean((2, 3))))
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetMod(3, 101)


@pytest.mark.parametrize("classifier, channels, side", [("vgg", 4, 8), ("resnet18", 512, 2), ("resnet50", 2048, 2)])
def test_the_cam_layer_of_every_in_model_classifier_runs_once(classifier, channels, side):
    """ResNetMod runs layer4's blocks one by one: a CAM must read the last block (layer4 itself never runs)."""
    torch.manual_seed(0)
    wrapped = build_inmodel_classifier(2, classifier, explainer_widths=(2, 2, 2), vgg_widths=(4, 4, 4, 4)).eval()
    images = torch.rand(2, 3, 64, 64)
    with captured_output(wrapped.layer("features")) as outputs:
        wrapped(images)
    assert [tuple(o.shape) for o in outputs] == [(2, channels, side, side)]
    maps = methods.build("guided_gradcam", wrapped).attribute(images, torch.tensor([[1], [0]]))
    assert maps.shape == (2, 1, 64, 64) and maps.isfinite().all() and maps.abs().sum() > 0


def test_explainer_starts_near_an_all_white_map_and_keeps_the_input_size():
    explainer = Explainer((4, 4, 4), init_bias=3.0).eval()
    torch.nn.init.zeros_(explainer.head.weight)
    torch.nn.init.zeros_(explainer.head.bias)
    out = explainer(torch.rand(2, 3, 30, 26))
    assert out.shape == (2, 1, 30, 26)
    torch.testing.assert_close(out, torch.full_like(out, math.tanh(3.0)))
    net = InModelNet(2, "vgg", explainer_widths=(2, 2, 2), vgg_widths=(2, 2, 2, 2))
    logits, explanation = net.logits_and_map(torch.rand(1, 3, 16, 16))
    assert logits.shape == (1, 2) and 0 <= explanation.min() and explanation.max() < 1


def test_losses_known_values():
    z = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]]])  # (1,1,2,3)
    assert sparsity(z).item() == pytest.approx(0.5)
    # vertical: |0-0|,|1-1|,|1-0| over 3; horizontal: 1,1,1,0 over 4
    assert contiguity(z).item() == pytest.approx(1 / 3 + 3 / 4)
    assert explanation_loss(z, beta=0.9).item() == pytest.approx(0.9 * 0.5 + 0.1 * (1 / 3 + 3 / 4))
    mask = torch.tensor([[[[0, 1, 1], [0, 1, 1]]]])  # outside: the first column, where ẑ = 0 -> then 1
    assert explanation_loss(z, 0.9, 2.0, mask).item() == pytest.approx(explanation_loss(z, 0.9).item())
    mask = torch.tensor([[[[1, 0, 1], [1, 1, 1]]]])  # outside: one pixel with ẑ = 1
    assert explanation_loss(z, 0.9, 2.0, mask).item() == pytest.approx(explanation_loss(z, 0.9).item()
                                                                         + 2.0 / (1 + 1e-6))
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    expected = 0.75 * F.cross_entropy(logits, labels) + 0.25 * 0.5
    assert joint_loss(logits, labels, torch.tensor([0.25, 0.75]), 0.75).item() == pytest.approx(expected.item())
    torch.testing.assert_close(balanced_class_weights(torch.tensor([0, 0, 0, 1]), 3), torch.tensor([4 / 9, 4 / 3, 0]))


def test_polygons_and_their_layout(tmp_path):
    lines = polygon_lines(5, 2, (0.0, 0.0), 1.0, 0.0)  # a pentagram: vertex i joined to i + 2
    assert len(lines) == 5 and lines[0][1] == pytest.approx((math.cos(4 * math.pi / 5), math.sin(4 * math.pi / 5)))
    config = PolygonConfig(image_size=48, trainval=12, test=4, radius=(4, 8), shapes=3, seed=1)
    root = write_polygons(tmp_path / "polygons", config, progress=False)
    assert (root / "trainval" / "data.csv").read_text().startswith("imageID,label\n")
    dataset = load_dataset(f"inmodel:{root}", class_names=CLASS_NAMES, image_size=48, options={"split": "trainval"})
    assert len(dataset) == 12
    for i in range(len(dataset)):
        sample = dataset[i]
        label = int(sample.labels.argmax())
        assert sample.labels.sum() == 1 and len(sample.boxes) == label  # one target instance when present
        assert (sample.segmentation == label).any() == bool(label) and sample.image.shape == (3, 48, 48)
        if label:  # the mask is the filled box
            x1, y1, x2, y2 = sample.boxes[0].long().tolist()
            assert (sample.segmentation[y1:y2 + 1, x1:x2 + 1] == 1).all() and (sample.segmentation == 1).sum() == \
                (x2 - x1 + 1) * (y2 - y1 + 1)
    train, val = (InModelDataset(root, s, CLASS_NAMES) for s in ("train", "val"))
    assert sorted(train.ids + val.ids) == dataset.ids and not set(train.ids) & set(val.ids)


def test_masks_are_thresholded_at_one_half_not_truncated(tmp_path):
    mask = np.zeros((4, 4), dtype=bool)
    write_split(tmp_path / "test", [("a", 1, np.full((4, 4, 3), 255, np.uint8), mask, [])])
    grey = np.array([[255, 200, 128, 127]] * 4, dtype=np.uint8)  # JPEG-like edges around a white object
    Image.fromarray(grey).save(tmp_path / "test" / "masks" / "1" / "a_mask.png")
    sample = InModelDataset(tmp_path, "test", ("horse", "zebra"))[0]
    assert sample.segmentation[0].tolist() == [1, 1, 1, BACKGROUND]
    assert sample.boxes.tolist() == []  # the annotations file lists no box
    (tmp_path / "test" / "data.csv").write_text("imageID,label\na,2\n")
    with pytest.raises(ValueError, match="has label 2, but there are 2 classes"):
        InModelDataset(tmp_path, "test", ("horse", "zebra"))


def test_stratified_split_holds_out_each_class_share():
    labels = [0] * 8 + [1] * 4
    kept, held = stratified_split(labels, 0.25)
    assert sorted(kept + held) == list(range(12)) and [labels[i] for i in held].count(0) == 2
    assert stratified_split(labels, 0.25) == (kept, held)


@pytest.fixture(scope="module")
def polygon_data(tmp_path_factory):
    root = write_polygons(tmp_path_factory.mktemp("poly"), PolygonConfig(image_size=32, trainval=16, test=4,
                                                                          radius=(4, 7), shapes=2, seed=3),
                          progress=False)
    datasets = [InModelDataset(root, split, CLASS_NAMES) for split in ("train", "val", "test")]
    return SaliencyDataModule(*datasets, batch_size=4)


NETWORK = {"classifier": "vgg", "explainer_widths": (4, 4, 4), "vgg_widths": (4, 4, 4, 4), "init_bias": 3.0}


def parameters(state: dict, prefix: str, module: torch.nn.Module) -> dict:
    names = {f"{prefix}.{n}" for n, _ in module.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


@pytest.mark.slow
def test_three_phases_freeze_what_they_must(polygon_data, tmp_path):
    L.seed_everything(0, verbose=False)
    initial = InModelModule(2, phase=1, class_names=CLASS_NAMES, loss="hybrid", **NETWORK).net.state_dict()
    classifier, description = fit_inmodel(polygon_data, tmp_path / "run", num_classes=2, class_names=CLASS_NAMES,
                                          loss="hybrid", epochs=(1, 1, 1), lr_clf=(0.01, 0.0, 0.01),
                                          lr_expl=(0.0, 0.01, 0.01), progress=False, accelerator="cpu", seed=0,
                                          **NETWORK)
    states = [InModelModule.load_from_checkpoint(next((tmp_path / "run" / f"phase{p}" / "checkpoints").glob("epoch*")),
                                                 weights_only=True).net.state_dict() for p in (1, 2, 3)]
    net = classifier.model

    def changed(before, after, prefix, module):
        a, b = parameters(before, prefix, module), parameters(after, prefix, module)
        return {k for k in a if not torch.equal(a[k], b[k])}

    assert not changed(initial, states[0], "explainer", net.explainer)  # phase 1: explainer frozen
    for key in ("explainer.norm.running_mean", "explainer.norm.running_var"):  # ... and in eval mode
        assert torch.equal(initial[key], states[0][key])
    assert changed(initial, states[0], "classifier", net.classifier)
    assert not changed(states[0], states[1], "classifier", net.classifier)  # phase 2: classifier frozen
    assert changed(states[0], states[1], "explainer", net.explainer)
    assert changed(states[1], states[2], "explainer", net.explainer)  # phase 3: both train
    assert changed(states[1], states[2], "classifier", net.classifier)
    assert [p["phase"] for p in description["phases"]] == [1, 2, 3] and 0 <= description["test"]["accuracy"] <= 1
    for key, value in states[2].items():  # the saved network is phase 3's best
        torch.testing.assert_close(net.state_dict()[key], value)
    loaded, saved = load_trained_classifier(tmp_path / "run")
    assert saved["arch"] == "inmodel" and saved["training"]["loss"] == "hybrid"
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), classifier(images))
    maps = methods.build("inmodel", loaded).attribute(images, torch.tensor([[0, 1], [1, -1]]))
    torch.testing.assert_close(maps[:, 0], net.explain(images)[:, 0])
    torch.testing.assert_close(methods.build("inmodel", loaded, checkpoint=str(tmp_path / "run")).attribute(images, 0),
                               maps[:, :1])
    assert maps[1, 1].isnan().all()
    with torch.no_grad():  # the unit bench speed times: the explainer forward the maps come from
        torch.testing.assert_close(methods.build("inmodel", loaded).passes(32, 32).network(images), net.explain(images))
    with pytest.raises(ValueError, match="needs an in-model network"):
        methods.build("inmodel", load_trained_classifier(tmp_path / "run")[0].__class__(torch.nn.Identity()))


def test_the_polygons_preset_network_sees_the_image_at_initialisation():
    """The network of reproduce 004 must start from logits that depend on the image, or SGD finds no signal. The
    VGG-like classifier (eight unnormalised convolutions at PyTorch's default init) gives the same logits to
    every polygon image to 1e-5 and stayed at chance; ResNet-18 (the preset's, the paper's) does not."""
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(render(rng, POLYGONS_004)[0]).permute(2, 0, 1).float() / 255
                          for _ in range(8)])
    settings = presets.load("inmodel", "polygons")["inmodel"]

    def spread(**network) -> float:  # spread of the logit margin across images, relative to the logits' size
        torch.manual_seed(0)
        with torch.no_grad():
            logits = InModelNet(2, init_bias=settings["init_bias"], explainer_widths=settings["explainer_widths"],
                                **network).eval()(images)
        return float((logits[:, 1] - logits[:, 0]).std() / logits.abs().mean())

    assert spread(classifier=settings["classifier"]) > 0.01  # 0.044 at the preset: 40 times the VGG-like bound
    assert spread(classifier="vgg", vgg_widths=(16, 32, 64, 64)) < 1e-3  # the previous preset's network


def test_phase_two_freezes_the_classifier_but_its_batchnorm_keeps_learning_statistics():
    module = InModelModule(2, "resnet18", phase=2, explainer_widths=(2, 2, 2))
    assert not any(p.requires_grad for p in module.net.classifier.parameters())
    assert all(p.requires_grad for p in module.net.explainer.parameters())
    module.train()  # what Lightning does each epoch
    before = module.net.classifier.net.bn1.running_mean.clone()
    module.net(torch.rand(2, 3, 32, 32))
    assert not torch.equal(before, module.net.classifier.net.bn1.running_mean)
    groups = module.configure_optimizers()
    assert [g["lr"] for g in groups["optimizer"].param_groups] == [0.01]  # only the explainer's group
    assert isinstance(groups["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert "lr_scheduler" not in InModelModule(2, "vgg", phase=3, explainer_widths=(2, 2, 2),
                                               vgg_widths=(2, 2, 2, 2)).configure_optimizers()


def test_phase_two_with_frozen_classifier_batchnorm_keeps_phase_one_statistics():
    """phase2_classifier_bn="frozen": a phase-2 step leaves the classifier exactly as it was (weights, BatchNorm
    statistics, so the same logits for the same map) while the explainer and its own BatchNorm move."""
    torch.manual_seed(0)
    module = InModelModule(2, "resnet18", phase=2, explainer_widths=(2, 2, 2), phase2_classifier_bn="frozen")
    module.train()  # what Lightning does each epoch, then the hook
    module.on_train_epoch_start()
    assert not module.net.classifier.training and module.net.explainer.training
    classifier_before = {k: v.clone() for k, v in module.net.classifier.state_dict().items()}
    explainer_before = {k: v.clone() for k, v in module.net.explainer.state_dict().items()}
    images, probe = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        logits_before = module.net.classifier(images, probe)
    optimizer = module.configure_optimizers()["optimizer"]
    logits, explanation = module.net.logits_and_map(images)
    (F.cross_entropy(logits, torch.tensor([0, 1, 0, 1])) + explanation.mean()).backward()
    optimizer.step()
    for key, value in module.net.classifier.state_dict().items():
        assert torch.equal(value, classifier_before[key]), key
    with torch.no_grad():
        torch.testing.assert_close(module.net.classifier(images, probe), logits_before, rtol=0, atol=0)
    for key in ("norm.running_mean", "norm.running_var", "head.weight", "norm.bias"):
        assert not torch.equal(module.net.explainer.state_dict()[key], explainer_before[key]), key
    with pytest.raises(ValueError, match="phase2_classifier_bn must be one of"):
        InModelModule(2, "resnet18", phase=2, explainer_widths=(2, 2, 2), phase2_classifier_bn="eval")


@pytest.mark.slow
def test_precise_bn_gives_the_training_set_statistics_and_phase_two_moves_the_map(polygon_data, tmp_path):
    """A phase 2 alone (initial_state, epochs 0/1/0) with the classifier frozen in eval mode and precise BatchNorm:
    the classifier comes out exactly as it went in (weights and statistics); the explainer's head statistics are
    those of its output over the training set with the final weights (one batch of all 12 training images, so the
    batch statistics are unique); the validation map is no longer the uniform tanh(init_bias) of the start."""
    data = SaliencyDataModule(polygon_data.train, polygon_data.val, batch_size=12)
    network = {"classifier": "resnet18", "explainer_widths": (4, 4, 4), "init_bias": 2.0}
    start = InModelModule(2, phase=1, class_names=CLASS_NAMES, **network).net.state_dict()
    start["classifier.net.fc.bias"] += 1.0  # not what fit_inmodel's own seeded initialisation gives
    start["classifier.net.bn1.running_mean"] += 0.5
    classifier, _ = fit_inmodel(data, tmp_path / "run", num_classes=2, class_names=CLASS_NAMES, loss="hybrid",
                                epochs=(0, 1, 0), progress=False, accelerator="cpu", initial_state=start,
                                phase2_classifier_bn="frozen", precise_bn=True, **network)
    net = classifier.model.eval()
    for key, value in net.classifier.state_dict().items():
        assert torch.equal(value, start[f"classifier.{key}"]), key
    head = []
    hook = net.explainer.head.register_forward_hook(lambda module, inputs, output: head.append(output))
    with torch.no_grad():
        (batch,) = data.train_dataloader()
        net.explainer(batch.images)
    hook.remove()
    torch.testing.assert_close(net.explainer.norm.running_mean, head[0].mean().reshape(1))
    torch.testing.assert_close(net.explainer.norm.running_var, head[0].var().reshape(1))
    with torch.no_grad():
        maps = net.explain(next(iter(data.val_dataloader())).images)
    assert float(maps.std()) > 0.05 and float((maps - math.tanh(2.0)).abs().max()) > 0.3


def test_imagenet_hvz_from_an_imagenet_tree(tmp_path):
    from saliencylab.data.imagenet_hvz import CLASS_NAMES as HVZ, SYNSETS, build_imagenet_hvz
    from saliencylab.data.imagenet_metadata import write_box_xml

    for wnid in SYNSETS:
        for i in range(10):
            stem = f"{wnid}_{i}"
            (tmp_path / "train" / wnid).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 30, 3), 20 * i, np.uint8)).save(tmp_path / "train" / wnid / f"{stem}.JPEG")
            if i < 7:  # three images of each class have no boxes
                write_box_xml(tmp_path / "boxes" / wnid / f"{stem}.xml", wnid, stem, 30, 20, [[2, 3, 10, 12]], wnid)
    root = build_imagenet_hvz(tmp_path / "train", tmp_path / "boxes", tmp_path / "hvz", progress=False)
    test, trainval = (InModelDataset(root, s, HVZ) for s in ("test", "trainval"))
    assert len(test) == 2 and len(trainval) == 12  # round(0.149 · 7) = 1 test image per class
    train, val = (InModelDataset(root, s, HVZ) for s in ("train", "val"))
    assert len(val) == 2 and len(train) == 10  # round(0.2 · 6) = 1 val image per class, from the split column
    sample = test[0]
    assert sample.boxes.tolist() == [[2.0, 3.0, 10.0, 12.0]] and sample.image.shape == (3, 20, 30)
    label = int(sample.labels.argmax())
    assert (sample.segmentation == label).sum() == 9 * 10 and (sample.segmentation[3:13, 2:11] == label).all()
    with pytest.raises(FileNotFoundError, match="n02389026"):
        build_imagenet_hvz(tmp_path / "nothing", tmp_path / "boxes", tmp_path / "out", progress=False)
