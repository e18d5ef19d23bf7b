"""CASME masker (spec 001): losses by hand, the network, infillers, the CA pool, tiny FIX / CA fits, the Method."""
import json
import math
import random

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from saliencylab import methods, presets
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, generate
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.models.load import load_trained_classifier
from saliencylab.models.masker import (Masker, classifier_features, default_layers, layer_channels,
                                      load_trained_masker)
from saliencylab.models.zoo import build_classifier
from saliencylab.perturb import blur_zero_padded
from saliencylab.training.infill import build_infiller
from saliencylab.training.masker import (MaskerModule, SnapshotPool, epoch_batches, fit_masker, lr_factor, masker_loss,
                                         masker_tv, single_labels)

LAYERS = ["features.13", "features"]  # the small CNN's stride-4 and stride-8 stages


@pytest.fixture(scope="module")
def splits():
    scenes = generate(SyntheticConfig(image_size=32, train=40, val=4, test=12, seed=3))
    return {k: [s for s in v if s.labels.sum() == 1] for k, v in scenes.items()}  # single-label scenes only


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    """The tiny fits read generated ImageNet-format fixtures (class folders, bbox XML, metadata JSON)."""
    root = write_synthetic_imagenet(tmp_path_factory.mktemp("imagenet"),
                                    SyntheticConfig(image_size=32, train=36, val=6, test=6, seed=3),
                                    num_per_class_in_train_val=1, progress=False)
    train = ImageNetDataset(root / "imagenet" / "metadata" / "train.json", size=32)
    assert len(train) >= 8 and len({int(s.labels.argmax()) for s in train}) > 1
    return SaliencyDataModule(InMemory(train), batch_size=4)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _entropy_by_hand(logits: torch.Tensor) -> torch.Tensor:
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    return -(p * p.log()).sum(1)


def test_masker_loss_terms_by_hand():
    labels = torch.tensor([0, 1, 2, 0])
    logits_in = torch.tensor([[3.0, 0, 0], [2, 1, 0], [0, 0, 1], [0, 2, 1]])  # in-correct: rows 0 and 2
    logits_out = torch.tensor([[0.0, 1, 0], [0, 2, 1], [1, 0, 0], [0, 0.5, 1]])  # wrong: rows 0, 2, 3
    clean_correct = torch.tensor([True, True, False, True])  # fooled = correct and wrong out: rows 0 and 3
    areas = torch.tensor([0.2, 0.4, 0.6, 0.8])
    mask = areas.view(4, 1, 1, 1).expand(4, 1, 4, 4).clone().requires_grad_(True)  # constant masks
    total, terms = masker_loss(logits_in, logits_out, labels, clean_correct, mask)
    ce = (torch.logsumexp(logits_in, 1) - logits_in[torch.arange(4), labels]).mean()
    torch.testing.assert_close(terms["in_ce"], ce)
    torch.testing.assert_close(terms["in_area"], torch.tensor(-((1 - 0.2) + (1 - 0.6)) / 4))  # rows 0, 2 only
    entropies = _entropy_by_hand(logits_out)
    torch.testing.assert_close(terms["out_entropy"], -(entropies[0] + entropies[1] + entropies[3]) / 4)
    torch.testing.assert_close(terms["out_area"], torch.tensor(-((1 - 0.2) + (1 - 0.8)) / 4))  # rows 0, 3 only
    tv = 0.3 * 16 * areas.square().sum() / (2 * 4)  # constant masks: only the border term (4 sides of 4 pixels)
    torch.testing.assert_close(terms["tv"], tv)
    expected = ce - 0.3 + 1e-3 * tv + terms["out_entropy"] + 10 * -0.25 + 1e-3 * tv  # TV counted twice
    torch.testing.assert_close(total, expected)
    # the area penalties reach only the images they are applied to (R_in: 0, 2; R_out: 0, 3)
    (terms["in_area"] + terms["out_area"]).backward()
    per_image = mask.grad.sum(dim=(1, 2, 3))
    torch.testing.assert_close(per_image, torch.tensor([2.0, 0.0, 1.0, 1.0]) / 4)


def test_tv_with_border_penalty_by_hand_on_a_3x3_mask():
    m = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.0], [1.0, 0.0, 0.0]]).view(1, 1, 3, 3)
    # horizontal squared differences 2 + 0.5 + 1, vertical 1 + 0.5 + 0, border squares 1 + 1 + 1 + 0
    torch.testing.assert_close(masker_tv(m), torch.tensor((3.5 + 1.5 + 0.3 * 3) / 2))
    two = torch.cat([m, torch.zeros_like(m)])  # sums over the batch, divided by 2N
    torch.testing.assert_close(masker_tv(two), torch.tensor((3.5 + 1.5 + 0.3 * 3) / 4))
    torch.testing.assert_close(masker_tv(m, border_penalty=0.0), torch.tensor(5.0 / 2))


