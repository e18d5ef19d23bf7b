"""Any classifier as a :class:`Classifier`: a classifier folder, or ``torchvision:NAME`` / ``timm:NAME`` + weights.

A classifier folder holds ``classifier.json`` (how to rebuild the model) and ``classifier.safetensors``
(its weights), as :func:`save_classifier` writes them. Nothing is downloaded: torchvision and timm
models are built with random weights, then the user's weights file is loaded.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from saliencylab.files import write_atomic
from saliencylab.models.classifier import Classifier
from saliencylab.models.io import load_weights, save_state_dict
from saliencylab.models.zoo import build_classifier
from saliencylab.types import IMAGENET_MEAN, IMAGENET_STD

LIBRARIES = ("torchvision", "timm")
DEFAULT_IMAGE_SIZE = 224


def save_classifier(classifier: Classifier, out_dir: str | Path, *, arch: str, width: int = 32,
                    **extra: object) -> Path:
    """Write ``out_dir/classifier.safetensors`` (the wrapped model's state dict) and ``out_dir/classifier.json``.

    ``arch``: a zoo architecture (``build_classifier``; ``width`` for small_cnn) or ``torchvision:NAME`` /
    ``timm:NAME``. The JSON holds arch, num_classes, class_names, width, the classifier's mean, std and
    named layers, and ``extra`` (e.g. ``data={"image_size": 96}``, test scores). A classifier without
    class names needs ``num_classes=`` in ``extra``. :func:`load_trained_classifier` (or
    :func:`load_classifier`, or ``--classifier`` on the command line) reads the folder back. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    save_state_dict(classifier.model.state_dict(), out_dir / "classifier.safetensors")
    class_names = list(classifier.class_names or [])
    num_classes = len(class_names) if class_names else int(extra.pop("num_classes"))
    description = {"arch": arch, "num_classes": num_classes, "class_names": class_names, "width": width,
                   "mean": classifier.mean.tolist(), "std": classifier.std.tolist(), "layers": classifier.layers,
                   **extra}
    write_atomic(out_dir / "classifier.json", json.dumps(description, indent=2))
    return out_dir


def load_trained_classifier(out_dir: str | Path) -> tuple[Classifier, dict]:
    """Rebuild the classifier that :func:`save_classifier` wrote to ``out_dir``; returns it (eval mode) and its
    description."""
    out_dir = Path(out_dir)
    description_file = out_dir / "classifier.json"
    if not description_file.is_file():
        raise FileNotFoundError(f"{description_file} not found: train a classifier with fit_classifier (or "
                                "saliencylab train-classifier), or write one with save_classifier")
    description = json.loads(description_file.read_text())
    weights = out_dir / "classifier.safetensors"
    names = description["class_names"] or None
    if description["arch"].partition(":")[0] in LIBRARIES:
        classifier, _ = load_classifier(description["arch"], weights=weights, num_classes=description["num_classes"],
                                        class_names=names, mean=description["mean"], std=description["std"],
                                        layer=next(iter((description.get("layers") or {}).values()), None))
    else:
        classifier = build_classifier(description["arch"], description["num_classes"], class_names=names,
                                      width=description["width"], weights=weights)
    return classifier.eval(), description


def classifier_image_size(description: dict) -> int:
    """The image side a classifier expects: its description's ``image_size``, else ``data.image_size``
    (its training data, as fit_classifier callers record it), else 224."""
    return int(description.get("image_size") or description.get("data", {}).get("image_size") or DEFAULT_IMAGE_SIZE)


def read_class_names(source: str | Path) -> list[str]:
    """Class names from a text file (one a line; blank lines skipped), a ``.json`` file holding a list of
    strings, or ``torchvision:WEIGHTS`` (e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1``: the
    categories of that weights enum, shipped with torchvision, nothing downloaded)."""
    text = str(source)
    if text.startswith("torchvision:"):
        from torchvision.models import get_weight

        try:
            return list(get_weight(text.removeprefix("torchvision:")).meta["categories"])
        except (ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"class names {text!r}: expected torchvision:<Weights enum>.<member>, e.g. "
                             f"torchvision:ResNet18_Weights.IMAGENET1K_V1, with categories ({err})") from err
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} does not exist")
    if path.suffix == ".json":
        try:
            names = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"class names file {path} is not valid JSON ({err})") from err
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class names file {path} must hold a JSON list of strings")
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class names file {path} holds no names")
    return names


def _check_name(name: str, known: Sequence[str], what: str) -> None:
    """ValueError naming up to 5 close matches unless ``name`` is one of ``known``."""
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown {what}: {name!r}{hint}")


