"""The end-to-end demo: synthetic data -> classifier -> every method -> every metric -> report."""
from __future__ import annotations

import dataclasses
import datetime
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

import saliencylab
from saliencylab import methods, presets, viz
from saliencylab.bench import report
from saliencylab.bench.class_specific import class_specific_matrix
from saliencylab.bench.masking import masking_section, wsol_data_config
from saliencylab.bench.run import Row, run_benchmark, weights_stamp
from saliencylab.bench.speed import settings_for
from saliencylab.data import COCODataset, RandomHorizontalFlip, Resize, VOCDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.maps import merge_max, normalize_minmax
from saliencylab.metrics import get as get_metric
from saliencylab.models.classifier import Classifier
from saliencylab.models.load import load_trained_classifier
from saliencylab.targets import from_multi_hot
from saliencylab.training.classifier import fit_classifier
from saliencylab.training.explainer import fit_explainer
from saliencylab.types import Batch, collate
from saliencylab.files import stamped, update_json

MIN_MICRO_F1 = 0.9
"""Below this held-out micro-F1 the classifier is too weak for its explanations to mean much."""


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_formats_agree(voc_test: Dataset, coco_test: COCODataset) -> None:
    """The VOC and COCO exports of the synthetic test split must load to the same labels and boxes."""
    if len(voc_test) != len(coco_test):
        raise RuntimeError(f"VOC test split has {len(voc_test)} images, COCO has {len(coco_test)}")
    for index in range(len(voc_test)):
        voc, coco = voc_test[index], coco_test[index]
        if not (torch.equal(voc.labels, coco.labels) and torch.equal(voc.boxes, coco.boxes)):
            raise RuntimeError(f"VOC and COCO disagree on test image {voc.image_id}")


def figure_rows(batch: Batch, maps: Tensor, class_names: list[str], max_targets: int = 3) -> list[list]:
    """Tiles per image: image, ground truth, merged map, then each target's map (normalised)."""
    targets = from_multi_hot(batch.labels)
    normalized = normalize_minmax(maps.cpu())
    merged = merge_max(normalized)
    rows = []
    for i in range(len(batch)):
        row = [viz.to_uint8_image(batch.images[i]), viz.segmentation_to_rgb(batch.segmentation[i]),
               viz.overlay(batch.images[i], merged[i, 0])]
        for k in range(min(max_targets, targets.shape[1])):
            row.append(viz.overlay(batch.images[i], normalized[i, k]) if targets[i, k] >= 0
                       else viz.to_uint8_image(torch.ones_like(batch.images[i])))
        rows.append(row)
    return rows


FITTED = ("explainer", "rt_saliency")
"""Trained explainers the demo fits against its classifier. ``fcnn`` explains itself, not this
classifier, so it has no place in a comparison of explanations of one classifier; the masker has
its own section (:mod:`saliencylab.bench.masking`)."""
SLOW = ("extremal_perturbation", "igos_pp", "meaningful_perturbation", "rise", "scorecam")
"""Methods the demo scores on the first ``slow_images`` test images only: seconds per image on a CPU."""
CLASS_SPECIFIC = ("explainer", "gradcam", "rise", "rt_saliency")
"""Methods whose class-specific matrices the demo computes (Stalder et al. 2022 compare these four)."""


def prepare_data(out_dir: Path, config: SyntheticConfig, batch_size: int,
                 progress: bool) -> tuple[Path, SaliencyDataModule]:
    """Write (or reuse) the synthetic set under ``out_dir/data``; its root and the train/val/test splits
    (VOC format, resized to ``config.image_size``; the test split checked against the COCO export)."""
    data_root = write_synthetic(out_dir / "data", config, progress=progress)
    size, voc_root = config.image_size, data_root / "voc"
    train = InMemory(VOCDataset(voc_root, "train", CLASSES, transform=Resize(size)), RandomHorizontalFlip())
    val = InMemory(VOCDataset(voc_root, "val", CLASSES, transform=Resize(size)))
    test = InMemory(VOCDataset(voc_root, "test", CLASSES, segmentation_only=True, transform=Resize(size)))
    check_formats_agree(test, COCODataset(data_root / "coco" / "test",
                                          data_root / "coco" / "annotations" / "instances_test.json"))
    return data_root, SaliencyDataModule(train, val, test, batch_size=batch_size)


