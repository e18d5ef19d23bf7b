"""The Classifier wrapper: the one way every method, metric and trainer sees a model."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD

SCORES = ("logit", "softmax", "sigmoid")
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class Layout:
    """How one layer's output reads as a (B,C,h,w) grid, and back.

    ``kind``: ``"nchw"`` (CNN maps), ``"nhwc"`` (channels-last: Swin stages, ConvNeXt block
    internals) or ``"tokens"`` ((B,N,D): ``prefix`` class/distillation tokens first, then the
    ``height`` x ``width`` patches in row-major order).
    """

    kind: str
    prefix: int = 0
    height: int = 0
    width: int = 0

    def to_grid(self, output: Tensor) -> Tensor:
        """A raw layer output (or its gradient) -> (B,C,h,w)."""
        if self.kind == "nchw":
            return output
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        return output[:, self.prefix:].transpose(1, 2).reshape(output.shape[0], output.shape[2], self.height, self.width)

    def from_grid(self, grid: Tensor) -> Tensor:
        """(B,C,h,w) -> the layer's raw layout; prefix tokens are zero (a grid holds no value for them)."""
        if self.kind == "nchw":
            return grid
        if self.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([patches.new_zeros(grid.shape[0], self.prefix, grid.shape[1]), patches], dim=1)


def _fits(height: int, width: int, size: tuple[int, int]) -> bool:
    """Whether a height x width grid is the input ``size`` (H,W) shrunk by one stride for both axes (to within rounding)."""
    big_h, big_w = size
    return 0 < height <= big_h and 0 < width <= big_w and abs(width * big_h - height * big_w) < min(big_h, big_w)


def _channels_last_hint(module: nn.Module | None, model: nn.Module, channels: int) -> bool:
    """A tie-break for a (B,a,b,c) output whose both readings fit: timm's ``output_fmt="NHWC"``, or a
    LayerNorm / Linear module over the last axis (a channels-last norm or projection)."""
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return True
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape) == (channels,)
    return isinstance(module, nn.Linear) and module.out_features == channels


