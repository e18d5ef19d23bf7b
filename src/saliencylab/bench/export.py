"""Write a method's maps for a whole dataset to disk, in one process or over ranks; resumable.

Layout of ``out_dir``::

    manifest.json      {"schema": "saliencylab.maps/1", "method", "hyperparameters", "targets", "store", "dtype",
                        "class_names", "images": {image_id: {"file": ..., "targets": [...]}}} (+ "index" for chunks)
    maps/<name>.npz    store "files": maps (K,H,W) (raw, NaN for padded targets), targets (K,) int64 of one image;
                       <name> is the image id when it is a plain file name, else a safe name with a hash
    chunks/<b>.npz     store "chunks": one batch b (fixed slices of ``batch_size`` images in dataset order): maps
                       (N,K,H,W), targets (N,K), ids (N,); an image's entry names its chunk and its ``index`` in it
    shards/<i>-of-<n>.json   the manifest of rank i while n ranks run ("files" store), merged by rank 0 at the end

Maps are stored as ``dtype`` (float32, or float16: half the bytes, about 3 significant digits). Every file is
written to a temporary name and renamed when complete, and a manifest lists an image only after its file is
complete, so an interrupted run never leaves a partial file behind and a re-run computes only what is missing.
Ranks take the batches ``b`` with ``b % n == i`` (as ``bench run --shard``), so the maps equal one process's.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from saliencylab import methods
from saliencylab.files import atomic_path, read_json, write_atomic
from saliencylab.models.classifier import Classifier
from saliencylab.scale import Scale, run_shards
from saliencylab.targets import from_multi_hot, top_k_predicted
from saliencylab.types import Batch, collate

SCHEMA = "saliencylab.maps/1"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
TARGET_RULES = ("labels", "top1", "top3", "top5")
STORES = {"files": "maps", "chunks": "chunks"}
"""Output stores and their folders (see the module docstring)."""
DTYPES = ("float32", "float16")
IDENTITY = ("schema", "method", "hyperparameters", "targets", "store", "dtype", "chunk_size")
"""What a folder's maps are: a rerun (or another rank) with another identity is refused."""
IDENTITY_DEFAULTS = {"store": "files", "dtype": "float32", "chunk_size": None}
"""What a manifest written before stores and dtypes existed holds."""


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
    return read_json(path, "manifest (move it away to start over)")


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def _manifests(out_dir: Path, identity: dict | None = None) -> list[tuple[Path, dict]]:
    """manifest.json and the ranks' shard manifests in ``out_dir``, each checked to hold maps of ``identity``
    (None: of the first one's)."""
    found = []
    for path in [out_dir / "manifest.json", *sorted((out_dir / "shards").glob("*-of-*.json"))]:
        manifest = _load_manifest(path)
        if manifest is None:
            continue
        identity = identity or {k: manifest.get(k, IDENTITY_DEFAULTS.get(k)) for k in IDENTITY}
        recorded = {k: manifest.get(k, IDENTITY_DEFAULTS.get(k)) for k in identity}
        if recorded != identity:
            raise ValueError(f"{out_dir} holds maps of {manifest.get('method')!r} with other settings "
                             f"({ {k: v for k, v in recorded.items() if v != identity[k]} } in {path.name}); "
                             "write to a new folder")
        found.append((path, manifest))
    return found


def _dataset_ids(dataset: Dataset) -> list[str]:
    return [str(i) for i in dataset.ids] if hasattr(dataset, "ids") else [dataset[i].image_id for i in range(len(dataset))]


def explain_to_disk(name: str, classifier: Classifier, dataset: Dataset, out_dir: str | Path, *,
                    hyperparameters: dict | None = None, targets: str = "labels", batch_size: int = 16,
                    device: torch.device | str = "cpu", progress: bool = True, shard: tuple[int, int] = (0, 1),
                    store: str = "files", dtype: str = "float32") -> dict | None:
    """Explain every image of ``dataset`` (Samples with ``image_id``) with method ``name``; return the manifest.

    A re-run with the same method, hyper-parameters, target rule, store and dtype continues where the last one
    stopped; a folder holding other maps is refused rather than mixed. ``shard=(i, n)``: only the batches
    ``b % n == i``, recorded in ``shards/`` (returns None; :func:`merge_explained` makes the manifest once every
    shard is done; :func:`explain_on_ranks` does both). ``store``: "files" (one .npz per image) or "chunks" (one
    .npz per batch, for 10^5 maps and more); ``dtype``: "float32" or "float16".
    """
    index, count = shard
    if targets not in TARGET_RULES:
        raise ValueError(f"targets must be one of {TARGET_RULES}, got {targets!r}")
    if store not in STORES or dtype not in DTYPES:
        raise ValueError(f"store must be one of {STORES} and dtype one of {DTYPES}, got {store!r} and {dtype!r}")
    if count < 1 or not 0 <= index < count or batch_size < 1:
        raise ValueError(f"shard must be i/n with 0 <= i < n and batch_size >= 1, got {index}/{count}, {batch_size}")
    out_dir = Path(out_dir)
    (out_dir / STORES[store]).mkdir(parents=True, exist_ok=True)
    settings = hyperparameters or {}
    identity = {"schema": SCHEMA, "method": name, "hyperparameters": json.loads(json.dumps(settings, default=repr)),
                "targets": targets, "store": store, "dtype": dtype,
                "chunk_size": batch_size if store == "chunks" else None}
    manifests = _manifests(out_dir, identity)
    ids = _dataset_ids(dataset)
    batches = [(b, range(b * batch_size, min((b + 1) * batch_size, len(ids))))
               for b in range(index, math.ceil(len(ids) / batch_size), count)]
    if store == "chunks":
        todo = [(b, list(images)) for b, images in batches if not (out_dir / _chunk_file(b)).is_file()]
    else:
        done = {image_id for _, manifest in manifests for image_id, entry in manifest["images"].items()
                if (out_dir / entry["file"]).is_file()}
        todo = [(b, [i for i in images if ids[i] not in done]) for b, images in batches]
    own_path = out_dir / ("manifest.json" if count == 1 else f"shards/{index}-of-{count}.json")
    own = dict(manifests).get(own_path)
    if own is None:
        own = {**identity, "class_names": classifier.class_names, "images": {}}
        own_path.parent.mkdir(exist_ok=True)
        write_atomic(own_path, json.dumps(own, indent=1))  # the identity, before any maps
    method = methods.build(name, classifier.to(device), **settings)
    for b, images in tqdm([work for work in todo if work[1]], desc=f"explain ({name})", disable=not progress):
        batch = collate([dataset[i] for i in images]).to(device)
        batch_classes = batch_targets(targets, batch, classifier)
        maps = method.attribute(batch.images, batch_classes).to(getattr(torch, dtype)).cpu().numpy()
        classes = batch_classes.cpu().numpy()
        if store == "chunks":
            _save_arrays(out_dir / _chunk_file(b), maps=maps, targets=classes, ids=np.array(batch.image_ids, dtype=str))
            continue
        for image_id, image_maps, image_targets in zip(batch.image_ids, maps, classes):
            relative = f"maps/{safe_file_name(str(image_id))}.npz"
            _save_arrays(out_dir / relative, maps=image_maps, targets=image_targets)
            own["images"][str(image_id)] = {"file": relative, "targets": image_targets.tolist()}
        write_atomic(own_path, json.dumps(own, indent=1))
    return merge_explained(out_dir, dataset) if count == 1 else None


