"""``saliencylab reproduce PAPER``: train what a paper trains on the synthetic data, score it with the
benchmark engine at the paper's settings, and check the paper's claims on the numbers.

Each reproduction writes ``out_dir/results.json`` (``claims``, the engine results, settings, timing) and
``out_dir/report.html`` (the claims table, then the engine's tables). A claim is
``{id, statement, metric, higher_is_better, ours, reference, holds}``: ``ours`` holds our numbers per row,
``reference`` the paper's numbers where the paper (or its released README) gives them, else null, and
``holds`` is computed by :func:`claim` from ``ours``, never written by hand.

- ``000``: NN-Explainer (Stalder et al., "What You See is What You Classify", NeurIPS 2022).
- ``001``: masking-based saliency (Phang et al., "Investigating and Simplifying Masking-based Saliency
  Methods for Model Interpretability", 2020).
- ``002``: consistent interpretations (Pillai & Pirsiavash, "Explainable Models with Consistent Interpretations",
  AAAI 2021): baseline, GC, GMP, GMP+GC on single- and multi-label synthetic data.
- ``004``: the in-model explainer-classifier (Rio-Torto et al., "Understanding the decisions of CNNs: an in-model
  approach", Pattern Recognition Letters 2020).
- ``003``: deliberative explanations (Wang & Vasconcelos, "Deliberative Explanations: visualizing network
  insecurities", NeurIPS 2019), on synthetic CUB- and ADE20K-format sets with known shared parts and objects.
"""
from __future__ import annotations

import contextlib
import datetime
import html
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import saliencylab
from saliencylab import presets
from saliencylab.bench import report
from saliencylab.bench.demo import pick_device, prepare_classifier, prepare_data, prepare_explainers
from saliencylab.bench.masking import (data_randomization, masker_methods, prepare_maskers, prepare_single_label,
                                       wsol_data_config)
from saliencylab.bench.run import Row, html_tables, run_benchmark, weights_stamp
from saliencylab.data.ade20k import ADE20KDataset
from saliencylab.data.cub import CUBDataset
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.inmodel import InModelDataset
from saliencylab.data.module import InMemory, SaliencyDataModule
from saliencylab.data.polygons import CLASS_NAMES as POLYGON_CLASSES
from saliencylab.data.polygons import PolygonConfig, write_polygons
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.data.synthetic_ambiguity import AmbiguityConfig, write_synthetic_birds, write_synthetic_scenes
from saliencylab.data.transforms import RandomHorizontalFlip
from saliencylab.files import write_atomic
from saliencylab.insecurity.attribution import ATTRIBUTIONS
from saliencylab.insecurity.evaluate import OBJECT_FRACTIONS, RECALL_GRID, object_curve, part_curve, precision_at_recall
from saliencylab.insecurity.explain import SCORES, dataset_scores, difficulty_source, explain_hardest
from saliencylab.insecurity.ground_truth import common_objects, common_parts, object_fractions
from saliencylab.models.classifier import Classifier
from saliencylab.models.load import load_trained_classifier
from saliencylab.scale import in_processes
from saliencylab.training.classifier import fit_classifier
from saliencylab.training.consistency import fit_consistent, heldout_consistency
from saliencylab.training.fit import quiet_lightning
from saliencylab.training.hardness import fit_hardness, load_hardness, rejection_auc
from saliencylab.training.inmodel import InModelModule, fit_inmodel
from saliencylab.types import collate


def claim(claim_id: str, statement: str, metric: str, higher_is_better: bool, ours: dict[str, float],
          better: Sequence[str], worse: Sequence[str], reference: dict[str, float] | None = None,
          margin: float = 0.0) -> dict:
    """A claim record: ``holds`` is True when every row of ``better`` scores strictly better on ``metric`` (in its
    direction) than every row of ``worse``, or, with a ``margin``, better by at least ``margin`` (3: by 3 or more;
    -2: at most 2 worse; differences rounded to 1e-9); a missing or NaN score makes it False. ``ours``: row -> our
    number."""
    def value(row: str) -> float:
        number = ours.get(row)
        return math.nan if number is None else float(number)

    pairs = [(value(b), value(w)) for b in better for w in worse]
    gains = [b - w if higher_is_better else w - b for b, w in pairs]
    holds = all(gain > 0 if margin == 0 else round(gain, 9) >= margin for gain in gains)  # NaN compares False
    return {"id": claim_id, "statement": statement, "metric": metric, "higher_is_better": higher_is_better,
            "ours": dict(ours), "reference": reference, "holds": bool(holds)}


def _values(results: dict, metric: str, rows: Sequence[str]) -> dict[str, float]:
    """row -> the engine's aggregated value of ``metric`` (NaN when missing)."""
    out = {}
    for row in rows:
        value = results["rows"][row]["scores"].get(metric, {}).get("value")
        out[row] = math.nan if value is None else value
    return out


# ---------------------------------------------------------------- paper 000: NN-Explainer

def paper_settings_000(image_size: int) -> dict[str, dict]:
    """The compared methods at the NN-Explainer evaluation's settings (the authors' evaluation code).

    Grad-CAM: its defaults (the classifier's last feature map). RISE: TorchRay's defaults, 8000 masks of a
    7×7 grid, p = 0.5. Extremal perturbations: preserve, areas 0.05–0.3, blur pyramid of 8 levels, 800
    iterations, jitter, smoothing 0.09 of the side, contrastive reward, the smallest preserving area; the
    bump grid ``step`` 7 and radius ``sigma`` 21 px are for 224 px images, so both are scaled by
    ``image_size`` / 224 (3 and 9 px at 96 px), keeping the same number of bumps per image side.
    """
    scale = image_size / 224
    return {
        "gradcam": {},
        "rise": {"num_masks": 8000, "cells": 7, "p": 0.5, "score": "sigmoid", "seed": 0},
        "extremal_perturbation": {"areas": [0.05, 0.1, 0.2, 0.3], "variant": "preserve", "max_iter": 800,
                                  "num_levels": 8, "step": max(1, round(7 * scale)), "sigma": 21 * scale,
                                  "jitter": True, "smooth": 0.09, "reward": "contrastive",
                                  "select": "smallest_preserving"},
    }


METRICS_000 = ("mean_f1", "soft_f1", "soft_accuracy", "discrete_iou", "soft_iou", "pixel_auc", "pointing_game",
               "saliency_metric")
"""The engine's columns for paper 000: the NN-Explainer segmentation suite, the pointing game, the saliency metric."""
BASELINES_000 = ("gradcam", "rise", "extremal_perturbation")
CLAIM_METRICS_000 = {"mean_f1": "mean F1", "discrete_iou": "discrete IoU", "soft_iou": "soft (continuous) IoU"}


def claims_000(results: dict) -> list[dict]:
    """One claim per metric: the explainer beats Grad-CAM, RISE and EP (the paper's abstract; its tables are
    not in our notes, so the reference is null and the claim is the paper's qualitative one)."""
    return [claim(f"explainer_beats_baselines_{metric}",
                  f"The trained explainer's {name} is higher than Grad-CAM's, RISE's and extremal perturbations' "
                  "(qualitative: the paper reports the explainer superior on VOC-2007 and COCO-2014; its numbers are "
                  "not in our notes).",
                  metric, True, _values(results, metric, ("explainer", *BASELINES_000)), ["explainer"], BASELINES_000)
            for metric, name in CLAIM_METRICS_000.items()]