def build_model(spec: str, num_classes: int) -> tuple[nn.Module, dict]:
    """A random-weight classifier network for ``torchvision:NAME`` or ``timm:NAME`` with ``num_classes`` outputs.

    Returns it and its defaults: ``mean``/``std`` (ImageNet's; timm: the model's ``pretrained_cfg`` ones)
    and, for timm, ``image_size`` (``pretrained_cfg["input_size"]``).
    """
    library, _, name = spec.partition(":")
    if library == "torchvision":
        from torchvision import models

        _check_name(name, models.list_models(module=models), "torchvision classification model")
        return models.get_model(name, weights=None, num_classes=num_classes), {"mean": IMAGENET_MEAN,
                                                                                "std": IMAGENET_STD}
    if library == "timm":
        import timm

        if not timm.is_model(name):
            _check_name(name, timm.list_models(), "timm model")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        config = getattr(model, "pretrained_cfg", None) or {}
        defaults = {"mean": tuple(config.get("mean", IMAGENET_MEAN)), "std": tuple(config.get("std", IMAGENET_STD))}
        if config.get("input_size"):
            defaults["image_size"] = int(config["input_size"][-1])
        return model, defaults
    raise ValueError(f"model {spec!r}: expected torchvision:NAME or timm:NAME (e.g. torchvision:resnet18)")


def load_classifier(
    source: str | Path,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    class_names: str | Path | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layer: str | None = None,
    image_size: int | None = None,
) -> tuple[Classifier, dict]:
    """A Classifier (eval mode) taking (B,3,H,W) images in [0,1], and its description.

    ``source``: a classifier folder (:func:`save_classifier`; the other arguments must then be None),
    or ``torchvision:NAME`` (``torchvision.models.get_model``) / ``timm:NAME`` (``timm.create_model``),
    built with random weights and ``num_classes`` outputs, then ``weights`` loaded (safetensors, a
    ``torch.save`` state dict or a Lightning checkpoint, read with ``weights_only=True``).
    ``class_names``: names, or a file / torchvision weights enum for :func:`read_class_names`;
    default ``class_0..class_{C-1}``. ``num_classes`` defaults to the names' count, else 1000.
    ``mean``/``std``: 3 values each (default ImageNet's; timm: the model's). ``layer``: the module path
    CAM methods use for ``layer="auto"`` (default: found by :func:`find_feature_layer`).
    The description has arch, source, num_classes, class_names, mean, std, layers, weights and
    image_size when known (``image_size``, else timm's input size); see :func:`classifier_image_size`.
    """
    text = str(source)
    if text.partition(":")[0] not in LIBRARIES:
        options = {"weights": weights, "num_classes": num_classes, "class_names": class_names, "mean": mean,
                   "std": std, "layer": layer, "image_size": image_size}
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to torchvision:NAME / timm:NAME models; the classifier "
                             f"folder {text} holds its own")
        if not Path(source).is_dir():
            raise FileNotFoundError(f"classifier {text!r} is neither a classifier folder (classifier.json + "
                                    "classifier.safetensors) nor torchvision:NAME / timm:NAME")
        classifier, description = load_trained_classifier(source)
        return classifier, {**description, "source": text}
    names = None
    if class_names is not None:
        from_file = isinstance(class_names, (str, Path))
        names = read_class_names(class_names) if from_file else list(class_names)
        if num_classes is not None and num_classes != len(names):
            origin = f"class names {class_names}" if from_file else "class names given"
            raise ValueError(f"num_classes={num_classes} disagrees with the {len(names)} {origin}")
    num_classes = num_classes if num_classes is not None else len(names) if names else 1000
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    names = names or [f"class_{i}" for i in range(num_classes)]
    model, defaults = build_model(text, num_classes)
    mean, std = list(mean or defaults["mean"]), list(std or defaults["std"])
    if layer is not None:
        _check_name(layer, [name for name, _ in model.named_modules() if name], f"layer of {text} (a module path)")
    if weights is not None:
        load_weights(model, weights, f"{text} with {num_classes} classes (set the class count with num_classes)")
    classifier = Classifier(model, mean, std, layers={layer: layer} if layer else None, class_names=names)
    description = {"arch": text, "source": text, "num_classes": num_classes, "class_names": names, "mean": mean,
                   "std": std, "layers": classifier.layers, "weights": None if weights is None else str(weights)}
    if image_size or defaults.get("image_size"):
        description["image_size"] = int(image_size or defaults["image_size"])
    return classifier.eval(), description
