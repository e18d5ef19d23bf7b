"""Write benchmark results: ``results.json``, ``results.csv``, figures and a self-contained ``report.html``.

``results.json`` schema (``"schema": "saliencylab.results/1"``)::

    {
      "schema": "saliencylab.results/1", "created": ISO time, "saliencylab_version", "torch_version",
      "device", "elapsed_seconds",
      "dataset":    {"name", "root", "split", "images", "image_size", "class_names": [...]},
      "classifier": {"arch", "weights", "epochs", "test": {"accuracy", "precision", "recall", "micro_f1"}},
      "metrics":    {metric: {"higher_is_better": bool, "aggregation": "class_mean" | "mean", "description"}},
      "methods":    {name: {"kind": "method" | "reference", "hyperparameters": {...},
                            "scores": {metric: float | null},     # null: undefined for this row
                            "images_per_second": float | null, "seconds_per_image": float | null,
                            "figure": "figures/<name>.png" | null, "images": int}},
      "class_specific": {name: {"classes", "images", "matrix": [[none, class 0, ...] per row class] (%),
                                "diagonal_margin", "figure"}},
      "masking": {                                                  # Phang et al. 2020 (bench.masking)
        "dataset": {"root", "train", "val", "test", "image_size"},
        "maskers": {name: {"folder", "preset", "labels", "mode", "epochs", "seed", "train_seconds"}},
        "wsol": {row: {"LE", "OM", ..., "PxAP"?, "MaxBoxAcc"?, ...}},  # bench.wsol.COLUMNS (+ BOX_COLUMNS), PxAP in %
        "baselines": [names of the wsol rows that are special baselines],
        "data_randomization": {"images", "reference",
                               "trained_vs_trained" | "trained_vs_random_labels": {"model", measure: mean}},
        "sanity": {method: {"mode", "layers", "mean": {measure: [per step]}, "figure"}},
        "figure", "seconds"}
    }
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from pathlib import Path

from PIL import Image

from saliencylab.files import write_atomic


def _json_number(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _clean(value: object) -> object:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _json_number(value)


def write_json(results: dict, path: Path) -> None:
    write_atomic(path, json.dumps(_clean(results), indent=2))


def write_csv(results: dict, path: Path) -> None:
    """One row per method: its kind, every metric, images/s."""
    metric_names = list(results["metrics"])
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "kind", *metric_names, "images_per_second", "images"])
        for name, row in results["methods"].items():
            values = [_json_number(row["scores"].get(m, float("nan"))) for m in metric_names]
            writer.writerow([name, row["kind"], *("" if v is None else f"{v:.6g}" for v in values),
                             "" if row["images_per_second"] is None else f"{row['images_per_second']:.6g}",
                             row["images"]])
    os.replace(tmp, path)


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _best(results: dict, metric: str) -> float | None:
    """The best value of ``metric`` over the rows of kind "method" (references excluded)."""
    values = [row["scores"].get(metric) for row in results["methods"].values() if row["kind"] == "method"]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return max(values) if results["metrics"][metric]["higher_is_better"] else min(values)


def _format(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _table(results: dict) -> str:
    metric_names = list(results["metrics"])
    head = "".join(
        f'<th title="{html.escape(results["metrics"][m]["description"])}">{html.escape(m)}'
        f'{" ↑" if results["metrics"][m]["higher_is_better"] else " ↓"}</th>' for m in metric_names)
    rows = []
    for name, row in results["methods"].items():
        cells = []
        for metric in metric_names:
            value = row["scores"].get(metric)
            best = row["kind"] == "method" and value is not None and value == _best(results, metric)
            cells.append(f'<td class="{"best" if best else ""}">{_format(value)}</td>')
        speed = row["images_per_second"]
        rows.append(f'<tr class="{row["kind"]}"><th>{html.escape(name)}</th>{"".join(cells)}'
                    f'<td>{"–" if speed is None else f"{speed:.1f}"}</td><td>{row["images"]}</td></tr>')
    return f"<table><tr><th>method</th>{head}<th>images/s</th><th>images</th></tr>{''.join(rows)}</table>"


PAPER_ROWS = (("Mean F1", "mean_f1"), ("Cont F1", "soft_f1"), ("Accuracy", "soft_accuracy"),
              ("Discr. IoU", "discrete_iou"), ("Cont. IoU", "soft_iou"), ("AUC", "pixel_auc"),
              ("Saliency", "saliency_metric"), ("Overlap", "overlap"), ("Background cov.", "background_coverage"),
              ("Object cov.", "object_coverage"))
PAPER_COLUMNS = (("0", "0"), ("0.5", "0.5"), ("1", "1"), ("Ideal", "ideal"), ("Grad-CAM", "gradcam"),
                 ("RISE", "rise"), ("EP", "extremal_perturbation"), ("iGOS++", "igos_pp"),
                 ("RT-Saliency", "rt_saliency"), ("Explainer", "explainer"))
"""The NN-Explainer segmentation table (Stalder et al. 2022): its row and column order, our names."""


def _paper_table(results: dict) -> str:
    columns = [(title, key) for title, key in PAPER_COLUMNS if key in results["methods"]]
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns)
    rows = []
    for title, metric in PAPER_ROWS:
        best = _best(results, metric)
        cells = "".join(
            f'<td class="{"best" if results["methods"][key]["kind"] == "method" and value is not None and value == best else ""}">'
            f"{_format(value)}</td>"
            for _, key in columns for value in [results["methods"][key]["scores"].get(metric)])
        rows.append(f"<tr><th>{html.escape(title)}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _class_specific(results: dict, out_dir: Path) -> str:
    sections = results.get("class_specific", {})
    if not sections:
        return ""
    parts = ["<h2>Class-specific masks</h2><p>Row t: test images holding class t. Column k: the softmax "
             "probability (%) of t when only class k's binarised mask is kept (mean over τ = 0.1…0.9); "
             "<i>none</i>: the unmasked image. A class-specific method has a high diagonal and a low "
             "off-diagonal (Stalder et al. 2022).</p>"]
    for name, entry in sections.items():
        parts.append(f"<h3>{html.escape(name)}: diagonal − off-diagonal = {entry['diagonal_margin']:.1f} points "
                     f"({entry['images']} images)</h3>"
                     + _image_tag(out_dir / entry["figure"], f"class-specific {name}"))
    return "".join(parts)


WSOL_COLUMNS = ("LE", "OM", "F1", "SM", "sm_acc", "top1", "avg_mask", "PxAP", "MaxBoxAcc", "MaxBoxAccV2")
"""The WSOL columns the report shows (directions: bench.wsol.LOWER_IS_BETTER; MaxBoxAcc only when computed)."""

def _wsol_table(rows: dict[str, dict], baselines: list[str]) -> str:
    """``baselines`` in grey; bold: the best method (not baseline) per column, where a direction is defined."""
    from saliencylab.bench.wsol import BOX_COLUMNS, LOWER_IS_BETTER  # imported here: bench.wsol -> run -> report

    columns = [c for c in WSOL_COLUMNS if c not in BOX_COLUMNS or any(c in row for row in rows.values())]
    methods_only = {name: row for name, row in rows.items() if name not in baselines}
    best = {}
    for column in ("LE", "OM", "F1", "SM", "PxAP", *BOX_COLUMNS):
        values = [v for row in methods_only.values() for v in [row.get(column)] if v is not None and math.isfinite(v)]
        if values:
            best[column] = min(values) if column in LOWER_IS_BETTER else max(values)
    head = "".join(f"<th>{c}{' ↓' if c in LOWER_IS_BETTER else ' ↑' if c in best else ''}</th>" for c in columns)
    lines = []
    for name, row in rows.items():
        cells = "".join(
            f'<td class="{"best" if name in methods_only and value is not None and value == best.get(c) else ""}">'
            f"{_format(value)}</td>" for c in columns for value in [row.get(c)])
        lines.append(f'<tr class="{"reference" if name not in methods_only else "method"}">'
                     f"<th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>method</th>{head}</tr>{''.join(lines)}</table>"


def _masking(results: dict, out_dir: Path) -> str:
    section = results.get("masking")
    if not section:
        return ""
    data, drt = section["dataset"], section["data_randomization"]
    trainings = "".join(
        f"<li><code>{html.escape(name)}</code>: {m['mode'].upper()}, preset <code>{html.escape(m['preset'])}</code>, "
        f"labels <code>{html.escape(m['labels'])}</code>, {m['epochs']} epochs, seed {m['seed']}"
        + ("" if m.get("train_seconds") is None else f", {m['train_seconds']:.0f} s") + "</li>"
        for name, m in section["maskers"].items())
    measures = [k for k in drt["trained_vs_trained"] if k != "model"]
    drt_rows = "".join(
        f"<tr><th>FIX vs {html.escape(drt[key]['model'])}</th>"
        + "".join(f"<td>{_format(drt[key][m])}</td>" for m in measures) + "</tr>"
        for key in ("trained_vs_trained", "trained_vs_random_labels"))
    le = {name: section["wsol"][name]["LE"] for name in ("fix", "ca", "gradcam", "center") if name in section["wsol"]}
    below = all(le[m] < le[ref] for m in ("fix", "ca") for ref in ("gradcam", "center"))
    le_line = (", ".join(f"{html.escape(name)} {value:.3f}" for name, value in le.items())
               + (": both maskers localise better than Grad-CAM and the center baseline." if below
                  else ": the maskers do <b>not</b> beat both Grad-CAM and the center baseline here."))
    lower = [m for m in measures if drt["trained_vs_random_labels"][m] < drt["trained_vs_trained"][m]]
    drt_line = (f"The random-label masker is less similar on {len(lower)} of {len(measures)} measures"
                + (f" ({', '.join(lower)})." if lower else "."))
    curves = "".join(f"<h4>{html.escape(name)}</h4>" + _image_tag(out_dir / entry["figure"], f"sanity {name}")
                     for name, entry in section["sanity"].items())
    return f"""<h2>Masking-based saliency (Phang et al. 2020)</h2>
