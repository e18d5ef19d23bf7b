"""Class activation maps from a feature layer: CAM, Grad-CAM and its variants, Score-CAM.

Every method reads the layer ``layer`` (``"auto"``: see ``Classifier.layer_path``) through its
``Classifier.read_layout`` (:class:`~saliencylab.models.classifier.Layout`), so CNN maps,
channels-last maps (Swin, ConvNeXt block internals) and ViT/DeiT/BEiT tokens all become
(N,C',h,w) grids; gradients are taken w.r.t. the raw layer output and reshaped identically. Maps are raw (no min-max normalisation) and upsampled bilinearly with
half-pixel centres to the input size.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliencylab.methods.base import (Method, Passes, captured_output, math_attention, register, scoped_eval,
                                      selected_scores)
from saliencylab.models.classifier import Classifier

DERIVATIVES = ("exp", "general")


def single_output(outputs: list[Tensor], layer: str) -> Tensor:
    """The one output a layer recorded in a forward pass."""
    if len(outputs) != 1:
        raise ValueError(f"layer {layer!r} ran {len(outputs)} times in one forward pass; "
                         "choose a layer that runs exactly once")
    if not isinstance(outputs[0], Tensor):
        raise ValueError(f"layer {layer!r} must output a tensor for a CAM, got {type(outputs[0]).__name__}")
    return outputs[0]


def grid(classifier: Classifier, layer: str, output: Tensor, size: tuple[int, int]) -> Tensor:
    """A raw output of ``layer`` for images of ``size`` (H,W) as (N,C',h,w), in the layer's layout."""
    return classifier.read_layout(layer, output, size).to_grid(output)


def raw_output(classifier: Classifier, layer: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """The raw output of ``layer`` and the logits (N,classes), without gradients."""
    with torch.no_grad(), captured_output(classifier.layer(layer)) as outputs:
        logits = classifier(images)
    return single_output(outputs, layer), logits


def layer_activation(classifier: Classifier, layer: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """Activation grid (N,C',h,w) of ``layer`` and the logits (N,classes), without gradients."""
    output, logits = raw_output(classifier, layer, images)
    return grid(classifier, layer, output, images.shape[-2:]), logits


def probe(classifier: Classifier, layer: str, height: int, width: int) -> Tensor:
    """The raw output of ``layer`` for one zero image of height x width (for pass counts), in eval mode."""
    param = next(classifier.parameters(), None)
    zeros = torch.zeros(1, 3, height, width, device=param.device if param is not None else None)
    with scoped_eval(classifier):
        return raw_output(classifier, layer, zeros)[0]


def graph_from_here(_module: nn.Module, _inputs: object, output: object) -> object:
    """Forward hook: the autograd graph starts at this module's output (as TorchRay's Grad-CAM), so the
    layers before it run without recording one. The output becomes a leaf that requires grad, handed on as
    a clone so that in-place operations after the module (ResNet's ``out += identity``) touch the clone."""
    return output.detach().requires_grad_(True).clone() if isinstance(output, Tensor) else None


def layer_activation_and_gradient(classifier: Classifier, layer: str, images: Tensor,
                                  classes: Tensor) -> tuple[Tensor, Tensor]:
    """Activation A (N,C',h,w) of ``layer`` and d score[class] / dA, one class per row.

    The weights are frozen and the graph starts at the layer (:func:`graph_from_here`), so the
    backward pass stops there."""
    module = classifier.layer(layer)
    handle = module.register_forward_hook(graph_from_here)
    try:
        with torch.enable_grad(), captured_output(module) as outputs:
            logits = classifier(images.detach())
            activation = single_output(outputs, layer)
            score = selected_scores(classifier, logits, classes).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    layout = classifier.read_layout(layer, activation, images.shape[-2:])
    return layout.to_grid(activation.detach()), layout.to_grid(grad)


@contextmanager
def shifted_output(module: nn.Module, shift: Tensor) -> Iterator[None]:
    """Add ``shift`` to the output of ``module`` during forward passes; the hook is always removed."""
    handle = module.register_forward_hook(lambda _m, _inp, out: out + shift)
    try:
        yield
    finally:
        handle.remove()


def derivative(values: Tensor, wrt: Tensor) -> Tensor:
    """d values[i] / d wrt[i] for values that depend on wrt elementwise; zero where there is no graph."""
    if not values.requires_grad:
        return torch.zeros_like(wrt)
    (grad,) = torch.autograd.grad(values.sum(), wrt, create_graph=True, allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad


def diagonal_derivatives(classifier: Classifier, layer: str, images: Tensor, classes: Tensor,
                         max_batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """First, second and third derivatives of score[class] w.r.t. each layer element on its own
    (the Hessian and third-derivative diagonals), each as the layer's grid (N,C',h,w).

    One copy of an image per layer element e, whose output gets ``t·onehot(e)`` added; as the
    copies are independent (eval mode), d^n score_copy / dt_copy^n are the diagonal entries.
    Exact, but one forward and three backward passes per element, chunked by ``max_batch``; runs
    under the math attention kernel (:func:`math_attention`) so transformers can be differentiated thrice.
    """
    module = classifier.layer(layer)
    sample = raw_output(classifier, layer, images[:1])[0]
    layout, shape = classifier.read_layout(layer, sample, images.shape[-2:]), sample.shape[1:]
    size = shape.numel()
    rows = torch.arange(len(images), device=images.device).repeat_interleave(size)
    elements = torch.arange(size, device=images.device).repeat(len(images))
    derivatives = torch.zeros(3, len(rows), device=images.device)
    for start in range(0, len(rows), max_batch):
        chunk = slice(start, start + max_batch)
        step = torch.zeros(len(rows[chunk]), device=images.device, requires_grad=True)
        shift = (step[:, None] * F.one_hot(elements[chunk], size).to(step)).view(-1, *shape)
        with torch.enable_grad(), shifted_output(module, shift), math_attention():
            score = selected_scores(classifier, classifier(images[rows[chunk]]), classes[rows[chunk]])
            first = derivative(score, step)
            second = derivative(first, step)
            third = derivative(second, step)
        derivatives[:, chunk] = torch.stack([first, second, third]).detach()
    return tuple(layout.to_grid(d.view(len(images), *shape)) for d in derivatives)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N,h,w) -> (N,H,W), bilinear with half-pixel centres (as OpenCV's resize)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """ReLU(Σ_k w_k A_k): weights (N,C'), activation (N,C',h,w) -> (N,h,w)."""
    return (weights[:, :, None, None] * activation).sum(1).relu()


class LayerCAM(Method):
    """Shared base of CAM methods on one feature layer (``layer="auto"``: see ``Classifier.layer_path``)."""

    def __init__(self, classifier: Classifier, *, layer: str = "auto", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        classifier.layer(layer)  # fail now, not at the first batch, when the layer does not exist
        self.layer = layer

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        activation, grad = layer_activation_and_gradient(self.classifier, self.layer, images, classes)
        return upsample(self.combine(activation, grad), images.shape[-2:])

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        """(N,C',h,w) activation and gradient -> (N,h,w) map."""
        raise NotImplementedError


@register("gradcam")
class GradCAM(LayerCAM):
    """Grad-CAM (Selvaraju et al., 2017): ReLU(Σ_k mean_hw(dS/dA_k) · A_k), upsampled bilinearly.

    Raw, not min-max normalised (pytorch-grad-cam normalises per image; use
    ``saliencylab.maps.normalize_minmax`` for the same).
    """

    output_range = "nonnegative"  # the final ReLU

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        weights = grad.mean(dim=(2, 3), keepdim=True)
        return (weights * activation).sum(1).relu()


@register("gradcam_elementwise")
class GradCAMElementwise(LayerCAM):
    """Element-wise Grad-CAM (Pillai & Pirsiavash, 'Explainable Models with Consistent Interpretations', AAAI 2021; HiResCAM-like): ReLU(Σ_k dS/dA_k ⊙ A_k), upsampled bilinearly.

    The map used by consistent-interpretation training; it keeps the gradient's spatial layout.
    Equal to pytorch-grad-cam's ``HiResCAM`` before its normalisation.
    """

    output_range = "nonnegative"  # the final ReLU

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        return (grad * activation).sum(1).relu()


@register("layercam")
class LayerCAMMethod(LayerCAM):
    """Layer-CAM (Jiang et al., 2021): ReLU(Σ_k ReLU(dS/dA_k) ⊙ A_k), upsampled bilinearly.

    As pytorch-grad-cam's ``LayerCAM`` (one layer; no multi-layer fusion) before its normalisation.
    """

    output_range = "nonnegative"  # the final ReLU

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        return (grad.relu() * activation).sum(1).relu()


@register("xgradcam")
class XGradCAM(LayerCAM):
    """XGrad-CAM (Fu et al., 2020): ReLU(Σ_k w_k A_k), w_k = Σ_hw A_k·dS/dA_k / (Σ_hw A_k + 1e-7).

    eps 1e-7 as pytorch-grad-cam's ``XGradCAM``.
    """

    output_range = "nonnegative"  # the final ReLU

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        weights = (activation * grad).sum((2, 3)) / (activation.sum((2, 3)) + 1e-7)
        return weighted_sum(weights, activation)


@register("gradcam_pp")
class GradCAMPlusPlus(LayerCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018): ReLU(Σ_k w_k A_k), w_k = Σ_hw α_k·ReLU(dS/dA_k),
    α = S'' / (2 S'' + Σ_hw A_k · S''') with S^(n) the n-th derivative of the score w.r.t. each A element.

    ``derivatives="exp"`` (default; the paper's Eq. 19 and pytorch-grad-cam's ``GradCAMPlusPlus``):
    the score is taken as exp(S), so S'' = g², S''' = g³ with g = dS/dA, α = g² / (2g² + Σ_hw A·g³ + 1e-6),
    α = 0 where g = 0, and w_k = Σ_hw α·ReLU(g) (the exp(S) factor of the paper's weights is dropped,
    as pytorch-grad-cam does). ``"general"`` (the paper's Eq. 10): the true diagonal second and third
    derivatives by autograd (:func:`diagonal_derivatives`; α = 0 where its denominator is 0), one forward
    and three backward passes per layer element, so only for small layers. For piecewise-linear heads
    (ReLU nets explaining a logit) S'' = S''' = 0 and the general map is all zero; use it with a
    softmax/sigmoid score or a smooth head.
    """

    output_range = "nonnegative"  # the final ReLU

    def __init__(self, classifier: Classifier, *, layer: str = "auto", derivatives: str = "exp",
                 max_batch: int = 64) -> None:
        super().__init__(classifier, layer=layer, max_batch=max_batch)
        if derivatives not in DERIVATIVES:
            raise ValueError(f"derivatives must be one of {DERIVATIVES}, got {derivatives!r}")
        self.derivatives = derivatives

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        if self.derivatives == "exp":
            return super().attribute_pairs(images, classes)
        first, second, third = diagonal_derivatives(self.classifier, self.layer, images, classes, self.max_batch)
        activation, _ = layer_activation(self.classifier, self.layer, images)
        denominator = 2 * second + activation.sum((2, 3), keepdim=True) * third
        alpha = torch.where(denominator != 0, second / denominator.where(denominator != 0, 1.0), 0.0)
        weights = (alpha * first.relu()).sum((2, 3))
        return upsample(weighted_sum(weights, activation), images.shape[-2:])

    def combine(self, activation: Tensor, grad: Tensor) -> Tensor:
        grad2 = grad ** 2
        alpha = grad2 / (2 * grad2 + activation.sum((2, 3), keepdim=True) * grad2 * grad + 1e-6)
        weights = (torch.where(grad != 0, alpha, 0.0) * grad.relu()).sum((2, 3))
        return weighted_sum(weights, activation)

    def passes(self, height: int, width: int) -> Passes:
        if self.derivatives == "exp":
            return Passes(1, 1)
        size = probe(self.classifier, self.layer, height, width)[0].numel()
        return Passes(1 + size, 3 * size)


@register("cam")
class CAM(LayerCAM):
    """CAM (Zhou et al., 2016): Σ_k w_ck A_k with w_c the class's row of the final nn.Linear, upsampled.

    Needs a model that ends in global average pooling of ``layer`` followed by one nn.Linear (the
    last nn.Linear whose in_features equals the layer's channels); checked on every batch (the
    logits must equal the Linear applied to the layer's spatial mean to within 1e-4 of the size of the
    Linear's terms Σ_k|w_ck ā_k| + |b_c|, a relative test that tiny logits cannot pass), else a ValueError. No ReLU,
    as in Zhou et al. (negative evidence stays negative). Explains the logit: the classifier's
    score function is not applied. Forward pass only.
    """

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        activation, logits = layer_activation(self.classifier, self.layer, images)
        selected_scores(self.classifier, logits, classes)  # checks the class range
        linear = self.final_linear(activation.shape[1])
        weights = linear.weight[classes]  # (N,C')
        terms = weights * activation.mean((2, 3))
        bias = linear.bias[classes] if linear.bias is not None else torch.zeros_like(terms[:, 0])
        expected = logits.gather(1, classes.view(-1, 1)).squeeze(1)
        scale = terms.abs().sum(1) + bias.abs()  # rounding error grows with the terms, not with a fixed atol
        if not ((terms.sum(1) + bias - expected).abs() <= 1e-4 * scale + 1e-30).all():
            raise ValueError(f"cam needs the model to end in global average pooling of layer {self.layer!r} "
                             "followed by one nn.Linear, but its logits differ from that Linear applied to the "
                             "layer's spatial mean; choose the last feature map before pooling or use gradcam")
        return upsample((weights[:, :, None, None] * activation).sum(1), images.shape[-2:])

    def final_linear(self, channels: int) -> nn.Linear:
        linears = [m for m in self.classifier.model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not linears:
            raise ValueError(f"cam needs an nn.Linear with in_features={channels} (the channels of layer "
                             f"{self.layer!r}) after global average pooling; the model has none: use gradcam")
        return linears[-1]

    def passes(self, height: int, width: int) -> Passes:
        return Passes(1, 0)


@register("scorecam")
class ScoreCAM(LayerCAM):
    """Score-CAM (Wang et al., 2020): ReLU(Σ_k w_k A_k), w = softmax_k(S(image masked by norm(up(A_k)))).

    Each channel A_k is upsampled to the input (bilinear, half-pixel centres), min-max normalised to
    [0,1] (eps 1e-8), and masks the image with ``Classifier.mask_images`` (mean-colour fill: equal to
    pytorch-grad-cam multiplying the normalised input by the mask); the masked images' scores are
    softmaxed over channels. One pass per channel serves all targets of an image; channels x images
    are chunked by ``max_batch``. Deviation: pytorch-grad-cam upsamples the masks with
    align_corners=True (``UpsamplingBilinear2d``); maps agree exactly when the layer has the input's size.
    """

    output_range = "nonnegative"  # the final ReLU

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        activation, _ = layer_activation(self.classifier, self.layer, images)
        channels = activation.shape[1]
        masks = upsample(activation.flatten(0, 1), (height, width)).view(batch, channels, height, width)
        low = masks.amin((2, 3), keepdim=True)
        masks = (masks - low) / (masks.amax((2, 3), keepdim=True) - low + 1e-8)
        rows = torch.arange(batch, device=images.device).repeat_interleave(channels)
        classes = targets.clamp(min=0)  # padded slots are overwritten with NaN by the base
        scores = torch.empty(batch * channels, targets.shape[1], device=images.device)
        # mask_images then normalising = the normalised image times the mask: one image-sized product a chunk
        # instead of seven (each over glibc's mmap threshold at 64 images of 224 px: page-faulted afresh)
        normalized = self.classifier.normalize(images).contiguous(memory_format=self.classifier.memory_format)
        with torch.no_grad():
            for start in range(0, len(rows), self.max_batch):
                chunk = slice(start, start + self.max_batch)
                first, last = start // channels, (min(start + self.max_batch, len(rows)) - 1) // channels
                image = normalized[first:first + 1] if first == last else normalized[rows[chunk]]
                masked = masks.flatten(0, 1)[chunk, None] * image
                logits = self.classifier.forward_normalized(masked).repeat_interleave(targets.shape[1], 0)
                scores[chunk] = selected_scores(self.classifier, logits, classes[rows[chunk]].flatten()).view(
                    -1, targets.shape[1])
        weights = scores.view(batch, channels, -1).softmax(1)  # (B,C',K)
        maps = torch.einsum("bck,bchw->bkhw", weights, activation).relu()
        return upsample(maps.flatten(0, 1), (height, width)).view(batch, -1, height, width).float()

    def passes(self, height: int, width: int) -> Passes:
        channels = grid(self.classifier, self.layer, probe(self.classifier, self.layer, height, width),
                        (height, width)).shape[1]
        return Passes(1 + channels, 0)
