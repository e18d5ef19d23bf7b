"""``saliencylab reproduce 000``: NN-Explainer (Stalder et al., "What You See is What You Classify", NeurIPS
2022): the trained explainer against Grad-CAM, RISE and extremal perturbations at the paper's settings."""
from __future__ import annotations

from pathlib import Path

import torch

from saliencylab.bench.claims import claim, metric_values
from saliencylab.bench.demo import prepare_classifier, prepare_data, prepare_explainers
from saliencylab.bench.run import Row, run_benchmark, weights_stamp
from saliencylab.data.synthetic import SyntheticConfig


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
                  metric, True, metric_values(results, metric, ("explainer", *BASELINES_000)), ["explainer"], BASELINES_000)
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