<p>CASME maskers for the same classifier, trained on the single-label synthetic set in ImageNet format
({data['train']} train images; WSOL scores on {data['val']} val images, PxAP on the {data['test']} images of its
OpenImages-layout test split, {data['image_size']} px), in {section['seconds']:.0f} s:</p><ul>{trainings}</ul>
<p>WSOL metrics (Phang et al. 2020): LE localisation error (box IoU &lt; 0.5), OM the same or misclassified,
F1 of the soft mask against the boxes, SM the saliency metric of the box crop, sm_acc / top1 in %,
avg_mask the mean mask value, PxAP pixel average precision in %. Grey: special baselines.</p>
{_wsol_table(section['wsol'], section['baselines'])}
<p>LE: {le_line}</p>
<p>Green: ground-truth boxes; white: the box from each mask (binarised at its mean, largest component).</p>
{_image_tag(out_dir / section['figure'], 'masker masks')}
<h3>Data randomisation</h3>
<p>Mean similarity over {drt['images']} val images of the FIX masker's masks to those of a FIX masker
trained with another seed, and of one trained on random labels (<code>train_shuffle.json</code>).
A masker that depends on what the model learned scores clearly lower against the random-label one.</p>
<table><tr><th></th>{''.join(f'<th>{html.escape(m)}</th>' for m in measures)}</tr>{drt_rows}</table>
<p>{drt_line}</p>
<h3>Model-parameter randomisation (cascading)</h3>
<p>The classifier's layers are re-initialised from the output side; similarity of each method's maps to
those of the trained classifier. Maps that stay similar do not depend on the model.</p>
{curves}"""


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
tr.reference{color:#777;font-style:italic}
td.best{font-weight:bold;background:#e6f4e6}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
code{background:#f3f3f3;padding:1px 3px}
"""