def _chunk_file(batch: int) -> str:
    return f"chunks/{batch:06d}.npz"


def merge_explained(out_dir: str | Path, dataset: Dataset) -> dict:
    """Fold the shard manifests (store "files") or the chunk files (store "chunks") of ``out_dir`` into
    manifest.json, images in dataset order; remove the shard manifests and leftover temporary files; return it.
    Call once no rank writes any more (:func:`explain_on_ranks` does, on rank 0)."""
    out_dir = Path(out_dir)
    manifests = _manifests(out_dir)
    if not manifests:
        raise FileNotFoundError(f"{out_dir} holds no maps (no manifest.json, no shards/*.json)")
    merged = {**manifests[0][1], "images": {}}
    for _, manifest in manifests:
        merged["images"].update(manifest["images"])
    for chunk in sorted((out_dir / "chunks").glob("[0-9]*.npz")):
        with np.load(chunk) as data:
            for position, (image_id, image_targets) in enumerate(zip(data["ids"].tolist(), data["targets"].tolist())):
                merged["images"][image_id] = {"file": f"chunks/{chunk.name}", "index": position,
                                              "targets": image_targets}
    order = {image_id: position for position, image_id in enumerate(_dataset_ids(dataset))}
    merged["images"] = dict(sorted(merged["images"].items(), key=lambda item: order.get(item[0], len(order))))
    write_atomic(out_dir / "manifest.json", json.dumps(merged, indent=1))
    for path, _ in manifests:
        if path.parent.name == "shards":
            path.unlink()
    for stale in [*out_dir.glob("*/*.tmp")]:
        stale.unlink()
    return merged


def explain_on_ranks(scale: Scale, name: str, classifier: Classifier, dataset: Dataset, out_dir: str | Path, *,
                     device: str = "cpu", progress: bool = True, **options: object) -> dict | None:
    """:func:`explain_to_disk` over the processes of ``scale``: rank i explains shard i/n into ``out_dir``, then
    rank 0 merges; returns the manifest on rank 0 (None on the other ranks of a ``ddp`` launch)."""
    return run_shards(scale, device, functools.partial(explain_to_disk, name, classifier, dataset, out_dir, **options),
                      functools.partial(merge_explained, out_dir, dataset), progress=progress)


def safe_file_name(image_id: str) -> str:
    """A file name for a dataset's image identifier that stays inside its folder: the identifier itself when
    it is a plain name (letters, digits, ``._-``, not starting with a dot), else its readable characters and
    a hash of the whole identifier (so ``../x`` and ``..-x`` differ)."""
    if SAFE_NAME.fullmatch(image_id) and not image_id.startswith("."):
        return image_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(image_id.encode()).hexdigest()[:16]}"


def load_maps(out_dir: str | Path, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps (K,H,W) (float32 or the run's dtype) and targets (K,) written for ``image_id``; ValueError for a manifest entry whose file
    lies outside ``out_dir`` (a manifest is never trusted to point elsewhere)."""
    out_dir = Path(out_dir)
    manifest = _load_manifest(out_dir / "manifest.json")
    if manifest is None or image_id not in manifest["images"]:
        raise KeyError(f"no maps for image {image_id!r} in {out_dir}")
    path = (out_dir / manifest["images"][image_id]["file"]).resolve()
    if not path.is_relative_to(out_dir.resolve()):
        raise ValueError(f"{out_dir / 'manifest.json'}: the file of image {image_id!r} lies outside {out_dir}")
    entry = manifest["images"][image_id]
    with np.load(path) as data:
        if "index" in entry:  # a chunk of a batch
            return torch.from_numpy(data["maps"][entry["index"]]), torch.from_numpy(data["targets"][entry["index"]])
        return torch.from_numpy(data["maps"]), torch.from_numpy(data["targets"])
