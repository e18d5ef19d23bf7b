"""Write a method's maps for a whole dataset to disk: one file per image plus a manifest; resumable.

Layout of ``out_dir``::

    manifest.json      {"schema": "saliencylab.maps/1", "method", "hyperparameters", "targets",
                        "class_names", "images": {image_id: {"file": "maps/<id>.npz", "targets": [...]}}}
    maps/<name>.npz    maps (K,H,W) float32 (raw, NaN for padded targets), targets (K,) int64; <name> is the
                       image id when it is a plain file name, else a safe name with a hash (``safe_file_name``)

Every file is written to a temporary name and renamed when complete, and the manifest lists an
image only after its file is complete, so an interrupted run never leaves a partial file behind
and a re-run computes only what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from saliencylab import methods
from saliencylab.files import write_atomic
from saliencylab.models.classifier import Classifier
from saliencylab.targets import from_multi_hot, top_k_predicted
from saliencylab.types import Batch, collate

SCHEMA = "saliencylab.maps/1"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
TARGET_RULES = ("labels", "top1", "top3", "top5")


def batch_targets(rule: str, batch: Batch, classifier: Classifier) -> torch.Tensor:
    """Targets (B,K) of a batch: its ground-truth labels, or the classifier's top-k predictions."""
    if rule == "labels":
        if not bool(batch.labels.any()):
            raise ValueError("these images have no labels: explain the predicted classes with targets='top1' "
                             "(or top3 / top5)")
        return from_multi_hot(batch.labels)
    return top_k_predicted(classifier.scores, batch.images, k=int(rule.removeprefix("top")))


def _load_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a valid manifest ({err}); move it away to start over") from err


def _save_maps(path: Path, maps: torch.Tensor, targets: torch.Tensor) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez_compressed(handle, maps=maps.cpu().numpy(), targets=targets.cpu().numpy())
    os.replace(tmp, path)


def explain_to_disk(name: str, classifier: Classifier, dataset: Dataset, out_dir: str | Path, *,
                    hyperparameters: dict | None = None, targets: str = "labels", batch_size: int = 16,
                    device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Explain every image of ``dataset`` (Samples with ``image_id``) with method ``name``; return the manifest.

    A re-run with the same method, hyper-parameters and target rule continues where the last one
    stopped; a folder holding another method's maps is refused rather than mixed.
    """
    if targets not in TARGET_RULES:
        raise ValueError(f"targets must be one of {TARGET_RULES}, got {targets!r}")
    out_dir = Path(out_dir)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "maps").glob("*.tmp"):
        stale.unlink()
    settings = hyperparameters or {}
    identity = {"schema": SCHEMA, "method": name,
                "hyperparameters": json.loads(json.dumps(settings, default=repr)), "targets": targets}
    manifest = _load_manifest(out_dir / "manifest.json")
    if manifest is None:
        manifest = {**identity, "class_names": classifier.class_names, "images": {}}
    elif {k: manifest.get(k) for k in identity} != identity:
        raise ValueError(f"{out_dir} holds maps of {manifest.get('method')!r} with other settings "
                         f"({manifest.get('hyperparameters')}, targets={manifest.get('targets')!r}); "
                         "write to a new folder")
    done = {image_id for image_id, entry in manifest["images"].items() if (out_dir / entry["file"]).is_file()}
    ids = [str(i) for i in dataset.ids] if hasattr(dataset, "ids") else [dataset[i].image_id for i in range(len(dataset))]
    todo = [i for i, image_id in enumerate(ids) if image_id not in done]
    method = methods.build(name, classifier.to(device), **settings)
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, collate_fn=collate)
    for batch in tqdm(loader, desc=f"explain ({name})", disable=not progress):
        batch = batch.to(device)
        batch_classes = batch_targets(targets, batch, classifier)
        maps = method.attribute(batch.images, batch_classes)
        for image_id, image_maps, image_targets in zip(batch.image_ids, maps, batch_classes):
            relative = f"maps/{safe_file_name(str(image_id))}.npz"
            _save_maps(out_dir / relative, image_maps, image_targets)
            manifest["images"][str(image_id)] = {"file": relative, "targets": image_targets.tolist()}
        write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def safe_file_name(image_id: str) -> str:
    """A file name for a dataset's image identifier that stays inside its folder: the identifier itself when
    it is a plain name (letters, digits, ``._-``, not starting with a dot), else its readable characters and
    a hash of the whole identifier (so ``../x`` and ``..-x`` differ)."""
    if SAFE_NAME.fullmatch(image_id) and not image_id.startswith("."):
        return image_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(image_id.encode()).hexdigest()[:16]}"


def load_maps(out_dir: str | Path, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps (K,H,W) and targets (K,) written for ``image_id``; ValueError for a manifest entry whose file
    lies outside ``out_dir`` (a manifest is never trusted to point elsewhere)."""
    out_dir = Path(out_dir)
    manifest = _load_manifest(out_dir / "manifest.json")
    if manifest is None or image_id not in manifest["images"]:
        raise KeyError(f"no maps for image {image_id!r} in {out_dir}")
    path = (out_dir / manifest["images"][image_id]["file"]).resolve()
    if not path.is_relative_to(out_dir.resolve()):
        raise ValueError(f"{out_dir / 'manifest.json'}: the file of image {image_id!r} lies outside {out_dir}")
    with np.load(path) as data:
        return torch.from_numpy(data["maps"]), torch.from_numpy(data["targets"])