def write_html(results: dict, out_dir: Path) -> Path:
    """Write ``report.html`` next to the figures, with every PNG embedded (one file to share)."""
    dataset, classifier = results["dataset"], results["classifier"]
    test = classifier["test"]
    figures = []
    if (out_dir / "figures" / "comparison.png").is_file():
        figures.append("<h2>All methods side by side</h2>"
                       "<p>Each column: the method's per-class maps, min-max normalised and merged by max.</p>"
                       + _image_tag(out_dir / "figures" / "comparison.png", "comparison"))
    for name, row in results["methods"].items():
        if row.get("figure"):
            figures.append(f"<h3>{html.escape(name)}</h3>" + _image_tag(out_dir / row["figure"], name))
    settings = "".join(
        f"<li><code>{html.escape(name)}</code>: {html.escape(', '.join(f'{k}={v!r}' for k, v in row['hyperparameters'].items()))}</li>"
        for name, row in results["methods"].items() if row["kind"] == "method")
    metric_notes = "".join(
        f"<li><code>{html.escape(m)}</code> ({'higher' if d['higher_is_better'] else 'lower'} is better; "
        f"{'mean of per-class means' if d['aggregation'] == 'class_mean' else 'mean over images'}): "
        f"{html.escape(d['description'])}</li>" for m, d in results["metrics"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>saliencylab report</title>
<style>{STYLE}</style></head><body>
<h1>saliencylab report</h1>
<p>Dataset <b>{html.escape(dataset['name'])}</b>, split <code>{html.escape(dataset['split'])}</code>:
{dataset['images']} images of {dataset['image_size']} px, {len(dataset['class_names'])} classes
({html.escape(', '.join(dataset['class_names']))}).</p>
<p>Classifier <b>{html.escape(classifier['arch'])}</b> on the test split: micro-F1 {test['micro_f1']:.3f},
precision {test['precision']:.3f}, recall {test['recall']:.3f}, accuracy {test['accuracy']:.3f}.</p>
<p>Created {html.escape(results['created'])} on {html.escape(results['device'])} in
{results['elapsed_seconds']:.0f} s with saliencylab {html.escape(results['saliencylab_version'])},
torch {html.escape(results['torch_version'])}.</p>
<h2>Scores</h2>
<p>Bold: best method per metric. <i>images</i>: how many test images a row was scored on (the
slowest optimisation methods see only the first few on a CPU demo). Grey rows are the reference masks of the NN-Explainer table
(constant 0, 0.5, 1 and the ground truth itself). Hover a metric name for its definition.</p>
{_table(results)}
<h2>The NN-Explainer table</h2>
<p>Segmentation metrics in the row and column order of the paper's table (methods not run are left out).</p>
{_paper_table(results)}
<ul>{metric_notes}</ul>
<details><summary>Hyper-parameters of each method in this run</summary><ul>{settings}</ul></details>
{_class_specific(results, out_dir)}
{_masking(results, out_dir)}
{''.join(figures)}
</body></html>"""
    path = out_dir / "report.html"
    write_atomic(path, page)
    return path


def save_png(image: Image.Image, path: Path) -> str:
    """Save a figure atomically; returns its path relative to the run folder (``figures/<name>.png``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return f"{path.parent.name}/{path.name}"
