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
"""
from __future__ import annotations

import datetime
import html
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import saliencylab
from saliencylab.bench import report
from saliencylab.bench.demo import pick_device, prepare_classifier, prepare_data, prepare_explainers
from saliencylab.bench.masking import (data_randomization, masker_methods, prepare_maskers, prepare_single_label,
                                       wsol_data_config)
from saliencylab.bench.run import Row, html_tables, run_benchmark, weights_stamp
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.types import collate
from saliencylab.files import write_atomic


def claim(claim_id: str, statement: str, metric: str, higher_is_better: bool, ours: dict[str, float],
          better: Sequence[str], worse: Sequence[str], reference: dict[str, float] | None = None) -> dict:
    """A claim record: ``holds`` is True when every row of ``better`` scores strictly better on ``metric`` (in its
    direction) than every row of ``worse``; a missing or NaN score makes it False. ``ours``: row -> our number."""
    def value(row: str) -> float:
        number = ours.get(row)
        return math.nan if number is None else float(number)

    pairs = [(value(b), value(w)) for b in better for w in worse]
    holds = all(b > w if higher_is_better else b < w for b, w in pairs)  # NaN compares False
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
    bench = run_benchmark(classifier, datamodule.test, rows, out_dir / "bench", metric_names=METRICS_000,
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


# ---------------------------------------------------------------- entry point, report

PAPERS: dict[str, tuple[str, Callable[..., dict]]] = {
    "000": ("NN-Explainer: Stalder et al., What You See is What You Classify, NeurIPS 2022", reproduce_000),
    "001": ("Phang et al., Investigating and Simplifying Masking-based Saliency Methods for Model Interpretability",
            reproduce_001),
}
"""Paper id -> (title, reproduction function(out_dir, *, config, device, progress, ...) -> results)."""
TRAINED_FOLDERS = ("data", "classifier", "explainer", "masking", "bench", "bench_val", "bench_pxap")


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


def html_page(results: dict) -> str:
    """report.html: the claims table, deviations from the paper's settings, then each engine run's tables."""
    rows = "".join(
        f"<tr><td>{html.escape(c['statement'])}</td><td>{html.escape(c['metric'])}"
        f"{' ↑' if c['higher_is_better'] else ' ↓'}</td><td>{html.escape(_numbers(c['ours']))}</td>"
        f"<td>{html.escape(_numbers(c['reference']))}</td><td>{'✓' if c['holds'] else '✗'}</td></tr>"
        for c in results["claims"])
    deviations = results.get("deviations")
    warning = (f"<p><strong>Not the paper's settings:</strong> {html.escape(str(deviations))}</p>" if deviations else "")
    sections = "".join(f"<h2>Engine: {html.escape(name)}</h2>{html_tables(bench)}"
                       for name, bench in results["bench"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>saliencylab reproduce {results['paper']}</title>
<style>{report.STYLE}</style></head><body><h1>Reproduction {results['paper']}: {html.escape(results['title'])}</h1>
<p>Synthetic data, {results['elapsed_seconds']:.0f} s on {html.escape(results['device'])}; every ✓/✗ is computed from
the numbers. Created {html.escape(results['created'])} with saliencylab {html.escape(results['saliencylab_version'])}.</p>
{warning}<table><tr><th>claim</th><th>metric</th><th>ours</th><th>reference (paper)</th><th>holds</th></tr>{rows}</table>
{sections}</body></html>"""