def reproduce_000(out_dir: Path, *, config: SyntheticConfig, device: torch.device, epochs: int = 15,
                  explainer_epochs: int | None = None, images: int = 50, batch_size: int = 32,
                  overrides: dict[str, dict] | None = None, progress: bool = True) -> dict:
    """Train the classifier and the explainer (preset ``synthetic``, ``explainer_epochs``: None = its 30 with early
    stopping) as the demo does, then score the explainer, Grad-CAM, RISE and EP at :func:`paper_settings_000`
    (``overrides``: method -> settings replacing them, recorded as deviations) on the first ``images`` test images,
    the same images for every row. Returns the ``claims``, ``settings``, ``deviations`` and ``bench`` results."""
    _, datamodule = prepare_data(out_dir, config, batch_size, progress)
    classifier, description = prepare_classifier(out_dir, config, datamodule, epochs, progress)
    print(f"  classifier held-out micro-F1 {description['test']['micro_f1']:.3f}")
    trained = prepare_explainers(out_dir, config, datamodule, explainer_epochs, progress, variants=("explainer",))
    settings = {"explainer": {"checkpoint": trained["explainer"]}, **paper_settings_000(config.image_size)}
    for method, changed in (overrides or {}).items():
        if method not in settings:
            raise ValueError(f"no method {method!r} in paper 000's rows ({', '.join(settings)})")
        settings[method] = {**settings[method], **changed}
    rows = {name: Row(name, values, images) for name, values in settings.items()}
    stamp = {"classifier": weights_stamp(out_dir / "classifier", trained["explainer"]), "dataset": "synthetic voc test"}
    bench = run_benchmark(classifier.use_channels_last(), datamodule.test, rows, out_dir / "bench", metric_names=METRICS_000,
                          description=stamp, batch_size=batch_size, device=device, progress=progress,
                          replace_stale=True)
    return {"claims": claims_000(bench), "settings": settings, "deviations": overrides or {},
            "classifier": {"test": description["test"], "epochs": description["epochs"]}, "bench": {"test": bench}}


# ---------------------------------------------------------------- paper 001: masking-based saliency

METRICS_001 = ("localization_error", "official_localization_error", "box_f1", "saliency_metric_wsol", "mask_mean",
               "max_box_acc", "max_box_acc_v2")
"""WSOL columns (the masking-saliency paper's evaluation) on the ImageNet-layout val split; PxAP runs on the OpenImages-layout split."""
ROWS_001 = ("fix", "ca", "gradcam", "center")
README_CA = {"LE": 0.35752, "OM": 0.48426}
"""The released code's README example output of ``score_bboxes.py`` on the ``ca`` run (ImageNet, 224 px)."""
FIG1C_LE = {"masker, fully trained": 0.358, "CAM (Zhou et al.)": 0.481, "Fong & Vedaldi": 0.431}
"""LE read off the paper's Fig. 1(C) (digitised, about ±0.002)."""


def claims_001(val: dict, randomization: dict) -> list[dict]:
    """The paper-001 claims on the engine's val results and the data-randomisation test."""
    le = _values(val, "localization_error", ROWS_001)
    om = _values(val, "official_localization_error", ROWS_001)
    claims = [
        claim("maskers_beat_gradcam_center_le",
              "Both maskers (FIX and CA) localise better than Grad-CAM and the center baseline: lower LE (the "
              "paper's masker reaches LE 0.358 on ImageNet against CAM's 0.481, Fig. 1C; it gives no Grad-CAM LE).",
              "localization_error", False, le, ["fix", "ca"], ["gradcam", "center"],
              {"masker, fully trained (Fig. 1C)": FIG1C_LE["masker, fully trained"],
               "CAM (Fig. 1C)": FIG1C_LE["CAM (Zhou et al.)"]}),
        claim("maskers_beat_gradcam_center_om",
              "Both maskers have a lower official localisation error (OM: LE or wrong top-1) than Grad-CAM and the "
              "center baseline (README example output of the CA run: OM 0.484, LE 0.358).",
              "official_localization_error", False, om, ["fix", "ca"], ["gradcam", "center"],
              {"CA (README example)": README_CA["OM"]}),
        claim("ca_beats_fix_le",
              "Training the classifier alongside the masker (CA) localises better than a fixed classifier (FIX): "
              "lower LE. The abstract names it one of the two most important ingredients; the paper's FIX/CA "
              "numbers (Table 1, rows I and J) are not in our notes, so this is the qualitative claim.",
              "localization_error", False, le, ["ca"], ["fix"]),
    ]
    pairs = {"fix_seed2": randomization["trained_vs_trained"], "fix_random_labels":
             randomization["trained_vs_random_labels"]}
    for measure in ("spearman", "spearman_abs", "hog_pearson", "ssim"):
        claims.append(claim(
            f"data_randomization_{measure}",
            f"Data randomisation (Adebayo et al. 2018): the FIX masker's masks are more similar "
            f"({measure}) to a second FIX masker's (other seed) than to a FIX masker trained on random labels "
            "(qualitative; the paper gives no numbers).",
            measure, True, {row: pair[measure] for row, pair in pairs.items()}, ["fix_seed2"], ["fix_random_labels"]))
    return claims


def reproduce_001(out_dir: Path, *, config: SyntheticConfig, device: torch.device, epochs: int = 15,
                  masker_epochs: int = 20, wsol_config: SyntheticConfig | None = None, batch_size: int = 32,
                  progress: bool = True) -> dict:
    """Train the classifier as the demo does, the four maskers of ``bench.masking.MASKERS`` (presets
    ``synthetic_fix`` / ``synthetic_ca``, ``masker_epochs`` whole passes: the preset's 20 by default) on the
    single-label set ``wsol_config``; score FIX, CA, Grad-CAM and the center baseline with the engine (WSOL
    metrics on val, PxAP on the OpenImages-layout test split); run the data-randomisation test on val."""
    _, datamodule = prepare_data(out_dir, config, batch_size, progress)
    classifier, description = prepare_classifier(out_dir, config, datamodule, epochs, progress)
    print(f"  classifier held-out micro-F1 {description['test']['micro_f1']:.3f}")
    wsol_config = wsol_config or wsol_data_config(config)
    root, val, test = prepare_single_label(out_dir, wsol_config, progress)
    folders, maskers = prepare_maskers(out_dir, root, out_dir / "classifier", wsol_config, masker_epochs, progress)
    rows = {"fix": Row("masker", {"checkpoint": str(folders["fix"])}),
            "ca": Row("masker", {"checkpoint": str(folders["ca"])}), "gradcam": Row("gradcam"),
            "center": Row("center_box")}
    stamp = {"classifier": weights_stamp(out_dir / "classifier", *folders.values()), "dataset": str(root)}
    common = dict(description=stamp, batch_size=batch_size, device=device, progress=progress, replace_stale=True)
    bench_val = run_benchmark(classifier, val, rows, out_dir / "bench_val", metric_names=METRICS_001, **common)
    bench_pxap = run_benchmark(classifier, test, rows, out_dir / "bench_pxap", metric_names=["pxap"], **common)
    classifier = classifier.to(device)
    randomization = data_randomization(masker_methods(classifier, folders),
                                       collate([val[i] for i in range(len(val))]).to(device))
    return {"claims": claims_001(bench_val, randomization), "maskers": maskers,
            "dataset": {"root": str(root), **asdict(wsol_config)}, "data_randomization": randomization,
            "classifier": {"test": description["test"], "epochs": description["epochs"]},
            "bench": {"val": bench_val, "openimages_test": bench_pxap}}


# ---------------------------------------------------------------- paper 002: consistent interpretations

PRESETS_002 = {"single_label": "synthetic", "multi_label": "synthetic_multilabel"}
"""The ``consistent`` preset of each kind of data."""
VARIANTS_002 = {"baseline": {"pooling": "avg", "consistency_weight": 0.0}, "gc": {"pooling": "avg"},
                "gmp": {"pooling": "max", "consistency_weight": 0.0}, "gmp_gc": {"pooling": "max"}}