def test_single_labels_reject_multi_label_rows():
    assert single_labels(torch.tensor([[0.0, 1, 0], [1, 0, 0]])).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"single-label images .* \[1, 2\]"):
        single_labels(torch.tensor([[0.0, 1, 0], [1, 1, 0]]))


def test_masker_shapes_ranges_head_resolution_and_init():
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", 6, width=4).eval()
    assert layer_channels(classifier, LAYERS) == [16, 32]
    masker = Masker(LAYERS, [16, 32], channels=8).eval()
    assert masker.head.in_channels == 16
    torch.testing.assert_close(masker.branches[0][0].weight.std(), torch.tensor(math.sqrt(2 / 8)), rtol=0.2, atol=0)
    for size in ((32, 30), (24, 20)):
        images = torch.rand(2, 3, *size)
        _, features = classifier_features(classifier, classifier.normalize(images), LAYERS)
        mask = masker(features, size)
        assert mask.shape == (2, 1, *size) and 0 < mask.min() and mask.max() < 1
        torch.testing.assert_close(masker(features, size, logits=True).sigmoid(), mask)
    blocks = mask[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert torch.equal(mask, blocks)  # head at input/4: constant on 4x4 blocks (24x20 = 6x5 blocks)
    coarse = Masker(["features"], [32], head_stride=None)  # head at the layer's own 3x2 grid
    assert torch.equal(coarse(features[1:], (24, 20))[..., ::8, ::10].repeat_interleave(10, -1)
                       .repeat_interleave(8, -2), coarse(features[1:], (24, 20)))
    with pytest.raises(ValueError, match="distinct layers"):
        Masker(["features", "features"], [32, 32])
    with pytest.raises(ValueError, match="must run once per forward and output a \\(B,C,h,w\\)"):
        classifier_features(classifier, torch.rand(1, 3, 32, 32), ["head"])


def test_default_layers_are_resnet_layer3_and_layer4():
    with torch.device("meta"):  # shapes only, nothing computed
        resnet = build_classifier("resnet50", 1000)
        assert default_layers(resnet) == ("layer3", "layer4")
        assert layer_channels(resnet, default_layers(resnet)) == [1024, 2048]
    with pytest.raises(ValueError, match="pass layers=.*features"):
        default_layers(build_classifier("small_cnn", 3, width=4))


def test_gumbel_head_samples_in_training_and_thresholds_in_eval():
    torch.manual_seed(0)
    features = [torch.randn(2, 8, 4, 4)]
    hard = Masker(["x"], [8], gumbel="hard", head_stride=None)
    torch.manual_seed(1)
    sample = hard(features, (8, 8))
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    sample.sum().backward()
    assert hard.head.weight.grad.abs().sum() > 0  # straight-through gradient
    torch.manual_seed(1)
    assert torch.equal(hard(features, (8, 8)), sample)  # seeded
    hard.eval()
    with torch.no_grad():
        torch.testing.assert_close(hard(features, (8, 8)), (hard(features, (8, 8), logits=True) > 0).float())
    soft = Masker(["x"], [8], gumbel="soft", head_stride=None)
    soft.load_state_dict(hard.state_dict())
    values = soft(features, (8, 8))
    assert 0 <= values.min() and values.max() <= 1 and not set(values.unique().tolist()) <= {0.0, 1.0}


def test_area_prior_and_class_embedding_channels():
    torch.manual_seed(0)
    masker = Masker(["x", "y"], [8, 4], area_prior=True, class_embedding=3, num_classes=6, raw_layers=["y"]).eval()
    assert masker.branches[0][0].in_channels == 8 + 1 + 3 and masker.head.in_channels == 64 + 4 + 1 + 3
    features = [torch.randn(2, 8, 4, 4), torch.randn(2, 4, 2, 2)]
    area, classes = torch.tensor([0.3, 0.3]), torch.tensor([1, 4])
    mask = masker(features, (16, 16), area=area, classes=classes)
    assert not torch.allclose(mask, masker(features, (16, 16), area=area + 0.4, classes=classes))
    assert not torch.allclose(mask, masker(features, (16, 16), area=area, classes=classes.flip(0)))
    with pytest.raises(ValueError, match="area-prior channel"):
        masker(features, (16, 16), classes=classes)
    rebuilt = Masker(**json.loads(json.dumps(masker.config())))
    rebuilt.load_state_dict(masker.state_dict())
    torch.testing.assert_close(rebuilt.eval()(features, (16, 16), area=area, classes=classes), mask)


class Inpainter(nn.Module):
    """Fills the hole with grey plus a learned-looking constant; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.1))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, holed: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        self.calls.append((holed, hole))
        return holed + hole * (0.5 + self.bias)


def test_infillers_compose_without_remasking():
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    mu, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    images = torch.rand(2, 3, 8, 8)
    x = (images - mu) / sd
    m = torch.rand(2, 1, 8, 8, requires_grad=True)
    x_in, x_out = build_infiller("none", mean=mean, std=std)(x, m)
    assert torch.equal(x_in, x * m) and torch.equal(x_out, x * (1 - m))  # zero = mean colour in normalised space
    blur = blur_zero_padded(x, 1.0)
    x_in, x_out = build_infiller("blur", mean=mean, std=std, sigma=1.0)(x, m)
    torch.testing.assert_close(x_in, x * m + blur * (1 - m))
    torch.testing.assert_close(x_out, x * (1 - m) + blur * m)
    x_out.sum().backward()  # the gradient w.r.t. m flows only through the composition
    torch.testing.assert_close(m.grad, (blur - x).sum(1, keepdim=True))
    m.grad = None
    ones = torch.ones(2, 1, 8, 8)
    x_in, noise = build_infiller("noise", mean=mean, std=std, seed=5)(x, ones)
    assert torch.equal(x_in, x) and torch.equal(noise, build_infiller("noise", mean=mean, std=std, seed=5)(x, ones)[1])
    pixels = noise * sd + mu  # uniform noise in image space
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0.2
    generator = Inpainter()
    infiller = build_infiller("generator", mean=mean, std=std, generator=generator, sides=["out"]).train()
    assert not generator.training and not generator.bias.requires_grad
    x_in, x_out = infiller(x, m)
    assert torch.equal(x_in, x * m) and len(generator.calls) == 1  # mask-in not infilled
    holed, hole = generator.calls[0]
    torch.testing.assert_close(holed, images * (1 - m.detach()))
    assert torch.equal(hole, m.detach())
    filled = (images * (1 - m.detach()) + m.detach() * 0.6 - mu) / sd
    torch.testing.assert_close(x_out, x * (1 - m) + filled * m)
    x_out.sum().backward()
    torch.testing.assert_close(m.grad, (filled - x).sum(1, keepdim=True))
    build_infiller("generator", mean=mean, std=std, generator=generator)(x, m)
    torch.testing.assert_close(generator.calls[-2][1], 1 - m.detach())  # mask-in: the hole is 1 - m
    with pytest.raises(ValueError, match="needs generator"):
        build_infiller("blur", mean=mean, std=std, generator=generator)
    with pytest.raises(ValueError, match="infiller must be one of"):
        build_infiller("cagan", mean=mean, std=std)


def test_snapshot_pool_caps_its_size_and_replaces_seeded_slots():
    layer = nn.Linear(1, 1, bias=False)
    pool = SnapshotPool(size=3, seed=7)
    for value in range(5):
        layer.weight.data.fill_(value)
        pool.add(layer)
    rng = random.Random(7)
    expected = [0.0, 1.0, 2.0]
    for value in (3.0, 4.0):
        expected[rng.randrange(3)] = value
    assert len(pool) == 3 and [float(s["weight"]) for s in pool.snapshots] == expected
    layer.weight.data.fill_(9)  # snapshots are copies
    assert 9.0 not in [float(s["weight"]) for s in pool.snapshots]
    assert float(pool.sample()["weight"]) == expected[rng.randrange(3)]  # rng.choice over three slots
    with pytest.raises(RuntimeError, match="empty"):
        SnapshotPool(2).sample()


def test_scorer_follows_mode_and_historic_setting(classifier_dir):
    fix = MaskerModule(str(classifier_dir), layers=LAYERS, channels=8)
    assert fix.scorer() == (fix.classifier.model, False)
    with pytest.raises(ValueError, match="0 for mode 'fix'"):
        MaskerModule(str(classifier_dir), layers=LAYERS, prob_historic=0.5)
    live = MaskerModule(str(classifier_dir), mode="ca", layers=LAYERS, channels=8)
    assert live.scorer() == (live.classifier.model, True)
    paper = MaskerModule(str(classifier_dir), mode="ca", layers=LAYERS, channels=8, prob_historic=1.0)
    paper.pool.add(paper.classifier.model)
    snapshot = paper.classifier.model.head.weight.detach().clone()
    with torch.no_grad():
        paper.classifier.model.head.weight.add_(1.0)  # the live classifier moves on
    scorer, update = paper.scorer()
    assert scorer is not paper.classifier.model and not update and not scorer.training
    assert torch.equal(scorer.head.weight, snapshot) and not scorer.head.weight.requires_grad
    released = MaskerModule(str(classifier_dir), mode="ca", layers=LAYERS, channels=8, prob_historic=1.0,
                            historic_mode="released")
    assert released.scorer() == (released.classifier.model, False)


def test_masks_read_detached_features(classifier_dir):
    module = MaskerModule(str(classifier_dir), mode="ca", layers=LAYERS, channels=8)
    assert module.classifier.training and all(p.requires_grad for p in module.classifier.parameters())
    module(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in module.classifier.parameters())  # nothing reaches the classifier
    assert all(p.grad is not None for p in module.masker.parameters())


def test_lr_schedule_and_epoch_fraction():
    assert [lr_factor(e, 2) for e in range(5)] == [1.0, 1.0, 0.1, 0.1, 0.1 ** 2]
    assert lr_factor(59, 20) == pytest.approx(1e-2) and lr_factor(7, 0) == 1.0
    assert (epoch_batches(10, 0.2), epoch_batches(10, 1.0), epoch_batches(3, 0.2)) == (3, 10, 1)
    assert epoch_batches(17794, 0.2) == 3558 + 1  # ImageNet at batch 72: ⌊3558.8⌋ + 1
    with pytest.raises(ValueError, match="epoch_fraction"):
        epoch_batches(10, 0.0)


class Watch(Callback):
    """Records, per training batch: the epoch, the optimisers' learning rates and the classifier's flags."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.lrs: list[tuple[float, ...]] = []
        self.modes: set[bool] = set()
        self.pool: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epochs.append(trainer.current_epoch)
        self.lrs.append(tuple(o.param_groups[0]["lr"] for o in trainer.optimizers))
        self.modes |= {m.training for m in pl_module.classifier.modules()}
        self.pool.append(len(pl_module.pool))


def _fit(mode, datamodule, classifier_dir, out_dir, **kwargs):
    watch = Watch()
    module = fit_masker(datamodule, out_dir, classifier_dir=classifier_dir, mode=mode, max_epochs=2,
                        epoch_fraction=0.5, lrde=1, layers=LAYERS, channels=8, progress=False, accelerator="cpu",
                        callbacks=[watch], **kwargs)
    return module, watch


def _check_reload(module, out_dir, splits, classifier):
    images = torch.stack([s.image for s in splits["test"]])
    with torch.no_grad():
        expected = module(images)
    masker, description = load_trained_masker(out_dir)
    source = load_trained_classifier(description["classifier_dir"])[0]
    with torch.no_grad():
        _, features = classifier_features(source, source.normalize(images), masker.layers)
        torch.testing.assert_close(masker(features, images.shape[-2:]), expected)
    targets = torch.tensor([[0, 5]] * (len(images) - 1) + [[2, -1]])
    maps = methods.build("masker", classifier, checkpoint=str(out_dir)).attribute(images, targets)
    torch.testing.assert_close(maps[:-1], expected[:-1].expand(-1, 2, -1, -1))  # class-agnostic
    torch.testing.assert_close(maps[-1, 0], expected[-1, 0])
    assert maps[-1, 1].isnan().all()
    return description, expected


def test_tiny_fix_fit_keeps_the_classifier_and_reloads(splits, classifier_dir, datamodule, tmp_path):
    before = _state(load_trained_classifier(classifier_dir)[0])
    module, watch = _fit("fix", datamodule, classifier_dir, tmp_path)
    batches = epoch_batches(len(datamodule.train_dataloader()), 0.5)
    assert watch.epochs == [0] * batches + [1] * batches
    assert watch.lrs == [(1e-3,)] * batches + [(pytest.approx(1e-4),)] * batches
    assert watch.modes == {False}
    after = _state(module.classifier)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    description, _ = _check_reload(module, tmp_path, splits, load_trained_classifier(classifier_dir)[0])
    assert description["mode"] == "fix" and description["classifier_dir"] == str(classifier_dir)
    assert description["masker"]["layers"] == LAYERS and description["masker"]["in_channels"] == [16, 32]
    assert description["epochs"] == 2 and description["batches_per_epoch"] == batches
    assert description["class_names"] == list(CLASSES) and not (tmp_path / "classifier.json").exists()


def test_tiny_ca_fit_trains_the_classifier_and_reloads(splits, classifier_dir, datamodule, tmp_path):
    before = _state(load_trained_classifier(classifier_dir)[0])
    module, watch = _fit("ca", datamodule, classifier_dir, tmp_path, prob_historic=0.5, save_freq=1, pool_size=2)
    assert watch.modes == {True} and watch.lrs[0] == (1e-3, 1e-3) and watch.lrs[-1] == pytest.approx((1e-4, 1e-4))
    assert watch.pool[:3] == [0, 1, 2] and max(watch.pool) == 2 == len(module.pool)  # capped
    after = _state(module.classifier)
    assert not torch.equal(before["model.head.weight"], after["model.head.weight"])
    co_trained, _ = load_trained_classifier(tmp_path)
    assert all(torch.equal(v, after[f"model.{k}"]) for k, v in co_trained.model.state_dict().items())
    base = load_trained_classifier(classifier_dir)[0]
    description, expected = _check_reload(module, tmp_path, splits, base)  # features of the co-trained classifier
    assert description["mode"] == "ca" and description["classifier_dir"] == str(tmp_path)
    assert description["base_classifier_dir"] == str(classifier_dir)
    masker, _ = load_trained_masker(tmp_path)
    images = torch.stack([s.image for s in splits["test"]])
    with torch.no_grad():
        _, features = classifier_features(base, base.normalize(images), masker.layers)
        assert not torch.allclose(masker(features, images.shape[-2:]), expected)
    reloaded = MaskerModule.load_from_checkpoint(next((tmp_path / "checkpoints").glob("*.ckpt")),
                                                 map_location="cpu", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(images), expected)


def test_method_maps_in_memory_masker_and_class_embedding():
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", 4, width=4).eval()
    with pytest.raises(ValueError, match="trained masker"):
        methods.build("masker", classifier)
    masker = Masker(["features"], [32], channels=8).eval()
    images = torch.rand(3, 3, 24, 20)
    method = methods.build("masker", classifier, masker=masker)
    maps = method.attribute(images, torch.tensor([[2, 0], [1, -1], [3, 3]]))
    with torch.no_grad():
        _, features = classifier_features(classifier, classifier.normalize(images), ["features"])
        mask = masker(features, (24, 20))
    torch.testing.assert_close(maps[0], mask[0].expand(2, -1, -1))
    assert maps[1, 1].isnan().all() and method.passes(24, 20) == methods.Passes(forward=1, backward=0)
    logits = methods.build("masker", classifier, masker=masker, logits=True).attribute(images, 0)
    torch.testing.assert_close(logits.sigmoid(), mask)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, 4)
    per_class = Masker(["features"], [32], channels=8, class_embedding=3, num_classes=4).eval()
    maps = methods.build("masker", classifier, masker=per_class).attribute(images, torch.tensor([[2, 0]] * 3))
    with torch.no_grad():
        for slot, cls in enumerate((2, 0)):
            expected = per_class(features, (24, 20), classes=torch.full((3,), cls))[:, 0]
            torch.testing.assert_close(maps[:, slot], expected)
    assert not torch.allclose(maps[:, 0], maps[:, 1])


