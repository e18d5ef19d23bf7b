"""The demo's paper-001 part: CASME maskers on the synthetic single-label set, scored and sanity-checked.

On the ImageNet-format export of the synthetic scenes (:func:`write_synthetic_imagenet`) the demo

1. trains a FIX and a CA masker (presets ``synthetic_fix`` / ``synthetic_ca``) for the demo classifier;
2. scores them with the WSOL metrics (Phang et al. 2020) on the val split beside Grad-CAM and the special
   baselines (center, max, min, ground_truth), plus PxAP on the OpenImages-layout test split;
3. runs the sanity checks: cascading model-parameter randomisation of the classifier for the
   gradient (Adebayo et al.'s reference case), the FIX masker and the CA masker (of its co-trained
   classifier, whose features it reads), and the data-randomisation test: a FIX masker trained on
   ``train_shuffle.json`` (random labels) against two FIX maskers trained on the true labels with
   different seeds. Masks are compared as sigmoid outputs in [0,1] (the original compared
   pre-sigmoid logits; Spearman is the same either way).

Data and maskers land under ``<run>/masking/``, figures in ``<run>/figures/masking_*.png``, the
numbers in the ``"masking"`` entry of ``results.json``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from saliencylab import methods, presets, viz
from saliencylab.bench import report, sanity, wsol
from saliencylab.bench.run import Row, weights_stamp
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.openimages import OpenImagesDataset
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.maps import to_unit
from saliencylab.metrics.wsol import inclusive_to_half_open, predicted_boxes
from saliencylab.models.classifier import Classifier
from saliencylab.models.load import load_trained_classifier
from saliencylab.models.masker import load_trained_masker
from saliencylab.targets import from_multi_hot
from saliencylab.training.masker import fit_masker
from saliencylab.types import Batch, collate
from saliencylab.files import read_json, stamped, update_json

MASKERS = {
    "fix": ("synthetic_fix", "train.json", 0),
    "ca": ("synthetic_ca", "train.json", 0),
    "fix_seed2": ("synthetic_fix", "train.json", 1),
    "fix_random_labels": ("synthetic_fix", "train_shuffle.json", 0),
}
"""Maskers the demo trains: name -> (preset, label file of the metadata folder, seed offset from the preset's)."""
SANITY_METHODS = ("gradient", "fix", "ca")
"""Methods of the cascading check. Not Grad-CAM: once the head of the small CNN is random its Grad-CAM
maps are all zero (the ReLU of negative evidence), so every similarity is undefined (NaN)."""


def evenly_spaced(dataset: Dataset, count: int) -> Batch:
    """A batch of ``count`` samples spread evenly over ``dataset`` (first and last included): the
    ImageNet-format splits are sorted by class, so the first few would all share one class."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    count = min(count, len(dataset))
    return collate([dataset[int(i)] for i in torch.linspace(0, len(dataset) - 1, count).round().long()])


def wsol_data_config(config: SyntheticConfig, train: int = 480, val: int = 200, test: int = 60) -> SyntheticConfig:
    """The single-label set of the demo: the multi-label demo's image size and seed, its own sizes."""
    return replace(config, train=train, val=val, test=test)


def prepare_masker(name: str, folder: Path, metadata: Path, classifier_dir: Path, data: dict, epochs: int,
                   progress: bool) -> dict:
    """Train masker ``name`` of :data:`MASKERS` (or reuse it when trained with the same stamp); its description."""
    preset_name, labels, seed_offset = MASKERS[name]
    preset = presets.load("masker", preset_name)
    settings = {**preset["masker"], "max_epochs": epochs}
    settings["seed"] += seed_offset
    stamp = {"data": data, "labels": labels, "preset": preset_name, "settings": settings}
    description_file = folder / "masker.json"
    if stamped(description_file, "demo", stamp):
        print(f"  reusing the trained masker {name} (pass --fresh to retrain)")
        return read_json(description_file, "masker description")
    size = data["image_size"]
    train = InMemory(ImageNetDataset(metadata / labels, size=size))
    started = time.perf_counter()
    fit_masker(SaliencyDataModule(train, batch_size=preset["data"]["batch_size"]), folder,
               classifier_dir=classifier_dir, progress=progress, **settings)
    description = update_json(description_file, demo=stamp, train_seconds=time.perf_counter() - started)
    print(f"  {name}: {description['epochs']} epochs on {len(train)} images ({labels}) "
          f"in {description['train_seconds']:.0f} s")
    return description


def prepare_single_label(run_dir: Path, config: SyntheticConfig, progress: bool) -> tuple[Path, Dataset, Dataset]:
    """Write (or reuse) the single-label set under ``run_dir/masking/data``; its root, the val split (ImageNet
    layout, boxes) and the test split (OpenImages layout, segmentation), resized to ``config.image_size``."""
    root = write_synthetic_imagenet(run_dir / "masking" / "data", config, progress=progress)
    metadata, size = root / "imagenet" / "metadata", config.image_size
    val = InMemory(ImageNetDataset(metadata / "val.json", metadata / "val_bboxes.json", size=size))
    test = InMemory(OpenImagesDataset(root / "openimages" / "dataset", root / "openimages" / "metadata", size=size))
    return root, val, test


def prepare_maskers(run_dir: Path, root: Path, classifier_dir: Path, config: SyntheticConfig, epochs: int,
                    progress: bool) -> tuple[dict[str, Path], dict[str, dict]]:
    """Train (or reuse) every masker of :data:`MASKERS` under ``run_dir/masking``; name -> folder, name -> summary."""
    folders = {name: run_dir / "masking" / name for name in MASKERS}
    maskers = {}
    for name, folder in folders.items():
        description = prepare_masker(name, folder, root / "imagenet" / "metadata", classifier_dir, asdict(config),
                                     epochs, progress)
        preset, labels, _ = MASKERS[name]
        maskers[name] = {"folder": str(folder), "preset": preset, "labels": labels, "mode": description["mode"],
                         "epochs": description["epochs"], "seed": description["hyper_parameters"]["seed"],
                         "train_seconds": description.get("train_seconds")}
    return folders, maskers


def masker_methods(classifier: Classifier, folders: dict[str, Path]) -> dict[str, methods.Method]:
    """Grad-CAM and each trained masker (masker ``name`` reads its checkpoint ``folders[name]``)."""
    built = {"gradcam": methods.build("gradcam", classifier)}
    for name, folder in folders.items():
        built[name] = methods.build("masker", classifier, checkpoint=str(folder))
    return built


def label_masks(method: methods.Method, batch: Batch) -> Tensor:
    """(B,1,H,W) in [0,1]: each image's map of its label class (min-max normalised unless it is a mask)."""
    return to_unit(method.attribute(batch.images, from_multi_hot(batch.labels)[:, :1]), method.output_range)


def wsol_rows(classifier: Classifier, classifier_dir: Path, folders: dict[str, Path], val: Dataset, test: Dataset,
              out_dir: Path, device: torch.device, batch_size: int, progress: bool) -> dict[str, dict]:
    """The WSOL table on ``val`` of the baselines, Grad-CAM and the maskers ``folders``, with PxAP on ``test``
    (engine folders under ``out_dir``, kept while the classifier and maskers are the same)."""
    rows = {"gradcam": Row("gradcam"), **{name: Row("masker", {"checkpoint": str(folder)})
                                         for name, folder in folders.items()}}
    description = {"classifier": weights_stamp(classifier_dir, *folders.values()), "dataset": "synthetic imagenet"}
    table = wsol.run_wsol(classifier, val, rows, out_dir, test=test, batch_size=batch_size, device=device,
                          progress=progress, description=description, replace_stale=True)
    for name in rows:
        print(f"  {name:18s} LE {table[name]['LE']:.3f}   OM {table[name]['OM']:.3f}   F1 {table[name]['F1']:.3f}   "
              f"PxAP {table[name]['PxAP']:.1f}")
    return table


def data_randomization(built: dict[str, methods.Method], batch: Batch) -> dict:
    """Mean similarity of the FIX masker's masks to a second trained FIX masker's and to the random-label one's."""
    masks = {name: label_masks(built[name], batch)[:, 0] for name in ("fix", "fix_seed2", "fix_random_labels")}
    result = {"images": len(batch), "reference": "fix"}
    for key, other in (("trained_vs_trained", "fix_seed2"), ("trained_vs_random_labels", "fix_random_labels")):
        scores = sanity.compare_maps(masks["fix"], masks[other])
        result[key] = {"model": other, **{m: float(v.nanmean()) for m, v in scores.items()}}
    print(f"  data randomization, Spearman to the FIX masker: second trained masker "
          f"{result['trained_vs_trained']['spearman']:.3f}, random-label masker "
          f"{result['trained_vs_random_labels']['spearman']:.3f}")
    return result


def cascading_checks(classifier: Classifier, folders: dict[str, Path], batch: Batch, figures: Path) -> dict:
    """Cascading randomisation for each of :data:`SANITY_METHODS`; curves as PNGs.

    The gradient and FIX explain ``classifier``; CA explains (and randomises) its co-trained classifier.
    """
    targets = from_multi_hot(batch.labels)[:, :1]
    co_trained = load_trained_classifier(folders["ca"])[0].to(batch.images.device)
    built = {"gradient": (methods.build("gradient", classifier), classifier),
             "fix": (methods.build("masker", classifier, checkpoint=str(folders["fix"])), classifier),
             "ca": (methods.build("masker", co_trained, masker=load_trained_masker(folders["ca"])[0]), co_trained)}
    section = {}
    for name in SANITY_METHODS:
        method, model = built[name]

        def explain(_model: Classifier, images: Tensor, wanted: Tensor, method=method) -> Tensor:
            return to_unit(method.attribute(images, wanted), method.output_range)

        result = sanity.cascading_randomization(explain, model, batch.images, targets)
        figure = sanity.plot_randomization(result, figures / f"masking_sanity_{name}.png",
                                           f"{name}: cascading randomisation of the classifier it reads")
        section[name] = {"mode": result.mode, "layers": result.layers,
                         "mean": {m: v.tolist() for m, v in result.mean.items()},
                         "figure": f"{figure.parent.name}/{figure.name}"}
    return section


def mask_figure(built: dict[str, methods.Method], batch: Batch, path: Path) -> str:
    """Rows: the image with its boxes (green), then each method's mask with its predicted box (white)."""
    gt = [inclusive_to_half_open(boxes) for boxes in batch.boxes]
    rows = [[viz.draw_boxes(viz.to_uint8_image(image), boxes, (0, 255, 0))] for image, boxes in zip(batch.images, gt)]
    for method in built.values():
        masks = label_masks(method, batch)[:, 0].clamp(0, 1)
        for row, image, mask, box in zip(rows, batch.images, masks, predicted_boxes(masks)):
            row.append(viz.draw_boxes(viz.overlay(image, mask), box))
    return report.save_png(viz.grid(rows, ["image", *built]), path)


def masking_section(run_dir: Path, classifier: Classifier, classifier_dir: Path, config: SyntheticConfig,
                    device: torch.device, *, epochs: int = 3, batch_size: int = 32, sanity_images: int = 16,
                    figure_images: int = 6, progress: bool = True) -> dict:
    """Write the single-label set, train the :data:`MASKERS`, score and sanity-check; the results entry.

    ``run_dir``: the demo's folder; ``classifier`` (and ``classifier_dir``, where it was saved): the one explained.
    ``config``: the single-label set (see :func:`wsol_data_config`); ``epochs``: each masker's (whole
    passes over the train split); the cascading check uses ``sanity_images`` val images (:func:`evenly_spaced`), the
    data-randomisation test the whole val split.
    """
    started = time.perf_counter()
    figures = run_dir / "figures"
    root, val, test = prepare_single_label(run_dir, config, progress)
    folders, maskers = prepare_maskers(run_dir, root, classifier_dir, config, epochs, progress)
    classifier = classifier.to(device)
    built = masker_methods(classifier, folders)
    rows = wsol_rows(classifier, classifier_dir, {name: folders[name] for name in ("fix", "ca")}, val, test,
                     run_dir / "masking" / "bench", device, batch_size, progress)
    val_batch = collate([val[i] for i in range(len(val))]).to(device)
    drt = data_randomization(built, val_batch)
    sanity_batch = evenly_spaced(val, sanity_images).to(device)
    checks = cascading_checks(classifier, folders, sanity_batch, figures)
    figure_batch = evenly_spaced(val, figure_images).to(device)
    figure = mask_figure(built, figure_batch, figures / "masking_masks.png")
    return {"dataset": {"root": str(root), "train": config.train, "val": len(val), "test": len(test),
                        "image_size": config.image_size},
            "maskers": maskers, "wsol": rows, "baselines": list(wsol.BASELINES), "data_randomization": drt,
            "sanity": checks, "figure": figure, "seconds": time.perf_counter() - started}
