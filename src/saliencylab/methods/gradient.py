"""Gradient attributions: vanilla gradient, input × gradient, integrated gradients."""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register, scoped_eval, selected_scores
from saliencylab.models.classifier import Classifier
from saliencylab.perturb import FILLS, fill_images
from saliencylab.targets import as_targets

REDUCTIONS = ("max_abs", "abs", "signed")


def input_gradient(classifier: Classifier, images: Tensor, classes: Tensor) -> Tensor:
    """d score[class] / d image for each row: (N,3,H,W). Leaves ``images`` and its .grad untouched."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = selected_scores(classifier, classifier(inputs), classes).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    return grad


def reduce_channels(values: Tensor, reduce: str) -> Tensor:
    """(N,3,H,W) -> (N,H,W): ``max_abs`` max over channels of |v|, ``abs`` sum of |v|, ``signed`` sum of v."""
    if reduce == "max_abs":
        return values.abs().amax(dim=1)
    if reduce == "abs":
        return values.abs().sum(dim=1)
    return values.sum(dim=1)


def reduced_range(reduce: str) -> str:
    """The output range of maps reduced over RGB with ``reduce``: signed sums are raw, the others >= 0."""
    return "raw" if reduce == "signed" else "nonnegative"


@register("gradient")
class Gradient(Method):
    """Vanilla gradient saliency (Simonyan et al., 2014): d score / d input.

    ``reduce``: ``"max_abs"`` (default; the paper and TorchRay: max over RGB of |grad|),
    ``"abs"`` (sum of |grad| over RGB) or ``"signed"`` (sum over RGB).
    """

    output_range = "nonnegative"

    def __init__(self, classifier: Classifier, *, reduce: str = "max_abs", max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce
        self.output_range = reduced_range(reduce)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        return reduce_channels(input_gradient(self.classifier, images, classes), self.reduce)


@register("input_x_gradient")
class InputXGradient(Gradient):
    """Input × gradient (Shrikumar et al., 2016): x ⊙ dS/dx, x the [0,1] image, reduced over RGB.

    The product is taken in the classifier's input space (images in [0,1], the normalisation is
    part of the model), as Captum's ``InputXGradient`` on a model that takes [0,1] images.
    ``reduce`` as for ``gradient``, default ``"signed"`` (sum over RGB, so the map sums to Σ x·∇S).
    """

    output_range = "raw"

    def __init__(self, classifier: Classifier, *, reduce: str = "signed", max_batch: int = 64) -> None:
        super().__init__(classifier, reduce=reduce, max_batch=max_batch)

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        return reduce_channels(images * input_gradient(self.classifier, images, classes), self.reduce)


QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes (alphas in [0,1]) and weights (summing to 1) of Captum's integral approximations, float64 (steps,)."""
    if method == "gausslegendre":  # Golub-Welsch: eigenvalues of the Jacobi matrix of the Legendre polynomials
        k = torch.arange(1, steps, dtype=torch.float64)
        off = k / torch.sqrt(4 * k * k - 1)
        nodes, vectors = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
        return (nodes + 1) / 2, vectors[0] ** 2  # weights 2·v0² on [-1,1], halved on [0,1]
    rule = method.removeprefix("riemann_")
    if rule == "trapezoid":  # Captum's weights are (1/steps)·[½,1,…,1,½], summing to 1 − 1/steps: see IntegratedGradients
        weights = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    weights = torch.full((steps,), 1 / steps, dtype=torch.float64)
    start = {"left": 0.0, "middle": 0.5, "right": 1.0}[rule] / steps
    return torch.linspace(start, start + 1 - 1 / steps, steps, dtype=torch.float64), weights


