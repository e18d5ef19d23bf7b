"""Classifier builders: torchvision backbones with a new head (the NN-Explainer recipe) and a small CNN.

Weights always come from files the user gives; nothing is downloaded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv

from saliencylab.models.classifier import Classifier
from saliencylab.models.io import load_state_dict, load_weights
from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD

SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)


class SmallCNN(nn.Module):
    """A four-stage CNN (stride 8) -> global average pooling -> linear head.

    Input normalised (B,3,H,W) with H,W >= 32; output logits (B,num_classes). GAP -> linear
    makes Grad-CAM at ``features`` equal to CAM, a useful known answer.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
            *block(4 * w, 8 * w), *block(8 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def _vgg16(num_classes: int) -> tuple[nn.Module, dict[str, str], nn.Module]:
    model = tv.vgg16(weights=None)
    head = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    return model, {"pool5": "features.30", "relu5_3": "features.29"}, head


def _resnet(builder: Callable[..., tv.ResNet]) -> Callable[[int], tuple[nn.Module, dict[str, str], nn.Module]]:
    def build(num_classes: int) -> tuple[nn.Module, dict[str, str], nn.Module]:
        model = builder(weights=None)
        return model, {"layer4": "layer4", "layer3": "layer3"}, nn.Linear(model.fc.in_features, num_classes)
    return build


def _alexnet(num_classes: int) -> tuple[nn.Module, dict[str, str], nn.Module]:
    model = tv.alexnet(weights=None)
    head = nn.Sequential(*list(model.classifier.children())[:-1], nn.Linear(4096, num_classes))
    return model, {"features": "features", "relu5": "features.11"}, head


TORCHVISION = {
    "vgg16": (_vgg16, "classifier"),
    "resnet18": (_resnet(tv.resnet18), "fc"),
    "resnet50": (_resnet(tv.resnet50), "fc"),
    "alexnet": (_alexnet, "classifier"),
}
ARCHITECTURES = ("small_cnn", *TORCHVISION)
POOLINGS = ("avg", "max")


def use_global_max_pooling(model: nn.Module) -> nn.Module:
    """Replace the model's global average pooling (its last ``nn.AdaptiveAvgPool2d(1)``) with global max pooling,
    in place: the GMP variant of Pillai & Pirsiavash (AAAI 2021, 'Explainable Models with Consistent
    Interpretations', Sec. 4). Parameter-free, so weights load into either variant."""
    pools = [name for name, m in model.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))]
    if not pools:
        raise ValueError(f"{type(model).__name__} has no nn.AdaptiveAvgPool2d(1) (global average pooling) to "
                         "replace with global max pooling")
    parent, _, child = pools[-1].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.AdaptiveMaxPool2d(1))
    return model


def build_classifier(
    arch: str,
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    freeze_backbone: bool = True,
    score: str = "logit",
    width: int = 32,
    pooling: str = "avg",
) -> Classifier:
    """Build a Classifier for ``arch`` in ARCHITECTURES with ``num_classes`` outputs.

    ``backbone_weights``: a torchvision ImageNet state-dict file loaded before the head is
    replaced (torchvision archs only). ``weights``: a state dict of the *whole* model (as saved
    by :func:`saliencylab.models.load.save_classifier` or training) loaded last. torchvision backbones are
    frozen unless ``freeze_backbone=False``; the new head always trains. The small CNN
    (``width`` channels in its first stage) uses mean/std 0.5/0.25, the others ImageNet's.
    ``pooling``: "avg" (the architecture's global average pooling) or "max" (:func:`use_global_max_pooling`;
    AlexNet has none).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    if arch == "small_cnn":
        if backbone_weights is not None:
            raise ValueError("small_cnn has no pretrained backbone; pass weights= for a trained model")
        model: nn.Module = SmallCNN(num_classes, width=width)
        layers, mean, std = {"features": "features"}, SYNTHETIC_MEAN, SYNTHETIC_STD
    else:
        builder, head_name = TORCHVISION[arch]
        model, layers, head = builder(num_classes)
        if backbone_weights is not None:
            model.load_state_dict(load_state_dict(backbone_weights))
        if freeze_backbone:
            model.requires_grad_(False)
        setattr(model, head_name, head)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if pooling == "max":
        use_global_max_pooling(model)
    if weights is not None:
        load_weights(model, weights, f"a {arch} with {num_classes} classes")
    return Classifier(model, mean, std, score=score, layers=layers, class_names=class_names)