"""The four classifiers of the README's table: GAP or GMP, trained without (λ = 0) or with the consistency loss
(the preset's λ); the same preset, seed and epochs otherwise."""
GRADCAM_ROWS_002 = ("gradcam_elementwise", "gradcam")
"""Both Grad-CAM flavours of the original's evaluation scripts: element-wise (ImageNet, COCO SPG) and standard
(COCO PG / content heatmap)."""
OTHER_METHODS_002 = ("gradient", "input_x_gradient", "integrated_gradients", "occlusion")
"""The paper's second claim: the gain carries over to other explanation methods (gradient family: gradient,
input × gradient, integrated gradients; perturbation family: occlusion), scored at the training resolution with
the library defaults (the paper's tables of these are not in our notes). RISE is left out: its 8000 masks cost
minutes per classifier on 2 cores."""
LOCALISATION_002 = ("pointing_game", "stochastic_pointing_game", "energy")
QUALITY_002 = {"single_label": ("classifier_top1",), "multi_label": ("classifier_f1_per_class", "classifier_f1_overall")}
SEEDS_002 = (0, 1, 2)
"""Training seeds of reproduction 002; the claims are checked on the means over them. One seed's SPG / content
heatmap gain of GC moves by ±1 point from seed to seed (and with the thread count: another float summation order
is another training trajectory), as large as the gains themselves (README)."""
THREADS_002 = 1
"""Intra-op threads of reproduction 002 on the CPU: fixed, so its numbers do not depend on the machine's or
OMP_NUM_THREADS's thread count (each count sums in another order: other trajectories from the same seeds), and
one thread is the faster on these small convolutions under load."""
WORKERS_002 = 2
"""Classifiers of reproduction 002 trained at once on the CPU, each in its own process with THREADS_002 threads
(2 cores: two one-thread trainings instead of one); each trains exactly as it would in this process."""
README_RESNET18 = {"top1": {"baseline": 69.43, "gc": 67.74, "gmp": 69.08, "gmp_gc": 69.02},
                   "pointing_game": {"baseline": 79.80, "gc": 80.00, "gmp": 79.30, "gmp_gc": 79.60},
                   "stochastic_pointing_game": {"baseline": 60.50, "gc": 65.85, "gmp": 66.66, "gmp_gc": 68.74},
                   "energy": {"baseline": 54.36, "gc": 57.73, "gmp": 62.89, "gmp_gc": 65.35}}
"""The README's ImageNet ResNet18 rows (percent); the README's COCO table is a copied placeholder, not a reference."""


def consistent_data_config(config: SyntheticConfig, train: int = 420, val: int = 100, test: int = 100) -> SyntheticConfig:
    """The synthetic sets of reproduction 002: ``config``'s image size and seed, its own sizes (single-label: train
    is split into training and 10 per class of model selection, val is scored; multi-label: train, val, test)."""
    return replace(config, train=train, val=val, test=test)


def prepare_consistent(folder: Path, preset_name: str, datamodule: SaliencyDataModule, variant: dict, epochs: int | None,
                       stamp: dict, progress: bool) -> tuple[Classifier, dict]:
    """Train one classifier of :data:`VARIANTS_002` with preset ``preset_name`` (or reuse the one trained with the
    same ``stamp``); the classifier and its description."""
    preset = presets.load("consistent", preset_name)
    settings = {**preset["consistent"], **variant, **({"max_epochs": epochs} if epochs is not None else {})}
    stamp = {**stamp, "preset": preset_name, "settings": settings}
    description_file = folder / "classifier.json"
    if description_file.is_file() and json.loads(description_file.read_text()).get("reproduce") == stamp:
        print(f"  reusing {folder.name} (pass --fresh to retrain)")
        return load_trained_classifier(folder)
    started = time.perf_counter()
    class_names = list(preset["data"]["class_names"])
    fit_consistent(datamodule, folder, num_classes=len(class_names), class_names=class_names, progress=progress,
                   **settings)
    description = json.loads(description_file.read_text())
    description.update(reproduce=stamp, train_seconds=time.perf_counter() - started)
    write_atomic(description_file, json.dumps(description, indent=2))
    print(f"  {folder.name}: {description['epochs']} epochs in {description['train_seconds']:.0f} s, "
          + "  ".join(f"{k} {v:.3f}" for k, v in description["scores"].items() if not k.endswith("loss")))
    return load_trained_classifier(folder)


def train_consistent_002(out_dir: Path, data_config: SyntheticConfig, batch_size: int, kind: str, variant: str,
                         seed: int, epochs: int | None, threads: int | None) -> str:
    """Train (or find already trained) the ``kind`` classifier ``variant`` of seed ``seed`` of reproduction 002 into its
    folder, with ``threads`` intra-op threads; one line saying so. A worker process's task: the data must exist."""
    quiet_lightning()
    if threads is not None:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        datamodule, _ = consistent_data_002(out_dir, data_config, batch_size, progress=False)[kind]
        prepare_consistent(out_dir / "consistent" / f"{kind}_{variant}_seed{seed}", PRESETS_002[kind], datamodule,
                           {**VARIANTS_002[variant], "seed": seed}, epochs, {"data": asdict(data_config)}, progress=False)
    return printed.getvalue().strip().splitlines()[-1]


def consistent_data_002(out_dir: Path, config: SyntheticConfig, batch_size: int,
                        progress: bool) -> dict[str, tuple[SaliencyDataModule, Dataset]]:
    """kind -> (training datamodule, scored split): single-label (ImageNet layout: train_train, train_val for the
    best epoch, val with boxes scored) and multi-label (the demo's VOC splits: train, val, test with segmentation)."""
    root, val, _ = prepare_single_label(out_dir, config, progress)
    metadata, size = root / "imagenet" / "metadata", config.image_size
    single = SaliencyDataModule(InMemory(ImageNetDataset(metadata / "train_train.json", size=size), RandomHorizontalFlip()),
                                InMemory(ImageNetDataset(metadata / "train_val.json", size=size)), batch_size=batch_size)
    _, multi = prepare_data(out_dir, config, batch_size, progress)
    return {"single_label": (single, val), "multi_label": (SaliencyDataModule(multi.train, multi.val, batch_size=batch_size),
                                                           multi.test)}


def table_002(bench: dict, kind: str, seed: int) -> dict[str, dict[str, float]]:
    """variant -> metric -> value (percent) of the element-wise Grad-CAM rows of one seed: the README table's shape."""
    columns = (*QUALITY_002[kind], *LOCALISATION_002)
    return {variant: {m: 100 * _values(bench[f"{kind}/{variant}/seed{seed}"], m, ["gradcam_elementwise"])
                      ["gradcam_elementwise"] for m in columns} for variant in VARIANTS_002}


def other_energies_002(bench: dict, kind: str, seed: int) -> dict[str, float]:
    """"method variant" -> energy (percent) of :data:`OTHER_METHODS_002` on the baseline and GC classifiers of one seed."""
    return {f"{method} {variant}": 100 * _values(bench[f"{kind}/{variant}/seed{seed}/other"], "energy", [method])[method]
            for method in OTHER_METHODS_002 for variant in ("baseline", "gc")}


def mean_over_seeds(values: Sequence[dict]) -> tuple[dict, dict]:
    """Per-seed nested dicts of numbers (all of one shape) -> (mean, population std) of each leaf, same shape."""
    first = values[0]
    if isinstance(first, dict):
        pairs = {key: mean_over_seeds([v[key] for v in values]) for key in first}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    return float(np.mean(values)), float(np.std(values))