@register("integrated_gradients")
class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al., 2017): (x − b) ⊙ ∫₀¹ dS/dx(b + α(x − b)) dα, reduced over RGB.

    ``steps=50`` and ``method="gausslegendre"`` are Captum's defaults; ``method`` takes Captum's
    names and nodes (``riemann_left|right|middle|trapezoid``; Riemann rules need steps > 1) and
    weights, except ``riemann_trapezoid``: its weights here are the trapezoid rule's
    1/(steps−1)·[½,1,…,1,½], where Captum's sum to 1 − 1/steps (Captum's map = ours·(steps−1)/steps,
    so it is never complete). ``baseline``: ``"black"`` (zeros), ``"blur"`` (the image blurred with a Gaussian
    of ``blur_sigma`` px; kernel 2·⌈3σ⌉+1, capped to the image size), ``"mean"`` (the classifier's
    mean colour, i.e. zero after normalisation) or a tensor (3,H,W) / (1,3,H,W) in [0,1].
    ``reduce`` as for ``gradient``, default ``"signed"``: then each map sums to S(x) − S(b) up to
    the quadrature error (see :meth:`attribute_with_delta`). The steps × (image, target) points
    run ``max_batch`` at a time.
    """

    def __init__(self, classifier: Classifier, *, steps: int = 50, method: str = "gausslegendre",
                 baseline: str | Tensor = "black", blur_sigma: float = 10.0, reduce: str = "signed",
                 max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if method not in QUADRATURES:
            raise ValueError(f"method must be one of {QUADRATURES}, got {method!r}")
        if steps < (1 if method == "gausslegendre" else 2):
            raise ValueError(f"steps must be >= 1 (>= 2 for Riemann rules), got {steps} with method={method!r}")
        if isinstance(baseline, Tensor):
            if baseline.dim() not in (3, 4) or baseline.shape[-3] != 3 or baseline.dim() == 4 and baseline.shape[0] != 1:
                raise ValueError(f"a baseline tensor must have shape (3,H,W) or (1,3,H,W), got {tuple(baseline.shape)}")
            if not baseline.dtype.is_floating_point or baseline.min() < 0 or baseline.max() > 1:
                raise ValueError("a baseline tensor must be a float image with values in [0,1], like the images")
            baseline = baseline.detach()
        elif baseline not in FILLS:
            raise ValueError(f"baseline must be one of {FILLS} or a (3,H,W) tensor in [0,1], got {baseline!r}")
        if blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.steps, self.method, self.baseline, self.blur_sigma, self.reduce = steps, method, baseline, blur_sigma, reduce
        self.output_range = reduced_range(reduce)

    def baselines(self, images: Tensor) -> Tensor:
        """The baseline b (N,3,H,W) of each image (N,3,H,W)."""
        if isinstance(self.baseline, Tensor):
            if self.baseline.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"the baseline is {tuple(self.baseline.shape[-2:])} but the images are "
                                 f"{tuple(images.shape[-2:])}")
            return self.baseline.to(images).view(1, 3, *images.shape[-2:]).expand_as(images)
        return fill_images(images, self.baseline, self.classifier.mean, self.blur_sigma)

    def integrated(self, images: Tensor, classes: Tensor) -> Tensor:
        """Unreduced attributions (N,3,H,W): rows of step-major (step, pair) points, ``max_batch`` at a time."""
        alphas, weights = (t.to(images) for t in quadrature(self.method, self.steps))
        baselines = self.baselines(images)
        diff = images - baselines
        total = torch.zeros_like(images)
        rows = torch.arange(self.steps * len(images), device=images.device)
        for chunk in rows.split(self.max_batch):
            step, pair = chunk // len(images), chunk % len(images)
            points = baselines[pair] + alphas[step].view(-1, 1, 1, 1) * diff[pair]
            grad = input_gradient(self.classifier, points, classes[pair])
            total.index_add_(0, pair, grad * weights[step].view(-1, 1, 1, 1))
        return total * diff

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        return reduce_channels(self.integrated(images, classes), self.reduce)

    def attribute_with_delta(self, images: Tensor, targets: int | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Maps (B,K,H,W) and the convergence delta (B,K) = Σ attribution − (S(x) − S(b)), as Captum's.

        Σ attribution sums the unreduced (3,H,W) attribution; with ``reduce`` other than
        ``"signed"`` it comes from an extra signed run. Padded targets get NaN.
        """
        maps = self.attribute(images, targets)
        if self.reduce == "signed":
            signed = maps
        else:
            twin = copy.copy(self)
            twin.reduce = "signed"
            signed = twin.attribute(images, targets)
        targets = as_targets(targets, images.shape[0], self.classifier.num_classes).to(images.device)
        classes = targets.clamp_min(0)
        with torch.no_grad(), scoped_eval(self.classifier):
            gain = torch.cat([self.classifier.scores(x).gather(1, c) - self.classifier.scores(self.baselines(x)).gather(1, c)
                              for x, c in zip(images.detach().split(self.max_batch), classes.split(self.max_batch))])
        return maps, signed.sum(dim=(-2, -1)) - gain

    def passes(self, height: int, width: int) -> Passes:
        return Passes(forward=self.steps, backward=self.steps)
