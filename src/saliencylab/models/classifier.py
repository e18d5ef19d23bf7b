"""The Classifier wrapper: the one way every method, metric and trainer sees a model."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD

SCORES = ("logit", "softmax", "sigmoid")
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


@contextmanager
def scoped_eval(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with frozen parameters; restore both flags afterwards, always."""
    was_training = {m: m.training for m in model.modules()}
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for module, flag in was_training.items():
            module.training = flag
        for param, flag in grad_flags.items():
            param.requires_grad_(flag)


@contextmanager
def captured_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Record the outputs of ``module`` during forward passes; the hook is always removed."""
    outputs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


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
        if not (low >= 0.0 and high <= 1.0):  # also False for NaN, which aminmax propagates
            raise ValueError(f"images must be unnormalised with finite values in [0,1], got range [{low:.3f}, {high:.3f}]; "
                             "the Classifier applies mean/std itself")


class Classifier(nn.Module):
    """Wrap a model that takes normalised images so it takes images in [0,1].

    ``model``: any ``nn.Module`` mapping normalised (B,3,H,W) to logits (B,C).
    ``mean``/``std``: per-channel normalisation applied inside ``forward``.
    ``score``: what methods explain: ``"logit"`` (default), ``"softmax"`` or ``"sigmoid"``.
    ``layers``: named feature layers for CAM methods, ``{"name": "dotted.module.path"}``;
    the first entry is the default ("auto") layer; with none named, "auto" is chosen by
    :func:`find_feature_layer`.
    ``layouts``: how a layer's output reads as a (B,C,h,w) grid, keyed by layer name or module
    path: ``"auto"`` (default: from the output's dims and the model, see
    ``saliencylab.methods.layers``), ``"nchw"``, ``"nhwc"`` (channels-last, e.g. Swin) or
    ``"tokens"`` ((B,N,D): prefix tokens dropped, patches reshaped to their grid).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        score: str = "logit",
        layers: Mapping[str, str] | None = None,
        layouts: Mapping[str, str] | None = None,
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
        self.layouts = dict(layouts or {})
        for name, layout in self.layouts.items():
            if layout not in LAYOUTS:
                raise ValueError(f"layout of layer {name!r} must be one of {LAYOUTS}, got {layout!r}")
        self._auto_layer: str | None = None
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

    def layer_path(self, name: str = "auto") -> str:
        """The module path of layer ``name``: a key of ``layers``, a dotted module path, or ``"auto"``
        (the first named layer, else the one :func:`find_feature_layer` picks, found once and cached)."""
        if name == "auto":
            if not self.layers:
                if self._auto_layer is None:
                    self._auto_layer = find_feature_layer(self.model)
                return self._auto_layer
            name = next(iter(self.layers))
        path = self.layers.get(name, name)
        if path not in dict(self.model.named_modules()):
            known = ", ".join(self.layers) or "none"
            raise ValueError(f"unknown layer {name!r}: not a named layer (known: {known}) nor a module path of the model")
        return path

    def layer(self, name: str = "auto") -> nn.Module:
        """The feature module called ``name`` (see :meth:`layer_path`)."""
        return self.model.get_submodule(self.layer_path(name))

    def layer_layout(self, name: str = "auto") -> str:
        """The layout of layer ``name``'s output (one of LAYOUTS), looked up by name, then by module path."""
        path = self.layer_path(name)
        if name == "auto" and self.layers:
            name = next(iter(self.layers))
        return self.layouts.get(name, self.layouts.get(path, "auto"))

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def mask_images(self, images: Tensor, masks: Tensor) -> Tensor:
        """Keep images where masks is 1 and fill the mean colour elsewhere.

        images (B,3,H,W) in [0,1], masks (B,1,H,W) in [0,1]; equal to multiplying the
        *normalised* image by the mask (zero-fill in normalised space, as Stalder et al. 2022).
        """
        fill = self.mean.view(1, 3, 1, 1)
        return masks * images + (1 - masks) * fill


def find_feature_layer(model: nn.Module, size: tuple[int, int] | None = None) -> str:
    """The module path a CAM explains by default, found by one forward of a 1x3xHxW zero image.

    Token models (timm ViT/DeiT: ``model.blocks`` whose last block outputs (B,N,D)): the last
    block's ``norm1`` (its input to attention, as pytorch-grad-cam recommends: the last block's
    own output reaches a class-token head only through the class token), else that block.
    Otherwise the last module, run exactly once, whose output is a (B,C,h,w) map with h,w > 1
    ((B,h,w,C) for timm's channels-last models, ``output_fmt="NHWC"``: Swin), i.e. the last
    feature map before global pooling. ``size``: (H,W), default ``model.patch_embed.img_size``
    (timm) or 224x224.
    """
    size = size or tuple(getattr(getattr(model, "patch_embed", None), "img_size", None) or (224, 224))
    channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def record(name: str):
        return lambda _m, _i, out: shapes.setdefault(name, []).append(
            tuple(out.shape) if isinstance(out, Tensor) else ())

    modules = [(name, m) for name, m in model.named_modules() if name]
    handles = [m.register_forward_hook(record(name)) for name, m in modules]
    try:
        param = next(model.parameters(), None)
        dummy = torch.zeros(1, 3, *size, device=param.device if param is not None else None)
        with scoped_eval(model), torch.no_grad():
            model(dummy)
    except Exception as err:
        raise ValueError(f"could not choose a CAM layer automatically: a forward pass of a 1x3x{size[0]}x{size[1]} "
                         f"image failed ({err}); pass layer='<module path>'") from err
    finally:
        for handle in handles:
            handle.remove()
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        last = f"blocks.{len(blocks) - 1}"
        if [len(s) for s in shapes.get(last, [])] == [3]:
            norm1 = getattr(blocks[-1], "norm1", None)
            return f"{last}.norm1" if isinstance(norm1, nn.Module) and len(shapes.get(f"{last}.norm1", [])) == 1 else last

    def spatial(calls: list[tuple[int, ...]]) -> bool:
        if len(calls) != 1 or len(calls[0]) != 4:
            return False
        height, width = calls[0][1:3] if channels_last else calls[0][2:]
        return height > 1 and width > 1

    candidates = [name for name, _ in modules if spatial(shapes.get(name, []))]
    if not candidates:
        raise ValueError("could not choose a CAM layer automatically: no module outputs a (B,C,h,w) feature map "
                         f"with h,w > 1 (nor (B,N,D) tokens of model.blocks) for a 1x3x{size[0]}x{size[1]} image; "
                         "pass layer='<module path>' or name one with Classifier(layers={'features': '<path>'})")
    order = list(shapes)  # modules in the order their forward finished
    return max(candidates, key=order.index)