def prepare_classifier(out_dir: Path, config: SyntheticConfig, datamodule: SaliencyDataModule, epochs: int,
                       progress: bool) -> tuple[Classifier, dict]:
    """Train the demo classifier, or reuse the one trained on the same data."""
    classifier_dir = out_dir / "classifier"
    description_file = classifier_dir / "classifier.json"
    if stamped(description_file, "data", dataclasses.asdict(config)):
        print("  reusing the trained classifier (pass --fresh to retrain)")
        return load_trained_classifier(classifier_dir)
    fit_classifier(datamodule, classifier_dir, num_classes=len(CLASSES), class_names=list(CLASSES),
                   max_epochs=epochs, width=16, lr=3e-3, progress=progress)
    update_json(description_file, data=dataclasses.asdict(config))
    return load_trained_classifier(classifier_dir)


def prepare_explainers(out_dir: Path, config: SyntheticConfig, datamodule: SaliencyDataModule,
                       epochs: int | None, progress: bool, variants: Sequence[str] = FITTED) -> dict[str, str]:
    """Fit each of ``variants`` against the demo classifier (preset ``synthetic``), or reuse it; name -> folder."""
    preset = presets.load("explainer", "synthetic")["explainer"]
    folders = {}
    for variant in variants:
        folder = out_dir / variant
        description_file = folder / "explainer.json"
        stamp = {"data": dataclasses.asdict(config), "preset": preset, "epochs": epochs}
        if stamped(description_file, "demo", stamp):
            print(f"  reusing the trained {variant} (pass --fresh to retrain)")
        else:
            settings = {**preset, "variant": variant}
            if epochs is not None:
                settings["max_epochs"] = epochs
            fit_explainer(datamodule, folder, classifier_dir=out_dir / "classifier", progress=progress, **settings)
            description = update_json(description_file, demo=stamp)
            print(f"  {variant}: {description['epochs']} epochs, best validation loss {description['best_val_loss']:.4f}")
        folders[variant] = str(folder)
    return folders


REFERENCE_ROWS = {"0": "zeros", "0.5": "half", "1": "ones", "ideal": "ground_truth"}
"""The NN-Explainer table's reference masks (constants and the ground truth itself): demo row -> engine reference."""
DEMO_METRICS = ("pointing_game", "pointing_game_plain", "stochastic_pointing_game", "energy", "mean_f1", "soft_f1",
                "soft_accuracy", "discrete_iou", "soft_iou", "pixel_auc", "overlap", "background_coverage",
                "object_coverage", "saliency_metric")
"""The metrics of the demo's table: localisation games and the NN-Explainer suite."""


