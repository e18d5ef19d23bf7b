"""``saliencylab reproduce 001``: masking-based saliency (Phang et al., "Investigating and Simplifying
Masking-based Saliency Methods for Model Interpretability", 2020): FIX and CA maskers, WSOL metrics, data
randomisation."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from saliencylab.bench.claims import claim, metric_values
from saliencylab.bench.demo import prepare_classifier, prepare_data
from saliencylab.bench.masking import (data_randomization, masker_methods, prepare_maskers, prepare_single_label,
                                       wsol_data_config)
from saliencylab.bench.run import Row, run_benchmark, weights_stamp
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.types import collate


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
    le = metric_values(val, "localization_error", ROWS_001)
    om = metric_values(val, "official_localization_error", ROWS_001)
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