def claims_002(tables: dict, energies: dict) -> list[dict]:
    """The issue's claims on each kind of data, computed from the numbers (percent; in the reproduction the means
    over its seeds): ``tables`` kind -> :func:`table_002`, ``energies`` kind -> :func:`other_energies_002`."""
    claims = []
    for kind, table in tables.items():
        def column(metric: str) -> dict[str, float]:
            return {variant: row[metric] for variant, row in table.items()}
        quality = QUALITY_002[kind][0]
        reference_quality = README_RESNET18["top1"] if kind == "single_label" else None
        claims += [
            claim(f"{kind}_gc_raises_spg", f"{kind}: Grad-CAM consistency raises the stochastic pointing game over the "
                  "baseline by at least 3 points (README ResNet18: 60.50 -> 65.85).", "stochastic_pointing_game", True,
                  column("stochastic_pointing_game"), ["gc"], ["baseline"], README_RESNET18["stochastic_pointing_game"], 3.0),
            claim(f"{kind}_gc_raises_content_heatmap", f"{kind}: Grad-CAM consistency raises the content heatmap "
                  "(energy inside the ground truth) over the baseline by at least 3 points (README ResNet18: 54.36 -> "
                  "57.73).", "energy", True, column("energy"), ["gc"], ["baseline"], README_RESNET18["energy"], 3.0),
            claim(f"{kind}_gc_accuracy_cost", f"{kind}: the consistency loss costs at most 2 points of "
                  f"{'top-1' if kind == 'single_label' else 'per-class F1'} (README ResNet18: 69.43 -> 67.74).", quality,
                  True, column(quality), ["gc"], ["baseline"], reference_quality, -2.0),
            claim(f"{kind}_gmp_gc_best_spg", f"{kind}: GMP + GC has the best stochastic pointing game of the four "
                  "(README ResNet18: 68.74 against 60.50, 65.85, 66.66).", "stochastic_pointing_game", True,
                  column("stochastic_pointing_game"), ["gmp_gc"], ["baseline", "gc", "gmp"],
                  README_RESNET18["stochastic_pointing_game"]),
        ]
        energy = energies[kind]
        improved = [m for m in OTHER_METHODS_002 if energy[f"{m} gc"] > energy[f"{m} baseline"]]
        claims.append({"id": f"{kind}_other_methods_energy", "statement": f"{kind}: the gain carries over to other "
                       "explanation methods: at least two of gradient, input × gradient, integrated gradients and occlusion put more "
                       f"energy inside the ground truth on the GC classifier than on the baseline (improved: "
                       f"{', '.join(improved) or 'none'}; qualitative, the paper's tables are not in our notes).",
                       "metric": "energy", "higher_is_better": True, "ours": dict(energy), "reference": None,
                       "holds": len(improved) >= 2})
    return claims


def reproduce_002(out_dir: Path, *, config: SyntheticConfig, device: torch.device, epochs: int | None = None,
                  seeds: Sequence[int] = SEEDS_002, batch_size: int = 32, data_config: SyntheticConfig | None = None,
                  threads: int | None = THREADS_002, workers: int = WORKERS_002, progress: bool = True) -> dict:
    """Train baseline, GC, GMP and GMP+GC (:data:`VARIANTS_002`; presets ``synthetic`` and ``synthetic_multilabel``,
    ``epochs``: None = the presets') with each training seed of ``seeds`` on the single- and multi-label synthetic
    sets (``data_config``, default :func:`consistent_data_config`), score both Grad-CAM flavours on every classifier
    and the :data:`OTHER_METHODS_002` on the baseline and GC classifiers with the engine, and check the claims on
    the means over the seeds (``tables``; ``spread``: their standard deviations; ``seed_tables``: each seed's).
    Beside the tables, each classifier's consistency on held-out composites (the model-selection split, seed 0;
    :func:`~saliencylab.training.consistency.heldout_consistency`): what GC is trained for, whatever the maps score.
    ``threads``: torch's intra-op threads on the CPU meanwhile (None: leave them); ``workers``: classifiers trained
    at once on the CPU, in that many processes (:data:`WORKERS_002`, :func:`~saliencylab.scale.in_processes`),
    before the scoring reuses them.

    Maps are computed at the training side, not at twice it as the original's 448 px maps of 224 px training
    (the engine's ``explain_short_side``): these classifiers learn one scale (no RandomResizedCrop), and at twice
    the side their top-1 falls to chance (17-21 % on 6 classes), so the maps would explain misread images. The
    pointing tolerance is the engine's default 4 % of the side (the original's 15 px of ~375 px images)."""
    data_config = data_config or consistent_data_config(config)
    bench, classifiers, seed_tables, seed_energies = {}, {}, {}, {}
    data = consistent_data_002(out_dir, data_config, batch_size, progress)
    if device.type == "cpu" and workers > 1:
        in_processes(train_consistent_002, [(out_dir, data_config, batch_size, kind, variant, seed, epochs, threads)
                                            for kind in data for seed in seeds for variant in VARIANTS_002],
                     workers, "training", progress)
    with intra_op_threads(threads if device.type == "cpu" else None):
        for kind, (datamodule, scored) in data.items():
            for seed in seeds:
                for variant, settings in VARIANTS_002.items():
                    name = f"{kind}/{variant}/seed{seed}"
                    folder = out_dir / "consistent" / f"{kind}_{variant}_seed{seed}"
                    classifier, description = prepare_consistent(folder, PRESETS_002[kind], datamodule,
                                                                 {**settings, "seed": seed}, epochs,
                                                                 {"data": asdict(data_config)}, progress)
                    consistency = heldout_consistency(classifier, datamodule.val, description["num_classes"],
                                                      multi_label=kind == "multi_label",
                                                      layer=description["consistency"]["layer"])
                    print(f"  {kind}_{variant}_seed{seed}: held-out consistency L1 {consistency['consistency_l1']:.5f}, "
                          f"positive-cell mass {100 * consistency['positive_cell_mass']:.1f} %")
                    classifiers[name] = {**{k: description.get(k) for k in ("scores", "epochs", "train_seconds")},
                                         "heldout_consistency": consistency}
                    common = dict(description={"classifier": weights_stamp(folder),
                                               "dataset": f"synthetic {kind} {asdict(data_config)}"},
                                  batch_size=batch_size, device=device, progress=progress, replace_stale=True)
                    bench[name] = run_benchmark(
                        classifier, scored, GRADCAM_ROWS_002, out_dir / "bench" / f"{kind}_{variant}_seed{seed}",
                        metric_names=(*LOCALISATION_002, *QUALITY_002[kind]), **common)
                    if variant in ("baseline", "gc"):
                        bench[f"{name}/other"] = run_benchmark(
                            classifier, scored, OTHER_METHODS_002, out_dir / "bench" / f"{kind}_{variant}_seed{seed}_other",
                            metric_names=LOCALISATION_002, **common)
                seed_tables[f"{kind} seed {seed}"] = table_002(bench, kind, seed)
                seed_energies[f"{kind} seed {seed}"] = other_energies_002(bench, kind, seed)
    tables, spread, energies = {}, {}, {}
    for kind in QUALITY_002:
        tables[kind], spread[kind] = mean_over_seeds([seed_tables[f"{kind} seed {s}"] for s in seeds])
        energies[kind], _ = mean_over_seeds([seed_energies[f"{kind} seed {s}"] for s in seeds])
        print(f"  {kind} (element-wise Grad-CAM, percent, mean ± std over seeds {list(seeds)})\n"
              + markdown_table(tables[kind], spread[kind]))
    consistency = {f"{kind}/{variant}": mean_over_seeds([classifiers[f"{kind}/{variant}/seed{s}"]["heldout_consistency"]
                                                          for s in seeds])[0]
                   for kind in QUALITY_002 for variant in VARIANTS_002}
    return {"claims": claims_002(tables, energies), "seeds": list(seeds), "tables": tables, "spread": spread,
            "seed_tables": seed_tables, "other_energies": energies, "heldout_consistency": consistency,
            "classifiers": classifiers, "dataset": asdict(data_config), "bench": bench}


