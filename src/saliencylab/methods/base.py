"""The method contract, its registry, and the scoped model state every method runs under.

``method = build("gradcam", classifier, layer="auto", max_batch=64)`` binds the model and typed,
keyword-only hyper-parameters; ``maps = method.attribute(images, targets)`` takes data only and
returns raw (not normalised) maps ``(B,K,H,W)`` float32 at input resolution on the input's
device, NaN for padded targets.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, ClassVar, TypeVar

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from saliencylab.models.classifier import Classifier, captured_output, check_images, scoped_eval
from saliencylab.targets import PAD, as_targets, check_class_range, valid_pairs

_REGISTRY: dict[str, type["Method"]] = {}
OUTPUT_RANGES = ("raw", "nonnegative", "unit")
"""What a method's map values are (``Method.output_range``): ``raw`` (signed, any scale), ``nonnegative``
(>= 0, any scale) or ``unit`` (a mask in [0,1], used as it is: never min-max normalised before use)."""
M = TypeVar("M", bound=type["Method"])


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a Method subclass to the registry under ``name``."""
    def add(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type["Method"]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(names())}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict[str, object]:
    """The keyword-only hyper-parameters of a method with their defaults."""
    params = inspect.signature(get(name).__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str, os.PathLike), "bool": (bool,),
                 "None": (type(None),)}
"""Annotations whose values :func:`check_hyperparameters` checks, and what they accept (paths as str)."""


def _has_type(value: object, names: list[str]) -> bool:
    """Whether ``value`` has one of the simple types ``names`` (a bool is no number)."""
    if isinstance(value, bool):
        return "bool" in names
    return any(isinstance(value, _SIMPLE_TYPES[name]) for name in names)


def check_hyperparameters(name: str, settings: dict[str, object]) -> None:
    """ValueError unless every key of ``settings`` is a hyper-parameter of method ``name`` and every value of
    one annotated with simple types (int, float, str, bool, None and their unions) has one of them."""
    allowed = hyperparameters(name)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no hyper-parameter(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(f'{k}={v!r}' for k, v in allowed.items())}")
    annotations = {p.name: p.annotation for p in inspect.signature(get(name).__init__).parameters.values()}
    for key, value in settings.items():
        names = [part.strip() for part in str(annotations[key]).split("|")]
        if set(names) <= set(_SIMPLE_TYPES) and not _has_type(value, names):
            raise ValueError(f"method {name!r}: {key} must be {' or '.join(names)} (default {allowed[key]!r}), "
                             f"got {value!r} ({type(value).__name__})")


def build(name: str, classifier: Classifier, **kwargs: object) -> "Method":
    """Instantiate the registered method ``name`` bound to ``classifier``; unknown kwargs or values of the
    wrong type are an error (:func:`check_hyperparameters`)."""
    check_hyperparameters(name, kwargs)
    return get(name)(classifier, **kwargs)


def selected_scores(classifier: Classifier, logits: Tensor, classes: Tensor) -> Tensor:
    """Scores (N,) of class ``classes[i]`` for row i, after the classifier's score function."""
    check_class_range(classes, logits.shape[1])
    return classifier.apply_score(logits).gather(1, classes.view(-1, 1)).squeeze(1)


@contextmanager
def math_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` (timm and torchvision ViT/Swin attention) on its math kernel.

    The fused kernels (flash, memory-efficient) have no double backward; second-order methods
    (gradient-Hessian, Grad-CAM++ with ``derivatives="general"``) run their forward under this.
    """
    with sdpa_kernel(SDPBackend.MATH):
        yield


@dataclass(frozen=True)
class Passes:
    """The least work a method needs per (image, target): forward and backward passes of the classifier, or of
    ``network`` for a method that runs its own network instead (a trained explainer): a function of the
    (B,3,H,W) images in [0,1], whose one forward on the batch the speed benchmark then times as the unit."""

    forward: float
    backward: float
    network: Callable[[Tensor], Tensor] | None = None


class Method:
    """Base class.

    Subclasses implement :meth:`attribute_pairs` (one class per image; the base expands the
    (image, target) pairs and chunks them by ``max_batch``), or override
    :meth:`attribute_targets` when one pass serves every class of an image (RISE, occlusion);
    and :meth:`passes`, the minimum work the speed benchmark compares the run time with.

    What the engine needs to know is declared here, as class attributes giving the value at the
    default hyper-parameters; a subclass whose value depends on a hyper-parameter (or on the
    network it loads) sets the instance's own in ``__init__``:

    - ``output_range``: one of OUTPUT_RANGES (default ``"raw"``);
    - ``per_class``: False for a class-agnostic method, whose map is the same for every target
      of an image (default True);
    - ``trained``: True when the method needs a trained network (``checkpoint=``; default False);
    - ``layer``: the classifier layer the maps are read from (CAM methods set their ``layer=``), whose
      grid must be at least 2x2 for the images given; None (default): only the forward pass must work.
    """

    name: ClassVar[str] = ""
    layer: str | None = None
    output_range: str = "raw"
    per_class: bool = True
    trained: bool = False

    def __init__(self, classifier: Classifier, *, max_batch: int = 64) -> None:
        if not isinstance(classifier, Classifier):
            raise TypeError("methods take a saliencylab.Classifier; wrap your model with "
                            "saliencylab.Classifier(model, mean, std)")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.classifier = classifier
        self.max_batch = max_batch

    def attribute(self, images: Tensor, targets: int | list[int] | Tensor) -> Tensor:
        """Maps (B,K,H,W) float32 for images (B,3,H,W) in [0,1] and targets (B,K) (see saliencylab.targets);
        float64 images are converted to float32 (the networks' precision)."""
        check_images(images)
        if images.dtype == torch.float64:
            images = images.float()
        if not self.classifier.fits(*images.shape[2:], self.layer):
            minimum = self.classifier.minimum_size(self.layer)
            reason = ("a forward pass fails at every square side up to 1024" if minimum is None else
                      f"expected at least {minimum}x{minimum}" + ("" if self.layer is None else
                      f" (below it layer {self.layer!r} is a single cell: the maps would be constant)"))
            raise ValueError(f"images of {images.shape[2]}x{images.shape[3]} do not fit this classifier; {reason}")
        targets = as_targets(targets, images.shape[0], self.classifier.num_classes)
        with scoped_eval(self.classifier):
            maps = self.attribute_targets(images.detach(), targets.to(images.device))
        return maps.masked_fill((targets == PAD).to(maps.device)[..., None, None], float("nan"))

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        """Maps (B,K,H,W) for images (B,3,H,W) and validated targets (B,K); padded slots may hold anything.

        Runs in eval mode with frozen parameters. The default expands the valid (image, target)
        pairs and calls :meth:`attribute_pairs` on chunks of ``max_batch`` pairs.
        """
        batch, _, height, width = images.shape
        rows, slots, classes = valid_pairs(targets)
        maps = torch.zeros((batch, targets.shape[1], height, width), dtype=torch.float32, device=images.device)
        for start in range(0, len(rows), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            maps[rows[chunk], slots[chunk]] = self.attribute_pairs(images[rows[chunk]], classes[chunk]).float()
        return maps

    def attribute_pairs(self, images: Tensor, classes: Tensor) -> Tensor:
        """Maps (N,H,W) for N images (N,3,H,W) and one class each (N,)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attribute_pairs nor attribute_targets")

    def passes(self, height: int, width: int) -> Passes:
        """Minimum classifier passes per (image, target) for images of this size (default: one of each)."""
        return Passes(forward=1, backward=1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in hyperparameters(self.name))
        return f"{type(self).__name__}({params})"
