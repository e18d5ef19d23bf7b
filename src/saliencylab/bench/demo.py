"""The end-to-end demo: synthetic data -> classifier -> every method -> every metric -> report."""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import saliencylab
from saliencylab import methods, viz
from saliencylab.bench import evaluate as ev
from saliencylab.bench import report
from saliencylab.bench.speed import settings_for
from saliencylab.data import COCODataset, RandomHorizontalFlip, Resize, VOCDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.maps import merge_max, normalize_minmax
from saliencylab.metrics import get as get_metric
from saliencylab.targets import from_multi_hot
from saliencylab.training.classifier import fit_classifier, load_trained_classifier
from saliencylab.types import Batch, collate

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
    normalised = normalize_minmax(maps.cpu())
    merged = merge_max(normalised)
    rows = []
    for i in range(len(batch)):
        row = [viz.to_uint8_image(batch.images[i]), viz.segmentation_to_rgb(batch.segmentation[i]),
               viz.overlay(batch.images[i], merged[i, 0])]
        for k in range(min(max_targets, targets.shape[1])):
            row.append(viz.overlay(batch.images[i], normalised[i, k]) if targets[i, k] >= 0
                       else viz.to_uint8_image(torch.ones_like(batch.images[i])))
        rows.append(row)
    return rows


def run_demo(out_dir: str | Path = "runs/demo", *, fresh: bool = False, device: str = "auto",
             config: SyntheticConfig = SyntheticConfig(), epochs: int = 30, batch_size: int = 32,
             figure_images: int = 6, progress: bool = True) -> dict:
    """Run the whole pipeline and write ``out_dir/{results.json, results.csv, report.html, figures/}``.

    Data (``out_dir/data``) and the trained classifier (``out_dir/classifier``) are reused when
    present and made with the same settings; ``fresh=True`` rebuilds them. Returns the results dict.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if fresh:
        for sub in ("data", "classifier"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = pick_device(device)
    class_names = list(CLASSES)

    print(f"[1/4] synthetic data -> {out_dir / 'data'}")
    data_root = write_synthetic(out_dir / "data", config, progress=progress)
    size = config.image_size
    voc_root = data_root / "voc"
    train = InMemory(VOCDataset(voc_root, "train", class_names, transform=Resize(size)), RandomHorizontalFlip())
    val = InMemory(VOCDataset(voc_root, "val", class_names, transform=Resize(size)))
    test = InMemory(VOCDataset(voc_root, "test", class_names, segmentation_only=True, transform=Resize(size)))
    check_formats_agree(test, COCODataset(data_root / "coco" / "test",
                                          data_root / "coco" / "annotations" / "instances_test.json"))

    print(f"[2/4] classifier -> {out_dir / 'classifier'}")
    classifier_dir = out_dir / "classifier"
    description_file = classifier_dir / "classifier.json"
    if description_file.is_file() and json.loads(description_file.read_text()).get("data") == dataclasses.asdict(config):
        classifier, description = load_trained_classifier(classifier_dir)
        print("  reusing the trained classifier (pass --fresh to retrain)")
    else:
        datamodule = SaliencyDataModule(train, val, test, batch_size=batch_size)
        classifier, _ = fit_classifier(datamodule, classifier_dir, num_classes=len(class_names),
                                       class_names=class_names, max_epochs=epochs, width=16, lr=3e-3,
                                       progress=progress)
        description = json.loads(description_file.read_text())
        description["data"] = dataclasses.asdict(config)
        report.write_atomic(description_file, json.dumps(description, indent=2))
    f1 = description["test"]["micro_f1"]
    print(f"  held-out micro-F1 {f1:.3f}" + ("" if f1 >= MIN_MICRO_F1 else
          f"  (WARNING: below {MIN_MICRO_F1}; explanations of a weak classifier mean little)"))
    classifier = classifier.to(torch_device)

    print("[3/4] explaining and scoring the test split")
    loader = DataLoader(test, batch_size=batch_size, collate_fn=collate)
    figure_batch = collate([test[i] for i in range(min(figure_images, len(test)))])
    rows: dict[str, dict] = {}
    comparison = [[viz.to_uint8_image(figure_batch.images[i]), viz.segmentation_to_rgb(figure_batch.segmentation[i])]
                  for i in range(len(figure_batch))]
    for name in methods.names():
        settings = settings_for(name, "reduced")
        method = methods.build(name, classifier, **settings)
        scores = ev.evaluate(lambda batch, targets: method.attribute(batch.images, targets), classifier,
                             tqdm(loader, desc=f"  {name}", disable=not progress, leave=False), torch_device)
        maps = method.attribute(figure_batch.images.to(torch_device), from_multi_hot(figure_batch.labels))
        tiles = figure_rows(figure_batch, maps, class_names)
        for i, row in enumerate(tiles):
            comparison[i].append(row[2])
        figure = report.save_png(viz.grid(tiles, ["image", "truth", "merged", "target 1", "target 2", "target 3"]),
                                 out_dir / "figures" / f"{name}.png")
        rows[name] = {"kind": "method", "hyperparameters": {**methods.hyperparameters(name), **settings},
                      "scores": scores.summary(len(class_names)),
                      "images_per_second": scores.images / scores.seconds,
                      "seconds_per_image": scores.seconds / scores.images, "figure": figure}
        print(f"  {name:24s} pointing game {rows[name]['scores']['pointing_game']:.3f}   "
              f"mean F1 {rows[name]['scores']['mean_f1']:.3f}   {rows[name]['images_per_second']:.1f} images/s")
    for name, make_mask in ev.REFERENCES.items():
        scores = ev.evaluate(lambda batch, _targets: make_mask(batch), classifier, loader, torch_device,
                             per_image_masks=True)
        rows[name] = {"kind": "reference", "hyperparameters": {}, "scores": scores.summary(len(class_names)),
                      "images_per_second": None, "seconds_per_image": None, "figure": None}
    report.save_png(viz.grid(comparison, ["image", "truth", *methods.names()], scale=1),
                    out_dir / "figures" / "comparison.png")

    print(f"[4/4] report -> {out_dir}")
    results = {
        "schema": "saliencylab.results/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "saliencylab_version": saliencylab.__version__, "torch_version": torch.__version__,
        "device": str(torch_device), "elapsed_seconds": time.perf_counter() - started,
        "dataset": {"name": "synthetic", "root": str(data_root), "split": "test", "images": len(test),
                    "image_size": size, "class_names": class_names},
        "classifier": {"arch": description["arch"], "weights": str(classifier_dir / "classifier.safetensors"),
                       "epochs": description["epochs"], "test": description["test"]},
        "metrics": {name: {"higher_is_better": get_metric(name).higher_is_better,
                           "aggregation": "class_mean" if name in ev.CLASS_MEAN else "mean",
                           "description": get_metric(name).description} for name in ev.ALL_METRICS},
        "methods": rows,
    }
    report.write_json(results, out_dir / "results.json")
    report.write_csv(results, out_dir / "results.csv")
    report.write_html(results, out_dir)
    print(f"  wrote results.json, results.csv, report.html and figures/ in {results['elapsed_seconds']:.0f} s")
    return results