def evaluate_methods(classifier: Classifier, test: Dataset, out_dir: Path, trained: dict[str, str],
                     device: torch.device, batch_size: int, figure_images: int, slow_images: int,
                     progress: bool) -> dict[str, dict]:
    """Every registered method (trained ones with their checkpoints) and the reference masks, scored by the
    benchmark engine (``out_dir/bench``) and pictured.

    SLOW methods see only the first ``slow_images`` test images; each row says how many it saw.
    """
    names = [name for name in methods.names() if not methods.get(name).trained or name in trained]
    settings = {name: {**settings_for(name, "reduced"), **({"checkpoint": trained[name]} if name in trained else {})}
                for name in names}
    rows = {name: Row(name, settings[name], slow_images if name in SLOW else None) for name in names}
    rows.update({name: Row(reference) for name, reference in REFERENCE_ROWS.items()})
    description = {"classifier": weights_stamp(out_dir / "classifier", *trained.values()),
                   "dataset": "synthetic voc test"}
    results = run_benchmark(classifier, test, rows, out_dir / "bench", metric_names=DEMO_METRICS,
                            description=description, batch_size=batch_size, device=device, progress=progress,
                            replace_stale=True)
    figure_batch = collate([test[i] for i in range(min(figure_images, len(test)))])
    comparison = [[viz.to_uint8_image(figure_batch.images[i]), viz.segmentation_to_rgb(figure_batch.segmentation[i])]
                  for i in range(len(figure_batch))]
    out: dict[str, dict] = {}
    for name, entry in results["rows"].items():
        scores = {metric: score["value"] for metric, score in entry["scores"].items()}
        out[name] = {"kind": entry["kind"], "hyperparameters": {}, "scores": scores, "images_per_second": None,
                     "seconds_per_image": None, "figure": None, "images": entry["images"]}
        if entry["kind"] == "reference":
            continue
        method = methods.build(name, classifier, **settings[name])
        maps = method.attribute(figure_batch.images.to(device), from_multi_hot(figure_batch.labels))
        tiles = figure_rows(figure_batch, maps, list(CLASSES))
        for i, row in enumerate(tiles):
            comparison[i].append(row[2])
        figure = report.save_png(viz.grid(tiles, ["image", "truth", "merged", "target 1", "target 2", "target 3"]),
                                 out_dir / "figures" / f"{name}.png")
        out[name].update(hyperparameters={**methods.hyperparameters(name), **settings[name]},
                         images_per_second=entry["images_per_second"],
                         seconds_per_image=entry["seconds"] / entry["images"], figure=figure)
        print(f"  {name:24s} pointing game {scores['pointing_game']:.3f}   mean F1 {scores['mean_f1']:.3f}   "
              f"{entry['images_per_second']:.1f} images/s   ({entry['images']} images)")
    report.save_png(viz.grid(comparison, ["image", "truth", *names], scale=1), out_dir / "figures" / "comparison.png")
    return out


def class_specific_section(classifier: Classifier, test: Dataset, out_dir: Path, rows: dict[str, dict],
                           device: torch.device, batch_size: int, images: int) -> dict[str, dict]:
    """Class-specific matrices of the CLASS_SPECIFIC methods on the first ``images`` test images (or fewer:
    a SLOW method's subset)."""
    classes = list(range(len(CLASSES)))
    section = {}
    for name in (n for n in CLASS_SPECIFIC if n in rows):
        count = min(images, rows[name]["images"])  # SLOW methods: their subset
        loader = DataLoader(Subset(test, range(count)), batch_size=batch_size, collate_fn=collate)
        settings = {k: v for k, v in rows[name]["hyperparameters"].items() if k != "max_batch"}
        method = methods.build(name, classifier, **settings)
        matrix = class_specific_matrix(method, loader, classes, normalize=method.output_range != "unit", device=device)
        square = matrix[:, 1:]
        off_diagonal = square[~torch.eye(len(classes), dtype=torch.bool)]
        margin = float(square.diagonal().nanmean() - off_diagonal.nanmean())
        picture = viz.matrix_heatmap(matrix, list(CLASSES), ["none", *CLASSES], f"{name}: P(row class) in %")
        section[name] = {"classes": list(CLASSES), "images": len(loader.dataset), "matrix": matrix.tolist(),
                         "diagonal_margin": margin,
                         "figure": report.save_png(picture, out_dir / "figures" / f"class_specific_{name}.png")}
        print(f"  {name:24s} diagonal minus off-diagonal {margin:.1f} points")
    return section


