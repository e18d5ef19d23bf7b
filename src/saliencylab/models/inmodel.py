"""The in-model explainer-classifier of Rio-Torto et al., "Understanding the decisions of CNNs: an in-model
approach" (Pattern Recognition Letters 2020): a U-Net explainer whose map ẑ ∈ [0,1) multiplies a classifier's
features at every stage, average-pooled to each stage's resolution (Sec. 3; average pooling keeps the map's
mean mass, where max pooling would inflate sparse maps).

- :class:`Explainer`: encoder ConvMod 32/64/128 with three max-pools, transposed-conv decoder with *additive*
  skips, head 1×1 conv → BatchNorm (bias initialised to ``init_bias``, so the first maps are ≈ all ones) →
  tanh → ReLU. No BatchNorm in the conv blocks.
- :class:`VGGMod`: four stages [ConvMod → ×ẑ → max-pool] of 32/64/128/256 channels, global max pool, FC
  256→128→128→C with sigmoids and dropout 0.3 (Xavier weights, zero biases).
- :class:`ResNetMod`: a torchvision ResNet (18/34/50) whose stem output and every residual block's output are
  multiplied by ẑ at that resolution.
- :class:`InModelNet`: both; ``forward`` gives logits, :meth:`InModelNet.explain` the map, so it is a classifier
  (wrap it in :class:`~saliencylab.models.classifier.Classifier`) and its explainer a method (``inmodel``).

Images reach the networks as the Classifier wrapper passes them; the original feeds [0,1] images without
mean/std normalisation, which :func:`build_inmodel_classifier` reproduces (mean 0, std 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.models as tv
from torch import Tensor, nn

from saliencylab.models.classifier import Classifier

CLASSIFIERS = ("vgg", "resnet18", "resnet34", "resnet50")


class ConvMod(nn.Sequential):
    """[conv 3×3 (padding 1, bias) → ReLU] × 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU())


class Explainer(nn.Module):
    """U-Net explainer: images (B,3,H,W) -> map (B,1,H,W) in [0,1) (sides not divisible by 8 are zero-padded)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128), init_bias: float = 3.0) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.encoder = nn.ModuleList([ConvMod(3, w0), ConvMod(w0, w1), ConvMod(w1, w2)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w2, w2, 2, stride=2), nn.ConvTranspose2d(w2, w1, 2, stride=2),
                                 nn.ConvTranspose2d(w1, w0, 2, stride=2)])
        self.decoder = nn.ModuleList([ConvMod(w2, w2), ConvMod(w1, w1), ConvMod(w0, w0)])
        self.head = nn.Conv2d(w0, 1, 1)
        self.norm = nn.BatchNorm2d(1)
        nn.init.constant_(self.norm.bias, init_bias)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        skips, x = [], F.pad(images, (0, -width % 8, 0, -height % 8))  # sides not divisible by 8: zero-pad, crop after
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(up(x) + skip)
        return torch.relu(torch.tanh(self.norm(self.head(x))))[..., :height, :width]


def pooled(explanation: Tensor, features: Tensor) -> Tensor:
    """The map (B,1,H,W) average-pooled to the resolution of ``features`` (B,C,h,w) (= AvgPool of H/h when it divides)."""
    return F.adaptive_avg_pool2d(explanation, features.shape[-2:])


class VGGMod(nn.Module):
    """The VGG-like classifier: (images (B,3,H,W), map (B,1,H,W)) -> logits (B,C)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256), hidden: int = 128) -> None:
        super().__init__()
        channels = [3, *widths]
        self.stages = nn.ModuleList([ConvMod(a, b) for a, b in zip(channels, channels[1:])])
        self.head = nn.Sequential(nn.Linear(widths[-1], hidden), nn.Sigmoid(), nn.Dropout(0.3),
                                  nn.Linear(hidden, hidden), nn.Sigmoid(), nn.Dropout(0.3), nn.Linear(hidden, num_classes))
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, images: Tensor, explanation: Tensor) -> Tensor:
        x = images
        for stage in self.stages:
            x = stage(x)
            x = F.max_pool2d(x * pooled(explanation, x), 2)
        return self.head(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))


class ResNetMod(nn.Module):
    """A torchvision ResNet whose stem and every residual block multiply their output by the pooled map."""

    def __init__(self, num_classes: int, depth: int = 18) -> None:
        super().__init__()
        builders = {18: tv.resnet18, 34: tv.resnet34, 50: tv.resnet50}
        if depth not in builders:
            raise ValueError(f"ResNetMod depth must be one of {sorted(builders)}, got {depth}")
        self.net = builders[depth](num_classes=num_classes)

    def forward(self, images: Tensor, explanation: Tensor) -> Tensor:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        x = x * pooled(explanation, x)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in layer:
                x = block(x)
                x = x * pooled(explanation, x)
        return net.fc(torch.flatten(net.avgpool(x), 1))


class InModelNet(nn.Module):
    """Explainer + classifier: ``forward(images)`` -> logits (B,C); :meth:`explain` -> map (B,1,H,W) in [0,1).

    ``classifier``: one of CLASSIFIERS; ``explainer_widths`` (32, 64, 128 in the paper) and ``vgg_widths``
    (32, 64, 128, 256) may be narrowed for small data; ``init_bias`` 3.0 (the README's setting).
    """

    def __init__(self, num_classes: int, classifier: str = "resnet18", *, init_bias: float = 3.0,
                 explainer_widths: Sequence[int] = (32, 64, 128), vgg_widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.num_classes = num_classes
        self.explainer = Explainer(explainer_widths, init_bias)
        self.classifier = (VGGMod(num_classes, vgg_widths) if classifier == "vgg"
                           else ResNetMod(num_classes, int(classifier.removeprefix("resnet"))))

    def explain(self, images: Tensor) -> Tensor:
        return self.explainer(images)

    def logits_and_map(self, images: Tensor) -> tuple[Tensor, Tensor]:
        explanation = self.explainer(images)
        return self.classifier(images, explanation), explanation

    def forward(self, images: Tensor) -> Tensor:
        return self.logits_and_map(images)[0]


def feature_layer(model: InModelNet) -> str:
    """The module path CAM methods read: the last VGG stage, or the last residual block of ResNet's last super-block
    (:class:`ResNetMod` runs the blocks one by one, so the super-block module itself never runs)."""
    if isinstance(model.classifier, VGGMod):
        return f"classifier.stages.{len(model.classifier.stages) - 1}"
    return f"classifier.net.layer4.{len(model.classifier.net.layer4) - 1}"


def build_inmodel_classifier(num_classes: int, classifier: str = "resnet18", *,
                             class_names: Sequence[str] | None = None, **network: object) -> Classifier:
    """An :class:`InModelNet` in a Classifier wrapper with mean 0 and std 1 (the original feeds [0,1] images)."""
    model = InModelNet(num_classes, classifier, **network)
    return Classifier(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), layers={"features": feature_layer(model)},
                      class_names=class_names)