def _patch_grid(patches: int, size: tuple[int, int], model: nn.Module) -> tuple[int, int] | None:
    """(h,w) with h*w = patches: timm's ``patch_embed.grid_size`` when it matches, else the divisor pair fitting ``size``."""
    grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", ()) or ())
    if len(grid) == 2 and grid[0] * grid[1] == patches:
        return int(grid[0]), int(grid[1])
    pairs = [(h, patches // h) for h in range(1, patches + 1) if patches % h == 0 and _fits(h, patches // h, size)]
    return pairs[0] if len(pairs) == 1 else None


def infer_layout(output: Tensor, size: tuple[int, int], model: nn.Module, module: nn.Module | None = None,
                 declared: str = "auto") -> Layout:
    """The layout of ``output``, a layer's output for input images of ``size`` (H,W).

    4D: the two axes that are the input shrunk by one stride are the grid ((B,C,h,w) or (B,h,w,C));
    when both readings fit (C equal to a grid side) timm's ``output_fmt`` or a channels-last
    LayerNorm/Linear module decides, else NCHW. 3D tokens (B,N,D): timm's ``num_prefix_tokens``, or
    torchvision's ``class_token`` (1), else the fewest leading tokens whose remainder tiles the input's
    aspect ratio; the patch grid is timm's ``patch_embed.grid_size`` or the divisor pair fitting ``size``.
    ``declared`` (one of LAYOUTS) forces the kind.
    """
    if declared not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {declared!r}")
    dims = {3: "tokens", 4: "4D"}.get(output.dim())
    if dims is None:
        raise ValueError(f"a layer read as a grid must output a (B,C,h,w) map, a channels-last (B,h,w,C) map or "
                         f"(B,N,D) tokens, got shape {tuple(output.shape)}")
    if declared != "auto" and (declared == "tokens") != (dims == "tokens"):
        raise ValueError(f"layout {declared!r} needs a {3 if declared == 'tokens' else 4}D layer output, "
                         f"got shape {tuple(output.shape)}")
    if dims == "4D":
        if declared != "auto":
            return Layout(declared)
        first, nchw, nhwc = output.shape[1:], _fits(*output.shape[2:], size), _fits(*output.shape[1:3], size)
        if nchw != nhwc:
            return Layout("nhwc" if nhwc else "nchw")
        return Layout("nhwc" if _channels_last_hint(module, model, int(first[-1])) else "nchw")
    tokens = output.shape[1]
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None and isinstance(getattr(model, "class_token", None), Tensor):
        prefix = 1
    for start in [prefix] if prefix is not None else range(tokens):
        grid = _patch_grid(tokens - start, size, model)
        if grid is not None:
            return Layout("tokens", start, *grid)
    raise ValueError(f"cannot lay {tokens} tokens on a patch grid of a {size[0]}x{size[1]} input "
                     f"({prefix if prefix is not None else 'any number of'} prefix tokens)")


@contextmanager
def scoped_eval(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with frozen parameters; restore both flags afterwards, always.

    Only the modules in training mode and the parameters requiring gradients are switched and
    switched back, found in one walk over the modules (every method call enters this: on a ResNet-50 it
    costs 0.11 ms; saving and restoring every flag through ``modules()`` and ``parameters()`` took 0.7 ms,
    2 % of a Grad-CAM)."""
    modules = list(model.modules())
    training = [module for module in modules if module.training]
    trainable = list({id(param): param for module in modules for param in module._parameters.values()
                      if param is not None and param.requires_grad}.values())  # a shared parameter once
    # (each module's own ``_parameters``: ``parameters()`` would walk the modules again, at 2.5x the cost)
    if training:
        model.eval()  # (through train(False), which a module may override)
    for param in trainable:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for module in training:
            module.training = True
        for param in trainable:
            param.requires_grad_(True)


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
    path: ``"auto"`` (default: inferred from the output's shape, the input size and the module, see
    :func:`infer_layout`), ``"nchw"``, ``"nhwc"`` (channels-last, e.g. Swin) or ``"tokens"``
    ((B,N,D): prefix tokens dropped, patches reshaped to their grid).
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
        self._fits: dict[tuple[int, int, str | None], bool] = {}
        self.memory_format = torch.contiguous_format
        self.class_names = list(class_names) if class_names is not None else None

    def normalize(self, images: Tensor) -> Tensor:
        """(B,3,H,W) in [0,1] -> normalised (B,3,H,W)."""
        return (images - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B,C) of images (B,3,H,W) in [0,1]."""
        return self.forward_normalized(self.normalize(images))

    def forward_normalized(self, normalized: Tensor) -> Tensor:
        """Logits (B,C) of images (B,3,H,W) already normalised by :meth:`normalize`."""
        return self.model(normalized.contiguous(memory_format=self.memory_format))

    def use_channels_last(self) -> "Classifier":
        """Keep the network's 4-D weights and its inputs channels-last (NHWC); returns self.

        On CPUs, oneDNN convolutions run about 1.5x faster so (the small CNN's forward on 256 images of
        96 px: 2.6 s against 3.9 s); every method's maps agree with the default layout to float rounding
        (``tests/test_methods.py``). Layers still read as their logical layout (:func:`infer_layout`).
        """
        self.model.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last
        return self

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
        try:  # a walk down the path, not a listing of every module (layer_path runs several times a method call)
            self.model.get_submodule(path)
        except AttributeError:
            known = ", ".join(self.layers) or "none"
            raise ValueError(f"unknown layer {name!r}: not a named layer (known: {known}) nor a module path of the model"
                             ) from None
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

    def read_layout(self, name: str, output: Tensor, size: tuple[int, int]) -> Layout:
        """The :class:`Layout` of ``output``, layer ``name``'s output for input images of ``size`` (H,W)."""
        return infer_layout(output, tuple(size), self.model, self.layer(name), self.layer_layout(name))

    def fits(self, height: int, width: int, layer: str | None = None) -> bool:
        """Whether a 1x3xHxW image passes the model and, with ``layer`` (a name as in :meth:`layer_path`), that
        layer's output reads as a grid of at least 2x2 (else a map read from it is constant). Probed once
        per (size, layer) with a zero image."""
        key = (height, width, layer)
        if key not in self._fits:
            module = self.model if layer is None else self.layer(layer)
            param = next(self.model.parameters(), None)
            image = torch.zeros(1, 3, height, width, device=param.device if param is not None else None)
            try:
                with scoped_eval(self.model), torch.no_grad(), captured_output(module) as outputs:
                    self(image)
            except Exception:  # a probe: a forward pass that fails in any way means this size does not fit
                outputs = None
            if outputs is None:
                self._fits[key] = False
            elif layer is None or not outputs:  # (a layer the forward pass skips: its method says so)
                self._fits[key] = True
            else:  # a layout error is the layer's, not the size's: it propagates
                grid = self.read_layout(layer, outputs[0], (height, width)).to_grid(outputs[0])
                self._fits[key] = min(grid.shape[2:]) >= 2
        return self._fits[key]

    def minimum_size(self, layer: str | None = None) -> int | None:
        """The smallest side S of square images that :meth:`fits` (with ``layer``): sides 2, 4, ... up to 1024,
        then bisection below the first that fits. None when none fits (a fixed-size model, e.g. a ViT for 224)."""
        side = 2
        while not self.fits(side, side, layer):
            if side >= 1024:
                return None
            side *= 2
        low = side // 2  # does not fit (or is 1)
        while side - low > 1:
            middle = (low + side) // 2
            low, side = (low, middle) if self.fits(middle, middle, layer) else (middle, side)
        return side

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


def input_size(model: nn.Module) -> tuple[int, int]:
    """The (H,W) a model is built for: timm's ``patch_embed.img_size``, torchvision ViT's ``image_size``, else 224x224."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or getattr(model, "image_size", None) or 224
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def find_feature_layer(model: nn.Module, size: tuple[int, int] | None = None) -> str:
    """The module path a CAM explains by default, found by one forward of a 1x3xHxW zero image.

    Token models (timm ViT/DeiT/BEiT ``blocks``, torchvision ViT ``encoder.layers``: the last
    Sequential/ModuleList whose every block outputs (B,N,D) tokens): the last block's first
    LayerNorm (its input to attention, as pytorch-grad-cam recommends: the last block's own output
    reaches a class-token head only through the class token), else that block. Otherwise the last
    module with parameters, run exactly once, whose output reads (:func:`infer_layout`) as a grid
    with h,w > 1: the last feature map before global pooling, NCHW (CNNs, ConvNeXt) or
    channels-last (Swin's final norm). ``size``: (H,W), default :func:`input_size`.
    """
    size = tuple(size or input_size(model))
    outputs: dict[str, list[object]] = {}

    def record(name: str):
        return lambda _m, _i, out: outputs.setdefault(name, []).append(out if isinstance(out, Tensor) else None)

    modules = {name: m for name, m in model.named_modules() if name}
    handles = [m.register_forward_hook(record(name)) for name, m in modules.items()]
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
    once = {name: calls[0] for name, calls in outputs.items() if len(calls) == 1 and calls[0] is not None}
    order = list(outputs)  # modules in the order their forward finished

    def tokens(name: str) -> bool:
        return name in once and once[name].dim() == 3

    stacks = [name for name, m in modules.items() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m)
              and all(tokens(f"{name}.{child}") for child, _ in m.named_children())]
    if stacks:
        lasts = [f"{name}.{list(modules[name].named_children())[-1][0]}" for name in stacks]
        last = max(lasts, key=order.index)
        norms = [f"{last}.{child}" for child, m in modules[last].named_children() if isinstance(m, nn.LayerNorm)]
        return norms[0] if norms and tokens(norms[0]) else last

    def spatial(name: str) -> bool:
        if name not in once or once[name].dim() != 4 or next(modules[name].parameters(), None) is None:
            return False
        grid = infer_layout(once[name], size, model, modules[name]).to_grid(once[name])
        return grid.shape[2] > 1 and grid.shape[3] > 1

    candidates = [name for name in modules if spatial(name)]
    if not candidates:
        raise ValueError("could not choose a CAM layer automatically: no module with parameters outputs a feature "
                         f"map with h,w > 1 (nor tokens of a stack of blocks) for a 1x3x{size[0]}x{size[1]} image; "
                         "pass layer='<module path>' or name one with Classifier(layers={'features': '<path>'})")
    return max(candidates, key=order.index)
