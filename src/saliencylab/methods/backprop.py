"""Modified-backward attributions: guided backpropagation, deconvnet and guided Grad-CAM.

The rules replace the backward of every ``nn.ReLU`` module for the duration of one call
(:func:`relu_backward_rule`). ReLUs called functionally (``F.relu``, ``torch.relu``) cannot be
intercepted and keep their ordinary gradient, as in Captum; a model without any ``nn.ReLU``
module is rejected when the method is built.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from saliencylab.methods.base import Method, Passes, register
from saliencylab.methods.cam import GradCAM
from saliencylab.methods.gradient import REDUCTIONS, input_gradient, reduce_channels, reduced_range
from saliencylab.models.classifier import Classifier


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes the gradient only where the input and the gradient are positive.

    In place when the module is (``inplace``, as torchvision's ReLUs), as the module would be: its
    output is saved, not its input (x > 0 exactly where ReLU(x) > 0), so no activation is copied.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
        out = x.clamp_min_(0) if inplace else x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        # g·[x > 0] into a new tensor, then its negatives zeroed in place: g⁺·[x > 0] with one allocation
        return torch.ops.aten.threshold_backward(grad, out, 0).clamp_min_(0), None


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is ReLU(gradient), whatever the input; in place when the module is."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
        return x.clamp_min_(0) if inplace else x.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp_min(0), None


RULES: dict[str, type[torch.autograd.Function]] = {"guided": _GuidedReLU, "deconvnet": _DeconvReLU}


def relu_modules(model: nn.Module) -> list[nn.ReLU]:
    """The ``nn.ReLU`` modules of ``model``; ValueError when there are none."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("this method changes the backward of nn.ReLU modules, and the model has none; "
                         "ReLUs called as functions (F.relu, torch.relu) cannot be intercepted: "
                         "use nn.ReLU modules")
    return relus


@contextmanager
def relu_backward_rule(model: nn.Module, rule: str) -> Iterator[None]:
    """Run every ``nn.ReLU`` of ``model`` through the backward ``rule`` (a key of RULES); always restored.

    Each ReLU's forward is shadowed by an instance attribute calling the rule's autograd
    function, in place exactly when the module is; the attribute is deleted afterwards (or the
    module's own instance ``forward`` put back), even on errors.
    """
    function = RULES[rule]
    saved = {m: m.__dict__.get("forward") for m in relu_modules(model)}
    try:
        for module in saved:
            module.forward = partial(function.apply, inplace=module.inplace)
        yield
    finally:
        for module, own in saved.items():
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own


class ReLURuleGradient(Method):
    """Input gradient with the ReLU backward ``rule``, reduced over RGB (``reduce`` as for ``gradient``)."""

    rule: str = ""
    output_range = "nonnegative"

    def __init__(self, classifier: Classifier, *, reduce: str = "max_abs", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        relu_modules(classifier)
        self.reduce = reduce
        self.output_range = reduced_range(reduce)

    def rule_gradient(self, images: Tensor, classes: Tensor) -> Tensor:
        """The modified input gradient (N,3,H,W)."""
        with relu_backward_rule(self.classifier, self.rule):
            return input_gradient(self.classifier, images, classes)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        return reduce_channels(self.rule_gradient(images, classes), self.reduce)


@register("guided_backprop")
class GuidedBackprop(ReLURuleGradient):
    """Guided backpropagation (Springenberg et al., 2015): dS/dx with ReLU backward g·[x > 0]·[g > 0].

    ``reduce="max_abs"`` (TorchRay's default: max over RGB of |grad|); Captum's
    ``GuidedBackprop`` returns the (3,H,W) gradient that ``reduce`` summarises. Only
    ``nn.ReLU`` modules are modified (see the module docstring).
    """

    rule = "guided"


@register("deconvnet")
class Deconvnet(ReLURuleGradient):
    """Deconvnet (Zeiler & Fergus, 2014): dS/dx with ReLU backward max(g, 0), ignoring the forward input.

    ``reduce="max_abs"`` (TorchRay's default); as Captum's ``Deconvolution`` before reduction.
    Only ``nn.ReLU`` modules are modified (see the module docstring).
    """

    rule = "deconvnet"


@register("guided_gradcam")
class GuidedGradCAM(ReLURuleGradient):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided-backprop gradient (3,H,W) ⊙ upsampled Grad-CAM, reduced over RGB.

    Grad-CAM is ``gradcam`` at ``layer`` (raw, bilinear upsampling, as Captum's ``GuidedGradCam``
    with ``interpolate_mode="bilinear"``); each RGB channel of the guided gradient is multiplied by
    it, as pytorch-grad-cam's recipe ``cam_mask * gb`` (which min-max normalises the CAM first: a
    per-image scale). ``reduce="max_abs"`` as ``guided_backprop``. Two passes: the Grad-CAM
    gradient must not go through the guided ReLUs.
    """

    rule = "guided"

    def __init__(self, classifier: Classifier, *, layer: str = "auto", reduce: str = "max_abs",
                 max_batch: int = 64) -> None:
        super().__init__(classifier, reduce=reduce, max_batch=max_batch)
        self.cam = GradCAM(classifier, layer=layer, max_batch=max_batch)
        self.layer = layer

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        cam = self.cam.attribute_pairs(images, classes)
        return reduce_channels(self.rule_gradient(images, classes) * cam.unsqueeze(1), self.reduce)

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=2, backward=2)