def markdown_table(table: dict[str, dict[str, float]], spread: dict[str, dict[str, float]] | None = None) -> str:
    """variant -> column -> value as a Markdown table (2 decimals); with ``spread`` (same shape) "value ± spread"."""
    columns = list(next(iter(table.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {variant} | " + " | ".join(f"{row[c]:.2f}" + (f" ± {spread[variant][c]:.2f}" if spread else "")
                                             for c in columns) + " |" for variant, row in table.items()]
    return "\n".join(lines) + "\n"
# ---------------------------------------------------------------- paper 004: in-model explainer-classifier

POLYGONS_004 = PolygonConfig(image_size=64, trainval=800, test=100, radius=(7.0, 12.0), shapes=3, seed=0)
"""The polygon data of reproduction 004: triangles among circles at 64 px (train 600, val 200, test 100)."""
POST_HOC_004 = ("deconvnet", "guided_backprop", "guided_gradcam", "input_x_gradient", "integrated_gradients",
                "gradient")
"""The captum methods the paper compares (LRP-α1β0 aside: not in saliencylab), at captum's defaults."""
CLAIM_GRID_004 = ("blur", 4)
"""The claims' AOPC: Gaussian blur, 4 px patches at 64 px: a 16×16 grid, the nearest to the paper's 14×14 grid of
16 px patches at 224 px."""
FULL_GRID_004 = (CLAIM_GRID_004, ("black", 4), ("white", 4), ("gray", 4), ("uniform", 4), ("blur", 2), ("blur", 8),
                 ("blur", 16))
"""(perturbation, patch px) pairs of ``--aopc-grid full``: every perturbation at 4 px, every patch size (32, 16, 8
and 4 cells a side; the paper's 56, 28, 14, 7) under blur. Each pair costs as much as the claims' one."""
VARIANTS_004 = ("hybrid", "unsupervised")
PHASE1_004 = "phase1"
"""The folder of the phase-1 network both variants start phase 2 from (the same weights and the same random state:
only the loss differs)."""
THREADS_004 = 1
"""Intra-op threads of reproduction 004 on the CPU: at 64 px a second thread trains slower, and each count sums in
another order, so the numbers would depend on the machine (README)."""
WORKERS_004 = 2
"""The two networks' phases 2-3 and scoring run at once on the CPU, each in its own one-thread process."""
FAITHFULNESS_BATCH_004 = 32
"""Perturbed images per classifier pass in the AOPC curves (the metric's default is 64). At 64 px the in-model
network's 64-image activations (33 MB each) are just over glibc's largest mmap threshold (32 MB), so every pass
mapped fresh pages: for 13 curves, 7.4 s of system time against 2.5 s with 32, at the same user time. The
curves do not depend on it (tests/test_faithfulness.py)."""


def prepare_inmodel(folder: Path, data: Path, datamodule: SaliencyDataModule, loss: str, device: torch.device,
                    progress: bool, epochs: Sequence[int], image_size: int = POLYGONS_004.image_size,
                    phase1: Path | None = None) -> tuple[Classifier, dict]:
    """Fit an in-model network (preset ``polygons``, ``loss``, phase ``epochs``) into ``folder``, or reuse the one
    fitted on the same data with the same settings. ``phase1``: a fit's folder whose best phase-1 network this one
    starts from (its own phase 1 then has 0 epochs)."""
    settings = {**presets.load("inmodel", "polygons")["inmodel"], "loss": loss, "epochs": list(epochs)}
    stamp = {"data": str(data), "settings": settings, "phase1_from": None if phase1 is None else phase1.name}
    description_file = folder / "classifier.json"
    if description_file.is_file() and json.loads(description_file.read_text()).get("reproduce") == stamp:
        print(f"  reusing {folder.name} (pass --fresh to retrain)")
        return load_trained_classifier(folder)
    initial_state = None
    if phase1 is not None:
        best = next((phase1 / "phase1" / "checkpoints").glob("epoch*.ckpt"))
        initial_state = InModelModule.load_from_checkpoint(best, map_location="cpu", weights_only=True).net.state_dict()
    fit_inmodel(datamodule, folder, num_classes=len(POLYGON_CLASSES), class_names=list(POLYGON_CLASSES),
                progress=progress, accelerator="gpu" if device.type == "cuda" else "cpu",
                data={"image_size": image_size}, initial_state=initial_state, **settings)
    description = json.loads(description_file.read_text())
    write_atomic(description_file, json.dumps({**description, "reproduce": stamp}, indent=2))
    return load_trained_classifier(folder)


def polygon_data_004(out_dir: Path, polygons: PolygonConfig, progress: bool) -> tuple[Path, SaliencyDataModule]:
    """The polygon data of reproduction 004 under ``out_dir/data`` (written unless there) and its datamodule."""
    data = out_dir / "data"
    if not (data / "test").is_dir():
        write_polygons(data, polygons, progress=progress)
    splits = [InMemory(InModelDataset(data, split, POLYGON_CLASSES)) for split in ("train", "val", "test")]
    return data, SaliencyDataModule(*splits, batch_size=presets.load("inmodel", "polygons")["data"]["batch_size"])


def network_004(out_dir: Path, polygons: PolygonConfig, variant: str, device: torch.device, epochs: Sequence[int],
                images: int, grid: Sequence[tuple[str, int]], batch_size: int, progress: bool) -> tuple[dict, dict]:
    """Phases 2-3 of the ``variant`` in-model network from the shared phase 1 (``out_dir/phase1``), then its own map
    and the :data:`POST_HOC_004` methods scored on the first ``images`` test images: POMPOM and AOPC (MoRF, 100
    steps) per (perturbation, patch) of ``grid``. Returns the network's description and the engine's results by
    name; trained networks and scored batches already on disk are reused."""
    data, datamodule = polygon_data_004(out_dir, polygons, progress)
    classifier, description = prepare_inmodel(out_dir / variant, data, datamodule, variant, device, progress,
                                              [0, *epochs[1:]], polygons.image_size, phase1=out_dir / PHASE1_004)
    common = dict(description={"classifier": weights_stamp(out_dir / variant), "dataset": str(data)},
                  batch_size=batch_size, device=device, progress=progress, replace_stale=True)
    rows = {name: Row(name, {}, images) for name in ("inmodel", *POST_HOC_004)}
    bench = {"POMPOM": run_benchmark(classifier, datamodule.test, rows, out_dir / f"bench_{variant}" / "pompom",
                                     metric_names=["pompom"], **common)}
    for perturbation, patch in grid:
        bench[f"AOPC {perturbation}, {patch} px"] = run_benchmark(
            classifier, datamodule.test, rows, out_dir / f"bench_{variant}" / f"aopc_{perturbation}_{patch}",
            metric_names=["aopc_morf"], options={"perturbation": perturbation, "patch": patch, "steps": 100,
                                                 "faithfulness_batch": FAITHFULNESS_BATCH_004}, **common)
    return description, bench


def network_004_line(out_dir: Path, polygons: PolygonConfig, variant: str, device: str, epochs: Sequence[int],
                     images: int, grid: Sequence[tuple[str, int]], batch_size: int) -> str:
    """:func:`network_004` in a worker process (one thread, quiet): one line saying what it trained."""
    quiet_lightning()
    torch.set_num_threads(THREADS_004)
    with contextlib.redirect_stdout(io.StringIO()):
        description, _ = network_004(out_dir, polygons, variant, torch.device(device), epochs, images, grid,
                                     batch_size, progress=False)
    return f"{variant}: trained and scored, test accuracy {description['test']['accuracy']:.3f}"


def claims_004(pompom: dict[str, float], aopc: dict[str, dict[str, float]]) -> list[dict]:
    """POMPOM hybrid < unsupervised; each in-model variant's AOPC (blur, 16 px at 224) above every post-hoc method's
    on that variant's own network. The README gives no numbers for these (its AOPC figure is read off a plot)."""
    perturbation, patch = CLAIM_GRID_004
    claims = [claim("pompom_hybrid_below_unsupervised",
                    "The hybrid loss puts fewer meaningful explanation pixels outside the target's box than the "
                    "unsupervised one: lower POMPOM (qualitative; the README's POMPOM values are only in a figure).",
                    "pompom", False, pompom, ["hybrid"], ["unsupervised"])]
    for variant in VARIANTS_004:
        claims.append(claim(
            f"aopc_{variant}_above_post_hoc",
            f"The {variant} in-model explanation has a higher AOPC ({perturbation}, {patch} px patches at 64 px ≈ "
            f"16 px at 224, 100 MoRF steps) than every post-hoc method on the same network (README figure: the "
            "proposed variants are on top in every panel; ≈0.31-0.32 at 16 px, black perturbation, ImagenetHVZ).",
            "aopc_morf", True, aopc[variant], ["inmodel"], POST_HOC_004,
            {"in-model, 16 px, black (ImagenetHVZ figure)": 0.315}))
    return claims


def reproduce_004(out_dir: Path, *, config: SyntheticConfig, device: torch.device, images: int = 50,
                  polygons: PolygonConfig = POLYGONS_004, phase_epochs: Sequence[int] | None = None,
                  grid: Sequence[tuple[str, int]] = (CLAIM_GRID_004,), batch_size: int = 25,
                  workers: int = WORKERS_004, progress: bool = True) -> dict:
    """Write the polygons, fit phase 1 (the classifier, α = 1: the same for both losses) once, then the hybrid and
    the unsupervised in-model networks' phases 2-3 from it (preset ``polygons``; ``phase_epochs``: None = its
    epochs), and for each network score its own map (method ``inmodel``) and the post-hoc methods of
    :data:`POST_HOC_004` with the engine on the first ``images`` test images (the same for every row; a subset for
    time): POMPOM, and AOPC (MoRF, 100 steps) for each (perturbation, patch) of ``grid`` (default: the claims'
    pair only; :data:`FULL_GRID_004` for every perturbation and patch size). On the CPU, with :data:`THREADS_004`
    threads, the two networks train and score at once in ``workers`` processes (:func:`~saliencylab.scale.in_processes`).
    ``config`` (the VOC scenes of papers 000/001) is not used."""
    epochs = list(phase_epochs or presets.load("inmodel", "polygons")["inmodel"]["epochs"])
    networks, bench, pompom, aopc = {}, {}, {}, {}
    with intra_op_threads(THREADS_004 if device.type == "cpu" else None):
        data, datamodule = polygon_data_004(out_dir, polygons, progress)
        _, phase1 = prepare_inmodel(out_dir / PHASE1_004, data, datamodule, VARIANTS_004[0], device, progress,
                                    [epochs[0], 0, 0], polygons.image_size)
        print(f"  phase 1 (shared): test accuracy {phase1['test']['accuracy']:.3f}")
        jobs = [(out_dir, polygons, variant, str(device), epochs, images, grid, batch_size) for variant in VARIANTS_004]
        if device.type == "cpu" and workers > 1:
            in_processes(network_004_line, jobs, workers, "in-model networks", progress)
        for variant in VARIANTS_004:
            description, results = network_004(out_dir, polygons, variant, device, epochs, images, grid, batch_size,
                                               progress)
            networks[variant] = {"test": description["test"],
                                 "phases": phase1["training"]["phases"] + description["training"]["phases"]}
            print(f"  {variant}: test accuracy {description['test']['accuracy']:.3f}")
            bench.update({f"{variant}: {name}": result for name, result in results.items()})
            pompom[variant] = _values(results["POMPOM"], "pompom", ["inmodel"])["inmodel"]
            aopc[variant] = _values(results[f"AOPC {CLAIM_GRID_004[0]}, {CLAIM_GRID_004[1]} px"], "aopc_morf",
                                    ["inmodel", *POST_HOC_004])
    return {"claims": claims_004(pompom, aopc), "dataset": asdict(polygons), "networks": networks,
            "settings": {"images": images, "grid": [list(g) for g in grid], "post_hoc": list(POST_HOC_004),
                         "phase_epochs": epochs, "threads": THREADS_004},
            "bench": bench}


# ---------------------------------------------------------------- paper 003: deliberative explanations

DELIBERATIVE_DATA = AmbiguityConfig(image_size=48, train=1000, test=200, classes=10, hide=0.3, seed=0)
"""The synthetic bird (CUB layout) and scene (ADE20K layout) sets of reproduction 003. 1000 training images, so the
validation tenth that picks the predictor's epoch (accuracy after rejection) holds ~10 errors, not ~5 (with 500,
the picked epoch's validation AUC and the test AUC disagreed: 95.3 vs 90.4)."""
DELIBERATIVE_LAYER = "features"
PRESS_003 = {"birds": 5.0, "scenes": 10.0}
"""``press`` of the original's CUB-VGG and ADE-VGG scripts."""
HARDNESS_LR_003 = 1e-3
"""Deviation: the original's predictor lr 1e-5 fine-tunes for ~2500 steps from an ImageNet VGG; here the head
starts from scratch and gets ~120 steps, where 1e-5 would leave it at its random start. Fixed before any run; a
later sweep on the validation rejection AUC (birds, seed 0, 10 epochs) agreed: 1e-5 93.4 (output std 0.06),
1e-4 94.1, 1e-3 95.3, 1e-2 90.7 (a constant output)."""
ROWS_003 = tuple(f"{score}+{attribution}" for score in SCORES for attribution in ("gradient", "second_order"))
"""Scores × attributions explained on the K hardest images by each score."""
IG_IMAGES = 50
"""Integrated gradients (51 points, 5 class maps + the difficulty map: ~350 passes per image) runs on the 50
hardest of the hardness predictor's K; its row is compared with the other hardness rows on those same 50."""
THREADS_003 = 1
"""Intra-op threads of reproduction 003 on the CPU: its work is thousands of small ops (48 px, width 8), where a
second thread costs more in synchronisation than it gains (on a loaded machine, 17x slower per op)."""
SUBSET_ROWS_003 = tuple(f"hardness+{attribution}@{IG_IMAGES}" for attribution in ATTRIBUTIONS)


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None: unchanged); restore the previous number afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _birds_common(root: Path, test: CUBDataset) -> np.ndarray:
    return common_parts(test.attributes())


