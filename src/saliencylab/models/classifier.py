"""The Classifier wrapper: the one way every method, metric and trainer sees a model."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD

SCORES = ("logit", "softmax", "sigmoid")


def check_images(images: Tensor) -> None:
    """Raise ValueError unless images is a float (B,3,H,W) tensor with values in [0,1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B,3,H,W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B,3,H,W), got {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be a float tensor with values in [0,1], got dtype {images.dtype}")
    if images.numel():
        low, high = (float(v) for v in images.detach().aminmax())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"images must be unnormalised with values in [0,1], got range [{low:.3f}, {high:.3f}]; "
                             "the Classifier applies mean/std itself")


class Classifier(nn.Module):
    """Wrap a model that takes normalised images so it takes images in [0,1].

    ``model``: any ``nn.Module`` mapping normalised (B,3,H,W) to logits (B,C).
    ``mean``/``std``: per-channel normalisation applied inside ``forward``.
    ``score``: what methods explain: ``"logit"`` (default), ``"softmax"`` or ``"sigmoid"``.
    ``layers``: named feature layers for CAM methods, ``{"name": "dotted.module.path"}``;
    the first entry is the default ("auto") layer.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        score: str = "logit",
        layers: Mapping[str, str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got mean={mean}, std={std}")
        self.model = model
        self.score = score
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.layers = dict(layers or {})
        modules = dict(model.named_modules())
        for name, path in self.layers.items():
            if path not in modules:
                raise ValueError(f"layer {name!r} points to {path!r}, which is not a module of the model")
        self.class_names = list(class_names) if class_names is not None else None

    def normalize(self, images: Tensor) -> Tensor:
        """(B,3,H,W) in [0,1] -> normalised (B,3,H,W)."""
        return (images - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B,C) of images (B,3,H,W) in [0,1]."""
        return self.model(self.normalize(images))

    def scores(self, images: Tensor) -> Tensor:
        """The explained score (B,C): logits, softmax or sigmoid, as chosen by ``score``."""
        return self.apply_score(self(images))

    def apply_score(self, logits: Tensor) -> Tensor:
        if self.score == "softmax":
            return logits.softmax(dim=1)
        if self.score == "sigmoid":
            return logits.sigmoid()
        return logits

    def layer(self, name: str = "auto") -> nn.Module:
        """The feature module called ``name`` (a key of ``layers`` or a dotted module path)."""
        if name == "auto":
            if not self.layers:
                raise ValueError(
                    "no layer given and the Classifier names none: pass layer='<module path>' or build "
                    "the Classifier with layers={'features': '<module path>'}")
            name = next(iter(self.layers))
        path = self.layers.get(name, name)
        modules = dict(self.model.named_modules())
        if path not in modules:
            known = ", ".join(self.layers) or "none"
            raise ValueError(f"unknown layer {name!r}: not a named layer (known: {known}) nor a module path of the model")
        return modules[path]

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def mask_images(self, images: Tensor, masks: Tensor) -> Tensor:
        """Keep images where masks is 1 and fill the mean colour elsewhere.

        images (B,3,H,W) in [0,1], masks (B,1,H,W) in [0,1]; equal to multiplying the
        *normalised* image by the mask (zero-fill in normalised space, as spec 000 §1).
        """
        fill = self.mean.view(1, 3, 1, 1)
        return masks * images + (1 - masks) * fill
