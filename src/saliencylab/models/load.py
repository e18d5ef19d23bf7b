"""Classifier folders: ``classifier.json`` (how to rebuild the model) + ``classifier.safetensors`` (its weights)."""
from __future__ import annotations

import json
from pathlib import Path

from saliencylab.models.classifier import Classifier
from saliencylab.models.io import save_state_dict
from saliencylab.models.zoo import build_classifier


def save_classifier(classifier: Classifier, out_dir: str | Path, *, arch: str, width: int = 32,
                    **extra: object) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` (arch, classes, ``extra``) for load_trained_classifier."""
    out_dir = Path(out_dir)
    save_state_dict(classifier.model.state_dict(), out_dir / "classifier.safetensors")
    class_names = list(classifier.class_names or [])
    num_classes = len(class_names) if class_names else int(extra.pop("num_classes"))
    description = {"arch": arch, "num_classes": num_classes, "class_names": class_names, "width": width, **extra}
    (out_dir / "classifier.json").write_text(json.dumps(description, indent=2))
    return out_dir


def load_trained_classifier(out_dir: str | Path) -> tuple[Classifier, dict]:
    """Rebuild the classifier written by :func:`save_classifier` from ``out_dir``; returns it and its description."""
    out_dir = Path(out_dir)
    description_file = out_dir / "classifier.json"
    if not description_file.is_file():
        raise FileNotFoundError(f"{description_file} not found: train a classifier with fit_classifier first")
    description = json.loads(description_file.read_text())
    classifier = build_classifier(description["arch"], description["num_classes"],
                                  class_names=description["class_names"] or None, width=description["width"],
                                  weights=out_dir / "classifier.safetensors")
    return classifier.eval(), description