def _scenes_common(root: Path, test: ADE20KDataset) -> np.ndarray:
    splits = [ADE20KDataset(root, split, image_size=test.size) for split in ("train", "val")]
    present = [d.objects_present(i) for d in splits for i in range(len(d))]
    labels = [d.labels[d.ids[i]] for d in splits for i in range(len(d))]
    return common_objects(object_fractions(present, labels, test.num_classes, len(test.object_names)))


def _prepare_models_003(folder: Path, datamodule: SaliencyDataModule, class_names: Sequence[str], stamp: dict,
                        epochs: int, hardness_epochs: int, press: float, seed: int,
                        progress: bool) -> tuple[Classifier, Classifier]:
    """Pretrain the classifier (the demo's recipe), then train it jointly with its hardness predictor; reuse both
    when ``folder`` holds a run with the same ``stamp``."""
    description = folder / "hardness" / "hardness.json"
    if description.is_file() and json.loads(description.read_text()).get("reproduce") == stamp:
        print(f"  reusing {folder} (pass --fresh to retrain)")
        return load_hardness(folder / "hardness")
    pretrained = folder / "classifier" / "classifier.json"
    if not (pretrained.is_file() and json.loads(pretrained.read_text()).get("data") == stamp):
        fit_classifier(datamodule, folder / "classifier", num_classes=len(class_names), class_names=list(class_names),
                       max_epochs=epochs, width=8, lr=3e-3, seed=seed, progress=progress, data=stamp)
    fitted = fit_hardness(datamodule, folder / "hardness", classifier_dir=folder / "classifier",
                          max_epochs=hardness_epochs, seed=seed, press=press, hardness_lr=HARDNESS_LR_003,
                          progress=progress)
    report.write_atomic(description, json.dumps({**fitted, "reproduce": stamp}, indent=2))
    return load_hardness(folder / "hardness")


