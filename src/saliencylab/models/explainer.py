"""Explainer networks (Stalder et al. 2022): normalised images (B,3,H,W) -> logits for ALL classes (B,C,H,W).

One forward gives every class's mask logits S_c at input resolution (bilinear, align_corners=False);
the per-class mask is ``sigmoid(S_c)``. These are plain ``nn.Module``s: a LightningModule
(``saliencylab.training.explainer``) trains them, a Method adapter (``saliencylab.methods.trained``)
serves them. Nothing is downloaded: backbone weights come from a user file.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_resnet50

from saliencylab.models.io import load_described_network, load_state_dict
from saliencylab.models.zoo import SmallCNN

EXPLAINER_ARCHITECTURES = ("deeplabv3_resnet50", "light")


class DeepLabExplainer(nn.Module):
    """torchvision DeepLabv3-ResNet50 (output stride 8, no aux head) returning ``['out']`` as a tensor."""

    def __init__(self, num_classes: int, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        if backbone_weights is not None:
            state = {k: v for k, v in load_state_dict(backbone_weights).items() if not k.startswith("fc.")}
            try:
                self.net.backbone.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"backbone weights {backbone_weights} are not a torchvision ResNet-50 state dict: "
                                 f"{str(err).splitlines()[-1].strip()}") from err

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)["out"]  # torchvision already upsamples bilinearly (align_corners=False)
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
    )


class LightExplainer(nn.Module):
    """A small U-Net: the encoder is :class:`SmallCNN`'s feature stack (stride 8), so it can start from a
    trained small_cnn's weights as the paper's explainer starts from an ImageNet backbone.

    Skips are tapped after the encoder's stride-1, 2 and 4 stages (widths w, 2w, 4w; bottom 8w);
    each decoder step upsamples to the skip's exact size (any H,W >= 8 works), concatenates and
    refines with two 3x3 convs; a 1x1 conv gives the C logit maps at full resolution. As in FCN,
    coarse class scores (a 1x1 conv on the stride-8 bottom, ``coarse_head``) are upsampled and added,
    so class identity reaches the output directly rather than through the narrow decoder.
    """

    TAPS = (2, 6, 13)
    """Indices in ``SmallCNN.features`` whose outputs feed the decoder's skips (after each stage's last ReLU)."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.features = SmallCNN(num_classes, width).features
        self.dec3 = _block(8 * w + 4 * w, 4 * w)
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)
        self.coarse_head = nn.Conv2d(8 * w, num_classes, 1)

    @staticmethod
    def _up(x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], dim=1)

    def load_backbone(self, state: Mapping[str, Tensor], source: str) -> None:
        """Initialise from a small_cnn classifier's state dict: ``features.*`` into the encoder, and its
        linear ``head.*`` into ``coarse_head`` (then the coarse scores start as the classifier's
        per-location logits, i.e. CAM plus bias). The classifier must have this explainer's width and
        classes; ``source`` names the weights in errors."""
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        head = {k.removeprefix("head."): v.view(*v.shape, 1, 1) if k == "head.weight" else v
                for k, v in state.items() if k.startswith("head.")}
        try:
            self.features.load_state_dict(features)
            self.coarse_head.load_state_dict(head)
        except RuntimeError as err:
            raise ValueError(f"backbone weights {source} are not those of a small_cnn of width "
                             f"{self.features[0].out_channels} with {self.num_classes} classes: "
                             f"{str(err).splitlines()[-1].strip()}") from err

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                skips.append(x)
        coarse = self.coarse_head(x)
        for decoder, skip in zip((self.dec3, self.dec2, self.dec1), reversed(skips)):
            x = decoder(self._up(x, skip))
        return self.head(x) + F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplab_explainer(num_classes: int, backbone_weights: str | Path | None = None) -> DeepLabExplainer:
    """The NN-Explainer network: DeepLabv3-ResNet50 with C outputs; ImageNet backbone from ``backbone_weights``.

    The original (torchvision 0.11, ``pretrained=False``) silently used an ImageNet backbone; here it
    is random unless a torchvision ResNet-50 state-dict file is given (its ``fc.*`` keys are ignored).
    """
    return DeepLabExplainer(num_classes, backbone_weights)


def light_explainer(num_classes: int, width: int = 16, backbone_weights: str | Path | None = None) -> LightExplainer:
    """A small U-Net explainer that trains on CPU in minutes on 96 px synthetic images; encoder from a
    small_cnn weights file ``backbone_weights`` when given (e.g. the explained classifier's own)."""
    network = LightExplainer(num_classes, width)
    if backbone_weights is not None:
        network.load_backbone(load_state_dict(backbone_weights), str(backbone_weights))
    return network


def build_explainer(arch: str, num_classes: int, *, backbone_weights: str | Path | None = None,
                    width: int = 16) -> nn.Module:
    """Build the explainer ``arch`` in EXPLAINER_ARCHITECTURES with ``num_classes`` output maps.

    ``backbone_weights``: a torchvision ResNet-50 state dict (deeplabv3_resnet50) or a small_cnn one
    (light); ``width`` applies to light only.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arch == "deeplabv3_resnet50":
        return deeplab_explainer(num_classes, backbone_weights)
    if arch == "light":
        return light_explainer(num_classes, width, backbone_weights)
    raise ValueError(f"unknown explainer architecture {arch!r}; choose one of {', '.join(EXPLAINER_ARCHITECTURES)}")


def load_trained_explainer(out_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the explainer network written by :func:`saliencylab.training.explainer.fit_explainer`; returns it (eval mode) and its description.

    The network takes images normalised with ``description["mean"]``/``["std"]`` and returns (B,C,H,W) logits.
    """
    return load_described_network(
        out_dir, "explainer", lambda d: build_explainer(d["arch"], int(d["num_classes"]), width=int(d["width"])),
        "fit_explainer")
