"""The CASME masker (Phang et al., 'Investigating and Simplifying Masking-based Saliency Methods for Model Interpretability', 2020):
a small decoder over a classifier's own feature maps, one mask (B,1,H,W).

The masker reads chosen layers of the explained classifier (forward hooks on ``classifier.layer(name)``,
features *detached* by the caller, so no gradient reaches the classifier through them). Each layer
goes through a 1x1 conv (no bias) -> BatchNorm -> ReLU branch and is upsampled bilinearly
(align_corners=False) to the head resolution; the branches are concatenated, a 3x3 conv gives one
logit map, a sigmoid the mask, and a nearest upsample brings it to the input's exact size.

Head resolution: input/``head_stride`` (default 4: the original's 56x56 at 224, i.e. every branch
upsampled to the resolution of ResNet's layer1 and the mask piecewise constant on 4x4 blocks; the
original upsamples that x4 to 224, here to the input's exact size, so any H,W works).
``head_stride=None`` uses the finest chosen layer's resolution instead.
Default layers: ResNet's ``layer3`` + ``layer4`` (the paper's "layers 4 and 5"); other backbones
name theirs (any of ``Classifier.layers`` or a dotted module path; any layout ``Classifier.read_layout`` reads).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliencylab.models.classifier import Classifier, captured_output, input_size, scoped_eval
from saliencylab.models.io import load_described_network

DEFAULT_LAYERS = ("layer3", "layer4")
GUMBEL_MODES = ("soft", "hard")


def default_layers(classifier: Classifier) -> tuple[str, ...]:
    """("layer3", "layer4") for a ResNet-like model (both modules exist); otherwise a ValueError asking for names."""
    modules = dict(classifier.model.named_modules())
    if all(classifier.layers.get(name, name) in modules for name in DEFAULT_LAYERS):
        return DEFAULT_LAYERS
    known = ", ".join(classifier.layers) or "none"
    raise ValueError(f"the masker reads layer3 + layer4 of a ResNet by default, which this model lacks: pass "
                     f"layers=[...] (named layers of the classifier: {known}; or dotted module paths)")


def classifier_features(classifier: Classifier, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
    """Logits (B,C) of *normalised* images x (B,3,H,W) and the output of each layer as a (B,C_l,h_l,w_l) grid, in order.

    Forward hooks on ``classifier.layer(name)`` record the outputs and are always removed; each is read
    in its layout (``Classifier.read_layout``: CNN maps, channels-last maps, tokens). The features keep
    their graph: detach them before a masker sees them.
    """
    with ExitStack() as hooks:
        recorded = [hooks.enter_context(captured_output(classifier.layer(name))) for name in layers]
        logits = classifier.model(x)
    features = []
    for name, calls in zip(layers, recorded):
        if len(calls) != 1 or not isinstance(calls[0], Tensor) or calls[0].dim() not in (3, 4):
            shapes = [tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__ for c in calls]
            raise ValueError(f"masker layer {name!r} must run once per forward and output a (B,C,h,w) map, a "
                             f"channels-last map or (B,N,D) tokens, got {shapes}")
        features.append(classifier.read_layout(name, calls[0], x.shape[-2:]).to_grid(calls[0]))
    return logits, features


def layer_channels(classifier: Classifier, layers: Sequence[str], size: int | None = None) -> list[int]:
    """Channel count of each layer's grid, from one eval-mode forward of a 1x3x``size``x``size`` zero image
    (default: the size the model is built for, :func:`~saliencylab.models.classifier.input_size`).

    Every module's train/eval and requires_grad flags are restored afterwards.
    """
    param = next(classifier.parameters(), None)
    height, width = (size, size) if size else input_size(classifier.model)
    with scoped_eval(classifier), torch.no_grad():
        zeros = torch.zeros(1, 3, height, width, device=param.device if param is not None else None)
        _, features = classifier_features(classifier, zeros, layers)
    return [int(f.shape[1]) for f in features]


def binary_concrete(logits: Tensor, tau: float, hard: bool) -> Tensor:
    """A binary-concrete sample sigmoid((ℓ + log(u+1e-8) − log(1−u+1e-8))/τ), u~U(0,1), same shape as logits.

    ``hard``: forward 1[y > 0.5], gradient through y (straight-through). Uses the global RNG.
    """
    u = torch.rand_like(logits)
    y = ((logits + torch.log(u + 1e-8) - torch.log(1 - u + 1e-8)) / tau).sigmoid()
    if not hard:
        return y
    return (y > 0.5).to(y.dtype) + y - y.detach()


class Masker(nn.Module):
    """Detached classifier features -> mask (B,1,H,W) in [0,1]; see the module docstring.

    ``layers``: the classifier layers read (kept here so a checkpoint knows them); ``in_channels``:
    their channel counts (:func:`layer_channels`). ``channels``: width of every branch (64).
    ``raw_layers``: layers concatenated as they are, with no branch (the original CASM decoder's
    ResNet stem output, module path ``maxpool``, when read with other layers).
    ``gumbel``: None (sigmoid head), "soft" or "hard": training samples a binary concrete with
    temperature ``tau`` ("hard": straight-through), eval gives 1[ℓ > 0].
    ``area_prior``: one extra channel, a target area p per image, broadcast to every layer.
    ``class_embedding``: that many extra channels from an ``nn.Embedding(num_classes, class_embedding)``
    of a class per image (the original: 64), broadcast to every layer; then masks are class-specific.
    Init: every conv weight ~ N(0, sqrt(2/(k·k·out_channels))), BN γ=1, β=0, conv biases PyTorch's.
    """

    def __init__(self, layers: Sequence[str], in_channels: Sequence[int], *, channels: int = 64,
                 head_stride: int | None = 4, raw_layers: Sequence[str] = (), gumbel: str | None = None,
                 tau: float = 0.1, area_prior: bool = False, class_embedding: int = 0,
                 num_classes: int | None = None) -> None:
        super().__init__()
        layers, in_channels, raw_layers = list(layers), [int(c) for c in in_channels], list(raw_layers)
        if not layers or len(set(layers)) != len(layers) or len(in_channels) != len(layers):
            raise ValueError(f"the masker needs distinct layers and one channel count each, got layers={layers} "
                             f"and in_channels={in_channels}")
        if not set(raw_layers) <= set(layers):
            raise ValueError(f"raw_layers {raw_layers} must be among the layers {layers}")
        if gumbel is not None and gumbel not in GUMBEL_MODES:
            raise ValueError(f"gumbel must be None or one of {GUMBEL_MODES}, got {gumbel!r}")
        if head_stride is not None and head_stride < 1:
            raise ValueError(f"head_stride must be >= 1 or None, got {head_stride}")
        if class_embedding and not num_classes:
            raise ValueError("class_embedding channels need num_classes")
        self.layers, self.in_channels, self.raw_layers = layers, in_channels, raw_layers
        self.channels, self.head_stride, self.gumbel, self.tau = channels, head_stride, gumbel, tau
        self.area_prior, self.class_embedding, self.num_classes = area_prior, class_embedding, num_classes
        extra = int(area_prior) + class_embedding
        self.embedding = nn.Embedding(num_classes, class_embedding) if class_embedding else None
        self.branches = nn.ModuleList(
            nn.Identity() if name in raw_layers else nn.Sequential(
                nn.Conv2d(cin + extra, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
            for name, cin in zip(layers, in_channels))
        head_in = sum(cin + extra if name in raw_layers else channels for name, cin in zip(layers, in_channels))
        self.head = nn.Conv2d(head_in, 1, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                k_h, k_w = module.kernel_size
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * module.out_channels)))

    def config(self) -> dict:
        """The constructor's arguments, to rebuild this masker (plain JSON values)."""
        return {"layers": self.layers, "in_channels": self.in_channels, "channels": self.channels,
                "head_stride": self.head_stride, "raw_layers": self.raw_layers, "gumbel": self.gumbel,
                "tau": self.tau, "area_prior": self.area_prior, "class_embedding": self.class_embedding,
                "num_classes": self.num_classes}

    def forward(self, features: Sequence[Tensor], size: tuple[int, int], *, area: Tensor | None = None,
                classes: Tensor | None = None, logits: bool = False) -> Tensor:
        """Mask (B,1,*size): features as listed in ``layers`` ((B,C_l,h_l,w_l), detached), ``size`` the input's (H,W).

        ``area`` (B,) target areas (area_prior maskers), ``classes`` (B,) class indices (class_embedding
        maskers). ``logits=True``: the head's logits ℓ instead of the mask (the original ``no_sigmoid``).
        """
        if len(features) != len(self.layers):
            raise ValueError(f"the masker reads {len(self.layers)} layers {self.layers}, got {len(features)} maps")
        extras = []
        if self.area_prior:
            if area is None:
                raise ValueError("this masker has an area-prior channel: pass area=(B,) target areas")
            extras.append(area.to(features[0].dtype).view(-1, 1, 1, 1))
        if self.embedding is not None:
            if classes is None:
                raise ValueError("this masker has class-embedding channels: pass classes=(B,) class indices")
            extras.append(self.embedding(classes)[..., None, None])
        if self.head_stride is None:
            grid = max((tuple(f.shape[-2:]) for f in features), key=lambda hw: hw[0] * hw[1])
        else:
            grid = (max(size[0] // self.head_stride, 1), max(size[1] // self.head_stride, 1))
        maps = []
        for feature, branch in zip(features, self.branches):
            if extras:
                feature = torch.cat([feature, *(e.expand(-1, -1, *feature.shape[-2:]) for e in extras)], dim=1)
            feature = branch(feature)
            if tuple(feature.shape[-2:]) != grid:
                feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            maps.append(feature)
        out = self.head(torch.cat(maps, dim=1))
        if not logits:
            if self.gumbel is None:
                out = out.sigmoid()
            elif self.training:
                out = binary_concrete(out, self.tau, hard=self.gumbel == "hard")
            else:
                out = (out > 0).to(out.dtype)
        return F.interpolate(out, size=tuple(size), mode="nearest")


def load_trained_masker(out_dir: str | Path) -> tuple[Masker, dict]:
    """Rebuild the masker written by :func:`saliencylab.training.masker.fit_masker`; returns it (eval mode) and its description.

    It reads the layers ``description["masker"]["layers"]`` of the classifier in
    ``description["classifier_dir"]`` (the co-trained one for CA: ``out_dir`` itself).
    """
    return load_described_network(out_dir, "masker", lambda d: Masker(**d["masker"]), "fit_masker")