def _row_value(kind: str, curve: dict) -> float:
    """The compared number of one run: mean precision over the recall grid 0.10-0.44 (birds), mean IoU over
    ρ ∈ {.1,.3,.5,.7,.9} (scenes); NaN parts of the grid (recalls not reached) are skipped."""
    values = precision_at_recall(curve) if kind == "birds" else curve["iou"]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _curve_figure(kind: str, curves: dict[str, list[dict]], path: Path) -> str:
    """PR curves (birds: precision at the recall grid, mean ± std over runs) or IoU per ρ (scenes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for row, runs in curves.items():
        if kind == "birds":
            x = np.array(RECALL_GRID)
            ys = np.array([precision_at_recall(curve) for curve in runs])
        else:
            x = np.array(OBJECT_FRACTIONS)
            ys = np.array([curve["iou"] for curve in runs])
        mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
        style = "-" if row.endswith("second_order") else "--" if row.endswith("gradient") else ":"
        axes.plot(x, mean, style, label=row)
        axes.fill_between(x, mean - std, mean + std, alpha=0.12)
    axes.set_xlabel("recall" if kind == "birds" else "ρ (kept fraction)")
    axes.set_ylabel("precision" if kind == "birds" else "IoU with the common objects")
    axes.set_title(f"synthetic {kind}: {'common parts' if kind == 'birds' else 'common objects'}, mean ± std")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def claims_003(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """The paper's qualitative claims on each synthetic set, from the mean over runs of each row's value."""
    claims = []
    for kind, rows in summary.items():
        metric = ("precision at recall 0.10-0.44 (common parts)" if kind == "birds"
                  else "mean IoU over ρ .1-.9 (common objects)")
        means = {row: values["mean"] for row, values in rows.items()}
        for attribution in ("second_order", "gradient"):
            claims.append(claim(
                f"{kind}_hardness_beats_confidence_entropy_{attribution}",
                f"Synthetic {kind}: with {attribution} attributions, the hardness predictor's insecurities match the "
                "ground-truth ambiguities better than those of the confidence score and the entropy (the abstract: "
                "a non self-referential difficulty score is best; the paper's figures are not in our notes).",
                metric, True, {r: means[r] for r in (f"{s}+{attribution}" for s in SCORES)},
                [f"hardness+{attribution}"], [f"confidence+{attribution}", f"entropy+{attribution}"]))
        claims.append(claim(
            f"{kind}_second_order_beats_gradient",
            f"Synthetic {kind}: for the hardness predictor, 2ndG (gradient-Hessian) difficulty attributions match the "
            "ground-truth ambiguities better than gradient ones (the abstract: second-order attributions are best).",
            metric, True, {r: means[r] for r in ("hardness+second_order", "hardness+gradient")},
            ["hardness+second_order"], ["hardness+gradient"]))
        claims.append(claim(
            f"{kind}_second_order_beats_integrated_gradients",
            f"Synthetic {kind}: for the hardness predictor, 2ndG beats integrated gradients (and gradient) on the "
            f"{IG_IMAGES} hardest images (integrated gradients' documented subset; every row on the same images).",
            metric, True, {r: means[r] for r in SUBSET_ROWS_003}, [SUBSET_ROWS_003[2]], list(SUBSET_ROWS_003[:2])))
    return claims


def reproduce_003(out_dir: Path, *, config: SyntheticConfig, device: torch.device, epochs: int = 15,
                  hardness_epochs: int = 4, images: int = 100, seeds: Sequence[int] = (0, 1, 2),
                  data: AmbiguityConfig = DELIBERATIVE_DATA, sets: Sequence[str] = ("birds", "scenes"),
                  batch_size: int = 32, threads: int | None = THREADS_003, progress: bool = True) -> dict:
    """Deliberative explanations on the synthetic birds (CUB layout) and scenes (ADE20K layout), ``data``
    (``config``, the VOC set's, is not used). Per set and seed of ``seeds``: pretrain a small CNN (width 8, at most
    ``epochs``), train it jointly with its hardness predictor (``hardness_epochs``), then for every difficulty
    score × attribution of ROWS_003 explain the ``images`` hardest test images by that score at layer
    ``features`` and score the insecurities against the shared parts/objects (SUBSET_ROWS_003: the hardness
    rows on the IG_IMAGES hardest). Values are mean ± std over the seeds. ``sets``: which of the two to run;
    ``threads``: torch's intra-op threads on the CPU meanwhile (None: leave them)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    details: dict[str, dict] = {}
    figures = []
    with intra_op_threads(threads if device.type == "cpu" else None):
        for kind in sets:
            root = (write_synthetic_birds if kind == "birds" else write_synthetic_scenes)(
                out_dir / "data" / kind, data, progress=progress)
            load = CUBDataset if kind == "birds" else ADE20KDataset
            train, val, test = (InMemory(load(root, split, image_size=data.image_size))
                                for split in ("train", "val", "test"))
            annotated = load(root, "test", image_size=data.image_size)
            common = (_birds_common if kind == "birds" else _scenes_common)(root, annotated)
            datamodule = SaliencyDataModule(train, val, test, batch_size=batch_size)
            curves: dict[str, list[dict]] = {row: [] for row in (*ROWS_003, *SUBSET_ROWS_003)}

            def evaluate(records: list[dict]) -> dict:
                maps, classes = [r["insecurities"] for r in records], [r["classes"] for r in records]
                if kind == "birds":
                    parts = [annotated.parts(r["index"]) for r in records]
                    return part_curve(maps, classes, [p for p, _ in parts], [v for _, v in parts], common)
                return object_curve(maps, classes, [annotated.objects(r["index"]) for r in records], common)

            accuracy: list[float] = []
            rejection: dict[str, list[float]] = {score: [] for score in SCORES}
            spread: dict[str, list[float]] = {score: [] for score in SCORES}
            for seed in seeds:
                stamp = {"kind": kind, **asdict(data), "seed": seed, "epochs": epochs,
                         "hardness_epochs": hardness_epochs, "hardness_lr": HARDNESS_LR_003, "press": PRESS_003[kind]}
                print(f"  {kind}, seed {seed}")
                classifier, predictor = _prepare_models_003(out_dir / kind / f"seed{seed}", datamodule,
                                                            annotated.class_names, stamp, epochs, hardness_epochs,
                                                            PRESS_003[kind], seed, progress)
                classifier, predictor = classifier.to(device), predictor.to(device)
                batch = collate([test[i] for i in range(len(test))])
                with torch.no_grad():
                    correct = classifier(batch.images.to(device)).argmax(1).cpu() == batch.labels.argmax(1)
                accuracy.append(float(correct.float().mean()))
                for score in SCORES:  # does each score rank the errors first? (the predictor's selection criterion)
                    network, score_fn = difficulty_source(score, classifier, predictor)
                    scores = dataset_scores(network, score_fn, test, device=device).cpu()
                    rejection[score].append(rejection_auc(scores, correct))
                    spread[score].append(float(scores.std()))
                for score in SCORES:
                    common_options = {"score": score, "layer": DELIBERATIVE_LAYER, "predictor": predictor,
                                      "batch_size": batch_size, "device": device, "progress": progress}
                    explained = explain_hardest(classifier, test, attributions=("gradient", "second_order"),
                                                count=images, **common_options)
                    if score == "hardness":
                        explained.update(explain_hardest(classifier, test, attributions=("integrated_gradients",),
                                                         count=IG_IMAGES, **common_options))
                    for attribution, records in explained.items():
                        if attribution != "integrated_gradients":
                            curves[f"{score}+{attribution}"].append(evaluate(records))
                        if score == "hardness":
                            curves[f"{score}+{attribution}@{IG_IMAGES}"].append(evaluate(records[:IG_IMAGES]))
                summary[kind] = {row: {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)),
                                       "runs": values}
                                 for row in curves for values in [[_row_value(kind, c) for c in curves[row]]]}
                # the seeds finished so far, for a look before the end
                report.write_json({"claims": claims_003(summary), "summary": summary, "test_accuracy": accuracy,
                                   "test_rejection_auc": rejection}, out_dir / "partial.json")
            figures.append(_curve_figure(kind, curves, out_dir / f"curves_{kind}.png"))
            details[kind] = {"root": str(root), "test_accuracy": accuracy, "test_rejection_auc": rejection,
                             "test_score_std": spread, "curves": curves,
                             "common_pairs": int(common.any(-1).sum())}
    return {"claims": claims_003(summary), "summary": summary, "details": details, "figures": figures,
            "settings": {"data": asdict(data), "seeds": list(seeds), "images": images, "epochs": epochs,
                         "hardness_epochs": hardness_epochs, "layer": DELIBERATIVE_LAYER, "press": PRESS_003,
                         "hardness_lr": HARDNESS_LR_003, "ig_points": 51, "ig_images": IG_IMAGES, "threads": threads,
                         "hardness_score": "sigmoid output (the official scripts; its logit makes 2ndG = gradient)"},
            "deviations": {"hardness_lr": f"{HARDNESS_LR_003} instead of 1e-5 (see HARDNESS_LR_003)",
                           "classifier_pretraining": "BCE on one-hot labels (the demo's recipe) instead of CE; the "
                                                     "joint stage uses the paper's hardness-weighted CE"},
            "bench": {}}