SPEC = {"fix": (10.0, 0.0, 100000000), "ca": (15.0, 0.5, 100)}  # λ_out, prob_historic, save_freq (spec §2.6)


@pytest.mark.parametrize("name", ["fix", "ca"])
def test_presets_follow_the_spec_table(name):
    preset = presets.load("masker", name)
    settings = preset["masker"]
    assert preset["data"]["batch_size"] == 72 and preset["classifier"]["arch"] == "resnet50"
    assert (settings["lambda_out"], settings["prob_historic"], settings["save_freq"]) == SPEC[name]
    assert (settings["mode"], settings["layers"], settings["lambda_in"], settings["lambda_tv"]) == \
        (name, ["layer3", "layer4"], 1.0, 0.001)
    assert (settings["max_epochs"], settings["lrde"], settings["epoch_fraction"], settings["lr"]) == (60, 20, 0.2, 1e-3)
    assert (settings["pool_size"], settings["grad_clip"], settings["weight_decay"]) == (30, 10.0, 1e-4)


@pytest.mark.parametrize("name", ["synthetic_fix", "synthetic_ca"])
def test_synthetic_presets_build_on_the_small_cnn(name, classifier_dir):
    settings = dict(presets.load("masker", name)["masker"])
    assert {"fix", "ca", "synthetic_fix", "synthetic_ca"} <= set(presets.names("masker"))
    for key in ("max_epochs", "epoch_fraction"):
        settings.pop(key)
    module = MaskerModule(str(classifier_dir), **settings)
    with torch.no_grad():
        assert module(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(FileNotFoundError, match="known presets"):
        presets.load("masker", "nowhere")

