"""Explainer networks (spec 000 §1): normalised images (B,3,H,W) -> logits for ALL classes (B,C,H,W).

One forward gives every class's mask logits S_c at input resolution (bilinear, align_corners=False);
the per-class mask is ``sigmoid(S_c)``. These are plain ``nn.Module``s: a LightningModule
(``saliencylab.training.explainer``) trains them, a Method adapter (``saliencylab.methods.trained``)
serves them. Nothing is downloaded: backbone weights come from a user file.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_resnet50

from saliencylab.models.io import load_state_dict

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


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
    )


class LightExplainer(nn.Module):
    """A small U-Net-like encoder-decoder: stride 8, skips at strides 1, 2 and 4, bilinear upsampling.

    Encoder widths w, 2w, 4w, 8w (the last stage adds a dilated context block); each decoder step
    upsamples to the skip's exact size (any H,W >= 8 works, not only multiples of 8), concatenates,
    and refines with two 3x3 convs; a 1x1 conv gives the C logit maps at full resolution.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.enc1 = _block(3, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        self.enc4 = nn.Sequential(_block(4 * w, 8 * w), _block(8 * w, 8 * w, dilation=2))
        self.dec3 = _block(8 * w + 4 * w, 4 * w)
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    @staticmethod
    def _up(x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2, ceil_mode=True))
        s3 = self.enc3(F.max_pool2d(s2, 2, ceil_mode=True))
        bottom = self.enc4(F.max_pool2d(s3, 2, ceil_mode=True))
        y = self.dec3(self._up(bottom, s3))
        y = self.dec2(self._up(y, s2))
        y = self.dec1(self._up(y, s1))
        return self.head(y)


def deeplab_explainer(num_classes: int, backbone_weights: str | Path | None = None) -> DeepLabExplainer:
    """The NN-Explainer network: DeepLabv3-ResNet50 with C outputs; ImageNet backbone from ``backbone_weights``.

    The original (torchvision 0.11, ``pretrained=False``) silently used an ImageNet backbone; here it
    is random unless a torchvision ResNet-50 state-dict file is given (its ``fc.*`` keys are ignored).
    """
    return DeepLabExplainer(num_classes, backbone_weights)


def light_explainer(num_classes: int, width: int = 16) -> LightExplainer:
    """A small encoder-decoder explainer that trains on CPU in minutes on 96 px synthetic images."""
    return LightExplainer(num_classes, width)


def build_explainer(arch: str, num_classes: int, *, backbone_weights: str | Path | None = None,
                    width: int = 16) -> nn.Module:
    """Build the explainer ``arch`` in EXPLAINER_ARCHITECTURES with ``num_classes`` output maps.

    ``backbone_weights`` applies to deeplabv3_resnet50 only, ``width`` to light only.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arch == "deeplabv3_resnet50":
        return deeplab_explainer(num_classes, backbone_weights)
    if arch == "light":
        if backbone_weights is not None:
            raise ValueError("the light explainer has no pretrained backbone; backbone_weights is for deeplabv3_resnet50")
        return light_explainer(num_classes, width)
    raise ValueError(f"unknown explainer architecture {arch!r}; choose one of {', '.join(EXPLAINER_ARCHITECTURES)}")