def run_demo(out_dir: str | Path = "runs/demo", *, fresh: bool = False, device: str = "auto",
             config: SyntheticConfig = SyntheticConfig(), epochs: int = 15, explainer_epochs: int | None = 3,
             batch_size: int = 32, figure_images: int = 6, slow_images: int = 8, class_specific_images: int = 60,
             masker_epochs: int = 3, wsol_config: SyntheticConfig | None = None, sanity_images: int = 16,
             progress: bool = True) -> dict:
    """Run the whole pipeline and write ``out_dir/{results.json, results.csv, report.html, figures/}``.

    Data (``out_dir/data``), the classifier (``out_dir/classifier``) and the trained explainers
    (``out_dir/explainer``, ``out_dir/rt_saliency``) are reused when made with the same settings;
    ``fresh=True`` rebuilds them. ``explainer_epochs`` caps explainer training (default 3, so the
    demo fits in 10 CPU minutes; None: the ``synthetic`` preset's 30 with early stopping). SLOW methods are scored on the first ``slow_images`` test images, the
    class-specific matrices on the first ``class_specific_images``. The masking-based saliency part (Phang et al. 2020)
    (:mod:`saliencylab.bench.masking`, in ``out_dir/masking``) trains its maskers ``masker_epochs``
    epochs on the single-label set ``wsol_config`` (default :func:`wsol_data_config` of ``config``)
    and runs the cascading sanity check on ``sanity_images`` images. Returns the results dict.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if fresh:
        for sub in ("data", "classifier", "masking", "bench", *FITTED):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = pick_device(device)

    print(f"[1/6] synthetic data -> {out_dir / 'data'}")
    data_root, datamodule = prepare_data(out_dir, config, batch_size, progress)
    size, test = config.image_size, datamodule.test

    print(f"[2/6] classifier -> {out_dir / 'classifier'}")
    classifier, description = prepare_classifier(out_dir, config, datamodule, epochs, progress)
    f1 = description["test"]["micro_f1"]
    print(f"  held-out micro-F1 {f1:.3f}" + ("" if f1 >= MIN_MICRO_F1 else
          f"  (WARNING: below {MIN_MICRO_F1}; explanations of a weak classifier mean little)"))

    print(f"[3/6] trained explainers -> {', '.join(str(out_dir / v) for v in FITTED)}")
    trained = prepare_explainers(out_dir, config, datamodule, explainer_epochs, progress)
    classifier = classifier.to(torch_device)

    print("[4/6] explaining and scoring the test split")
    rows = evaluate_methods(classifier, test, out_dir, trained, torch_device, batch_size, figure_images,
                            slow_images, progress)
    class_specific = class_specific_section(classifier, test, out_dir, rows, torch_device, batch_size,
                                            class_specific_images)

    print(f"[5/6] masking-based saliency (Phang et al. 2020) -> {out_dir / 'masking'}")
    masking = masking_section(out_dir, classifier, out_dir / "classifier", wsol_config or wsol_data_config(config),
                              torch_device, epochs=masker_epochs, batch_size=batch_size, sanity_images=sanity_images,
                              figure_images=figure_images, progress=progress)

    print(f"[6/6] report -> {out_dir}")
    results = {
        "schema": "saliencylab.results/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "saliencylab_version": saliencylab.__version__, "torch_version": torch.__version__,
        "device": str(torch_device), "elapsed_seconds": time.perf_counter() - started,
        "dataset": {"name": "synthetic", "root": str(data_root), "split": "test", "images": len(test),
                    "image_size": size, "class_names": list(CLASSES)},
        "classifier": {"arch": description["arch"], "weights": str(out_dir / "classifier" / "classifier.safetensors"),
                       "epochs": description["epochs"], "test": description["test"]},
        "metrics": {name: {"higher_is_better": get_metric(name).higher_is_better,
                           "aggregation": get_metric(name).aggregation,
                           "description": get_metric(name).description} for name in DEMO_METRICS},
        "methods": rows,
        "class_specific": class_specific,
        "masking": masking,
    }
    report.write_json(results, out_dir / "results.json")
    report.write_csv(results, out_dir / "results.csv")
    report.write_html(results, out_dir)
    print(f"  wrote results.json, results.csv, report.html and figures/ in {results['elapsed_seconds']:.0f} s")
    return results