# ---------------------------------------------------------------- entry point, report

PAPERS: dict[str, tuple[str, Callable[..., dict]]] = {
    "000": ("NN-Explainer: Stalder et al., What You See is What You Classify, NeurIPS 2022", reproduce_000),
    "001": ("Phang et al., Investigating and Simplifying Masking-based Saliency Methods for Model Interpretability",
            reproduce_001),
    "002": ("Pillai & Pirsiavash, Explainable Models with Consistent Interpretations, AAAI 2021", reproduce_002),
    "003": ("Wang & Vasconcelos, Deliberative Explanations: visualizing network insecurities, NeurIPS 2019",
            reproduce_003),
    "004": ("Rio-Torto et al., Understanding the decisions of CNNs: an in-model approach, Pattern Recognition "
            "Letters 2020", reproduce_004),
}
"""Paper id -> (title, reproduction function(out_dir, *, config, device, progress, ...) -> results)."""
TRAINED_FOLDERS = ("data", "classifier", "explainer", "masking", "bench", "bench_val", "bench_pxap", "consistent",
                   "birds", "scenes", PHASE1_004, *VARIANTS_004, *(f"bench_{variant}" for variant in VARIANTS_004))


def reproduce(paper: str, out_dir: str | Path | None = None, *, fresh: bool = False, device: str = "auto",
              config: SyntheticConfig = SyntheticConfig(), progress: bool = True, **options) -> dict:
    """Run reproduction ``paper`` of :data:`PAPERS` into ``out_dir`` (default ``runs/reproduce/<paper>``); write
    results.json and report.html; return the results. ``options`` go to the paper's function (e.g. ``images``,
    ``explainer_epochs``, ``overrides`` for 000; ``masker_epochs``, ``wsol_config`` for 001). Data and trained
    models made with the same settings are reused unless ``fresh``, and so are the scores of the same trained
    networks: an interrupted run resumes its scoring (long at the paper's settings)."""
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; reproductions: {', '.join(PAPERS)}")
    started = time.perf_counter()
    out_dir = Path(out_dir or Path("runs") / "reproduce" / paper)
    if fresh:
        for sub in TRAINED_FOLDERS:
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    title, run = PAPERS[paper]
    torch_device = pick_device(device)
    print(f"reproducing {paper}: {title} -> {out_dir}")
    results = run(out_dir, config=config, device=torch_device, progress=progress, **options)
    results = {"schema": "saliencylab.reproduce/1", "paper": paper, "title": title,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "saliencylab_version": saliencylab.__version__, "torch_version": torch.__version__,
               "device": str(torch_device), "data": asdict(config), **results,
               "elapsed_seconds": time.perf_counter() - started}
    report.write_json(results, out_dir / "results.json")
    write_atomic(out_dir / "report.html", html_page(results))
    print(claims_table(results["claims"]))
    print(f"  wrote results.json and report.html in {results['elapsed_seconds']:.0f} s")
    return results


def _numbers(values: dict | None) -> str:
    if not values:
        return "–"
    return ", ".join(f"{row} {'–' if v is None or not math.isfinite(v) else f'{v:.3f}'}" for row, v in values.items())


def claims_table(claims: Sequence[dict]) -> str:
    """The claims as a Markdown table: statement, metric (↑/↓), ours, reference, holds ✓/✗."""
    lines = ["| claim | metric | ours | reference | holds |", "|---|---|---|---|:---:|"]
    for c in claims:
        lines.append(f"| {c['statement']} | {c['metric']} {'↑' if c['higher_is_better'] else '↓'} | "
                     f"{_numbers(c['ours'])} | {_numbers(c['reference'])} | {'✓' if c['holds'] else '✗'} |")
    return "\n".join(lines) + "\n"


def html_table(table: dict[str, dict[str, float]]) -> str:
    """row -> column -> value as an HTML table (2 decimals)."""
    columns = list(next(iter(table.values())))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><th>{html.escape(row)}</th>" + "".join(f"<td>{values[c]:.2f}</td>" for c in columns) + "</tr>"
                   for row, values in table.items())
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def html_page(results: dict) -> str:
    """report.html: the claims table, deviations from the paper's settings, then each engine run's tables."""
    rows = "".join(
        f"<tr><td>{html.escape(c['statement'])}</td><td>{html.escape(c['metric'])}"
        f"{' ↑' if c['higher_is_better'] else ' ↓'}</td><td>{html.escape(_numbers(c['ours']))}</td>"
        f"<td>{html.escape(_numbers(c['reference']))}</td><td>{'✓' if c['holds'] else '✗'}</td></tr>"
        for c in results["claims"])
    deviations = results.get("deviations")
    warning = (f"<p><strong>Not the paper's settings:</strong> {html.escape(str(deviations))}</p>" if deviations else "")
    tables = {**results.get("tables", {}), **{f"{kind}: std over seeds {results['seeds']}": table
                                               for kind, table in results.get("spread", {}).items()},
              **results.get("seed_tables", {})}
    sections = "".join(f"<h2>{html.escape(name)} (percent)</h2>{html_table(table)}" for name, table in tables.items())
    sections += "".join(f"<h2>Engine: {html.escape(name)}</h2>{html_tables(bench)}"
                        for name, bench in results["bench"].items())
    for kind, rows in results.get("summary", {}).items():
        cells = "".join(f"<tr><td>{html.escape(row)}</td><td>{v['mean']:.3f} ± {v['std']:.3f}</td>"
                        f"<td>{html.escape(', '.join(f'{x:.3f}' for x in v['runs']))}</td></tr>"
                        for row, v in rows.items())
        sections += (f"<h2>{html.escape(kind)}</h2><table><tr><th>score + attribution</th><th>mean ± std</th>"
                     f"<th>runs</th></tr>{cells}</table>")
    sections += "".join(f'<p><img src="{html.escape(name)}" alt="{html.escape(name)}"></p>'
                        for name in results.get("figures", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>saliencylab reproduce {results['paper']}</title>
<style>{report.STYLE}</style></head><body><h1>Reproduction {results['paper']}: {html.escape(results['title'])}</h1>
<p>Synthetic data, {results['elapsed_seconds']:.0f} s on {html.escape(results['device'])}; every ✓/✗ is computed from
the numbers. Created {html.escape(results['created'])} with saliencylab {html.escape(results['saliencylab_version'])}.</p>
{warning}<table><tr><th>claim</th><th>metric</th><th>ours</th><th>reference (paper)</th><th>holds</th></tr>{rows}</table>
{sections}</body></html>"""
