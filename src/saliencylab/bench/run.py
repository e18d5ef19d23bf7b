"""The benchmark engine: rows (methods or reference masks) × registered metrics × one dataset, for any classifier.

Layout of ``out_dir``::

    run.json                   what was run: classifier, dataset, targets, batch size, seed, options, rows, metrics
    scores/<row>/<batch>.json  per-(image, target) scores of one batch of one row (written atomically)
    results.json / .csv        aggregated: nan-mean (or the metric's reduction) ± 95 % bootstrap CI per row and metric
    scores.csv                 every per-(image, target) score, one line per pair
    report.html                the table and the per-class table

Batches are fixed slices of the dataset (``batch_size`` images each, in dataset order), so a batch's
file is the unit of work: a killed run re-run with the same arguments computes only the missing
batches; ``shard=(i, n)`` computes the batches ``b`` with ``b % n == i``, and shards written into
one folder (or merged with :func:`merge_runs`) aggregate to exactly what one process gives.
Stochastic metrics are seeded by ``seed`` plus the index of the batch's first image.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import html
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

import saliencylab
from saliencylab import methods, metrics
from saliencylab.bench.export import batch_targets
from saliencylab.bench.report import STYLE
from saliencylab.files import write_atomic
from saliencylab.metrics import ground_truth, wsol
from saliencylab.metrics.registry import MetricInputs
from saliencylab.models.classifier import Classifier
from saliencylab.targets import PAD
from saliencylab.types import Batch, collate

SCHEMA = "saliencylab.bench/1"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Reference:
    """A reference row: ``masks(batch, targets)`` -> (B,K,H,W) in [0,1], made from the batch itself, and, for
    WSOL's special rows, ``box`` (name of a ``metrics.wsol.baseline``) giving the box the original scores
    instead of the box of the mask's largest component. Scored like a method's masks, except that
    ``official_localization_error`` counts every image as correctly classified (as the original's special rows)."""

    masks: Callable[[Batch, Tensor], Tensor]
    description: str
    box: str | None = None


def _baseline_masks(name: str) -> Callable[[Batch, Tensor], Tensor]:
    def masks(batch: Batch, targets: Tensor) -> Tensor:
        mask, _ = wsol.baseline(name, len(batch), batch.images.shape[-2:], batch.images.device)
        return mask[:, None].expand(-1, targets.shape[1], -1, -1)
    return masks


def _constant(value: float) -> Callable[[Batch, Tensor], Tensor]:
    def fill(batch: Batch, targets: Tensor) -> Tensor:
        return torch.full((len(batch), targets.shape[1], *batch.images.shape[-2:]), value, device=batch.images.device)
    return fill


REFERENCES: dict[str, Reference] = {
    "zeros": Reference(_baseline_masks("min"), "the empty mask (NN-Explainer's reference '0'; WSOL's 'min')", "min"),
    "half": Reference(_constant(0.5), "the constant mask 0.5 (NN-Explainer's reference '0.5')"),
    "ones": Reference(_baseline_masks("max"), "the full mask (NN-Explainer's reference '1'; WSOL's 'max': the whole "
                                              "image as its box)", "max"),
    "ground_truth": Reference(lambda batch, targets: ground_truth.class_masks(batch, targets).float(),
                              "each target class's ground-truth pixels (segmentation, else boxes); WSOL: the "
                              "largest ground-truth box as its box", "ground_truth"),
    "center_box": Reference(_baseline_masks("center"), "WSOL's center baseline: the square 33:191 of a 224 image, "
                                                       "scaled to the image", "center"),
}
"""Reference rows, by name."""


@dataclass(frozen=True)
class Row:
    """One row of the table: a registered method (with hyper-parameters) or a reference; ``images``:
    score only the first N images of the dataset (a slow method's documented subset), None = all."""

    method: str
    settings: dict[str, object] = field(default_factory=dict)
    images: int | None = None

    def identity(self) -> dict:
        return {"method": self.method, "settings": json.loads(json.dumps(self.settings, default=repr)),
                "images": self.images}


def as_rows(rows: Sequence[str] | dict[str, Row | str]) -> dict[str, Row]:
    """Row names -> Row: a list of method/reference names, or a dict of name -> Row (or method name)."""
    if not isinstance(rows, dict):
        rows = {name: name for name in rows}
    out = {name: Row(row) if isinstance(row, str) else row for name, row in rows.items()}
    for name, row in out.items():
        if row.method not in REFERENCES and row.method not in methods.names():
            raise ValueError(f"row {name!r}: unknown method {row.method!r}; registered methods: "
                             f"{', '.join(methods.names())}; references: {', '.join(REFERENCES)}")
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"row name {name!r} must be a plain file name")
        if row.images is not None and row.images < 1:
            raise ValueError(f"row {name!r}: images must be >= 1, got {row.images}")
    return out


def provided(sample) -> set[str]:
    """What a dataset provides, judged on its first sample: the keys of ``metrics.registry.NEEDS``."""
    have = {"model", "single_label"}
    if sample.segmentation is not None:
        have |= {"segmentation", "masks"}
    if len(sample.boxes):
        have |= {"boxes", "masks"}
    return have


def check_metrics(names: Sequence[str] | None, dataset: Dataset) -> list[str]:
    """The metrics to score: ``names`` (ValueError when the dataset lacks what one needs), or, when None,
    every registered metric whose needs the dataset meets (single-label metrics only on one-label data)."""
    sample = dataset[0]
    have = provided(sample)
    if names is None:
        single = int(sample.labels.sum()) == 1
        return [n for n in metrics.names() if metrics.get(n).needs <= have
                and ("single_label" not in metrics.get(n).needs or single)]
    for name in names:
        missing = metrics.get(name).needs - have
        if missing:
            raise ValueError(f"metric {name!r} needs {', '.join(metrics.registry.NEEDS[m] for m in sorted(missing))}, "
                             f"which this dataset does not provide")
    return list(names)


def _batch(dataset: Dataset, index: int, batch_size: int, limit: int) -> Batch:
    start = index * batch_size
    return collate([dataset[i] for i in range(start, min(start + batch_size, limit))])


def _check_identity(path: Path, identity: dict) -> None:
    """Write ``identity`` to ``path``, or check that the one there is the same (ValueError naming what differs)."""
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); move the folder away to start over") from err
        differs = sorted(k for k in identity if existing.get(k) != identity[k])
        if differs:
            raise ValueError(f"{path.parent} holds a benchmark run with other settings ({', '.join(differs)} differ); "
                             "write to a new folder or another row name")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(identity, indent=2))


def weights_stamp(*folders: str | Path) -> dict[str, str]:
    """SHA-256 of every ``*.safetensors`` file in ``folders``: a run description that changes when a network is retrained."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(Path(folder).glob("*.safetensors"))}


def _clear_if_stale(out_dir: Path, description: dict) -> None:
    """Remove ``out_dir`` when its run.json records another classifier or dataset than ``description`` (the
    scores of networks since retrained); a run of the same description is kept, to resume."""
    run_file = Path(out_dir) / "run.json"
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())
        if any(recorded.get(key) != json.loads(json.dumps(description.get(key))) for key in ("classifier", "dataset")):
            shutil.rmtree(out_dir)


def _class_names(classifier: Classifier, dataset: Dataset) -> list[str]:
    """The classifier's class names, else the dataset's, else class_0, class_1, ..."""
    names = classifier.class_names or getattr(dataset, "class_names", None)
    if names:
        return list(names)
    return [f"class_{i}" for i in range(classifier.num_classes or len(dataset[0].labels))]


def _pad_rows(rows: list[list[float]], width: int) -> list[list[float]]:
    return [r + [math.nan] * (width - len(r)) for r in rows]


def run_benchmark(classifier: Classifier, dataset: Dataset, rows: Sequence[str] | dict[str, Row | str],
                  out_dir: str | Path, *, metric_names: Sequence[str] | None = None, description: dict | None = None,
                  targets: str = "labels", batch_size: int = 16, shard: tuple[int, int] = (0, 1), seed: int = 0,
                  options: dict[str, object] | None = None, device: torch.device | str = "cpu",
                  progress: bool = True, bootstrap: int = 1000, replace_stale: bool = False) -> dict:
    """Score every row on ``dataset`` with every metric; write ``out_dir`` (see the module docstring); return
    the aggregated results (:func:`aggregate`).

    classifier: the explained model; dataset: Samples of one size (resized by the loader); rows: method or
    reference names, or name -> :class:`Row`; metric_names: registered metrics (None: every one the
    dataset supports); description: what the classifier and dataset are (recorded in run.json and
    compared on resume; ``weights_stamp`` makes it change when a network is retrained); targets: "labels"
    or "top1"/"top3"/"top5"; options: metric protocol switches (see :class:`MetricInputs`).
    Resumable and shardable as the module docstring says. A folder holding a run of another classifier or
    dataset is refused, or with ``replace_stale`` removed and computed anew (callers that retrain networks).
    """
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the dataset has no images")
    rows = as_rows(rows)
    metric_names = check_metrics(metric_names, dataset)
    out_dir = Path(out_dir)
    options = dict(options or {})
    if replace_stale:
        _clear_if_stale(out_dir, description or {})
    _check_identity(out_dir / "run.json", {
        "schema": SCHEMA, "classifier": (description or {}).get("classifier"),
        "dataset": (description or {}).get("dataset"), "images": len(dataset), "targets": targets,
        "batch_size": batch_size, "seed": seed, "options": options, "class_names": _class_names(classifier, dataset)})
    classifier = classifier.to(device).eval()
    work: dict[int, list[str]] = {}
    for name, row in rows.items():
        folder = out_dir / "scores" / name
        _check_identity(folder / "row.json", {**row.identity(), "metrics": metric_names})
        for stale in folder.glob("*.tmp"):
            stale.unlink()
        limit = min(len(dataset), row.images or len(dataset))
        for b in range(index, math.ceil(limit / batch_size), count):
            if not (folder / f"{b:06d}.json").is_file():
                work.setdefault(b, []).append(name)
    built: dict[str, methods.Method] = {}
    bar = tqdm(total=sum(len(v) for v in work.values()), desc="bench run", unit="batch", disable=not progress)
    for b in sorted(work):
        full = None
        for name in work[b]:
            row = rows[name]
            limit = min(len(dataset), row.images or len(dataset))
            if full is None or len(full) != min(batch_size, limit - b * batch_size):
                full = _batch(dataset, b, batch_size, limit).to(device)
            bar.set_postfix_str(name)
            _score_batch(out_dir / "scores" / name / f"{b:06d}.json", row, built, name, classifier, full, b * batch_size,
                         metric_names, targets, seed, options)
            bar.update()
    bar.close()
    return aggregate(out_dir, bootstrap=bootstrap, rows=list(rows))


def _score_batch(path: Path, row: Row, built: dict, name: str, classifier: Classifier, batch: Batch, first: int,
                 metric_names: list[str], targets_rule: str, seed: int, options: dict) -> None:
    """Explain one batch with one row, score it, write its file atomically."""
    targets = batch_targets(targets_rule, batch, classifier).to(batch.images.device)
    start = time.perf_counter()
    reference = REFERENCES.get(row.method)
    if reference is not None:
        maps, masks = reference.masks(batch, targets), True
        maps = maps.masked_fill((targets == PAD)[..., None, None], float("nan"))
    else:
        if name not in built:
            built[name] = methods.build(row.method, classifier, **row.settings)
        maps = built[name].attribute(batch.images, targets)
        masks = built[name].output_range == "unit"
    if maps.is_cuda:
        torch.cuda.synchronize(maps.device)
    seconds = time.perf_counter() - start
    scores = score_maps(maps, targets, batch, classifier, metric_names, maps_are_masks=masks, seed=seed + first,
                        options={**options, **reference_options(reference)})
    write_atomic(path, json.dumps({"images": batch.image_ids, "first": first, "targets": targets.cpu().tolist(),
                                   "seconds": seconds, "scores": {m: v.tolist() for m, v in scores.items()}}))


def reference_options(reference: Reference | None) -> dict[str, object]:
    """The metric options of a reference row (see :class:`MetricInputs`): ``reference``, ``reference_box``."""
    return {} if reference is None else {"reference": True, "reference_box": reference.box}


def score_maps(maps: Tensor, targets: Tensor, batch: Batch, classifier: Classifier | None, metric_names: Sequence[str],
               *, maps_are_masks: bool = False, seed: int = 0, options: dict[str, object] | None = None
               ) -> dict[str, Tensor]:
    """Every metric's scores of maps (B,K,H,W) for targets (B,K) on ``batch``: name -> (B,K|1|T) float64 on the CPU.

    What the engine runs on each batch; call it directly to score maps from elsewhere (see :class:`MetricInputs`).
    """
    inputs = MetricInputs(maps, targets, batch, classifier, maps_are_masks=maps_are_masks, seed=seed,
                          options=dict(options or {}))
    return {m: metrics.get(m).fn(inputs).detach().double().cpu() for m in metric_names}


def _bootstrap(reduce: Callable[[Tensor, Tensor], float], scores: Tensor, targets: Tensor, resamples: int) -> list[float]:
    """The 95 % percentile bootstrap interval of ``reduce`` over images resampled with replacement (seeded)."""
    if resamples < 1 or len(scores) < 2:
        return [math.nan, math.nan]
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(scores), (resamples, len(scores)), generator=generator)
    if reduce is metrics.registry.reduce_mean:
        sample = scores[picks].flatten(1).double()
        values = sample.nansum(1) / (~sample.isnan()).sum(1)
    else:
        values = torch.tensor([reduce(scores[p], targets[p]) for p in picks], dtype=torch.float64)
    values = values[~values.isnan()]
    if not len(values):
        return [math.nan, math.nan]
    tail = (1 - CONFIDENCE) / 2
    return torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()


def _load_row(folder: Path) -> list[dict]:
    parts = []
    for path in sorted(folder.glob("[0-9]*.json")):
        try:
            parts.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run to recompute that batch") from err
    return parts


def aggregate(out_dir: str | Path, bootstrap: int = 1000, rows: Sequence[str] | None = None) -> dict:
    """Read the batch files under ``out_dir`` and write results.json, results.csv, scores.csv, report.html.

    ``rows``: these rows in this order (default: every row folder, sorted by name).
    Per row and metric: ``value`` (the metric's reduction of every score, e.g. the nan-mean), ``ci``
    (95 % bootstrap interval over images), ``defined`` (scores that are not NaN), and for per-target
    metrics ``per_class`` means; per row: images scored, batches missing (other shards still running),
    seconds and images/s of the explanation.
    """
    out_dir = Path(out_dir)
    run = json.loads((out_dir / "run.json").read_text())
    class_names = run["class_names"]
    results = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "saliencylab_version": saliencylab.__version__, "run": run, "metrics": {}, "rows": {}}
    per_pair = []
    folders = ([out_dir / "scores" / name for name in rows] if rows is not None
               else sorted(p for p in (out_dir / "scores").iterdir() if p.is_dir()))
    for folder in folders:
        row = json.loads((folder / "row.json").read_text())
        parts = _load_row(folder)
        limit = min(run["images"], row["images"] or run["images"])
        expected = math.ceil(limit / run["batch_size"])
        entry = {"method": row["method"], "settings": row["settings"], "kind": "reference" if row["method"] in REFERENCES
                 else "method", "images": sum(len(p["images"]) for p in parts), "batches_missing": expected - len(parts),
                 "seconds": sum(p["seconds"] for p in parts), "scores": {}}
        entry["images_per_second"] = entry["images"] / entry["seconds"] if entry["seconds"] > 0 else None
        results["rows"][folder.name] = entry
        if not parts:
            continue
        width = max(len(t) for p in parts for t in p["targets"])
        targets = torch.tensor(_pad_rows([t for p in parts for t in p["targets"]], width)).nan_to_num(PAD).long()
        ids = [i for p in parts for i in p["images"]]
        for name in row["metrics"]:
            metric = metrics.get(name)
            results["metrics"][name] = {"higher_is_better": metric.higher_is_better, "per": metric.per,
                                        "aggregation": metric.aggregation, "description": metric.description}
            raw = [r for p in parts for r in p["scores"][name]]
            scores = torch.tensor(_pad_rows(raw, max(len(r) for r in raw)), dtype=torch.float64)
            score = {"value": metric.reduce(scores, targets), "ci": _bootstrap(metric.reduce, scores, targets, bootstrap),
                     "defined": int((~scores.isnan()).sum())}
            if metric.per == "target":
                per_class = metrics.class_mean(scores, targets, len(class_names))[0]
                score["per_class"] = {class_names[c]: per_class[c].item()
                                      for c in sorted(set(targets[targets != PAD].tolist()))}
                per_pair += [(folder.name, ids[i], int(targets[i, k]), name, float(scores[i, k]))
                             for i in range(len(ids)) for k in range(width) if targets[i, k] != PAD]
            elif metric.per == "image":
                per_pair += [(folder.name, ids[i], -1, name, float(scores[i, 0])) for i in range(len(ids))]
            entry["scores"][name] = score
    _write_outputs(out_dir, results, per_pair)
    return results


def merge_runs(out_dir: str | Path, sources: Sequence[str | Path], bootstrap: int = 1000) -> dict:
    """Copy the batch files of shard folders ``sources`` (same run.json, same rows) into ``out_dir``; aggregate."""
    out_dir = Path(out_dir)
    for source in map(Path, sources):
        if not (source / "run.json").is_file():
            raise FileNotFoundError(f"{source} holds no benchmark run (run.json missing)")
        _check_identity(out_dir / "run.json", json.loads((source / "run.json").read_text()))
        for folder in sorted(p for p in (source / "scores").iterdir() if p.is_dir()):
            target = out_dir / "scores" / folder.name
            _check_identity(target / "row.json", json.loads((folder / "row.json").read_text()))
            for part in folder.glob("[0-9]*.json"):
                if not (target / part.name).is_file():
                    write_atomic(target / part.name, part.read_text())
    return aggregate(out_dir, bootstrap=bootstrap)


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _write_outputs(out_dir: Path, results: dict, per_pair: list[tuple]) -> None:
    clean = json.loads(json.dumps(results, default=float).replace("NaN", "null").replace("Infinity", "null"))
    write_atomic(out_dir / "results.json", json.dumps(clean, indent=2))
    for name, header, lines in [
        ("results.csv", ["row", "metric", "value", "ci_low", "ci_high", "higher_is_better", "defined", "images"],
         [[row, metric, _number(s["value"]), _number(s["ci"][0]), _number(s["ci"][1]),
           results["metrics"][metric]["higher_is_better"], s["defined"], entry["images"]]
          for row, entry in results["rows"].items() for metric, s in entry["scores"].items()]),
        ("scores.csv", ["row", "image", "target", "metric", "score"],
         [[r, i, t, m, _number(v)] for r, i, t, m, v in per_pair]),
    ]:
        tmp = out_dir / f"{name}.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(lines)
        os.replace(tmp, out_dir / name)
    write_atomic(out_dir / "report.html", html_report(results))


def _cell(score: dict | None) -> str:
    if score is None or score["value"] is None or not math.isfinite(score["value"]):
        return "–"
    low, high = score["ci"]
    if low is None or not math.isfinite(low):
        return f"{score['value']:.3f}"
    return f"{score['value']:.3f} [{low:.3f}, {high:.3f}]"


def _arrow(metric: dict) -> str:
    return "" if metric["higher_is_better"] is None else " ↑" if metric["higher_is_better"] else " ↓"


def table(results: dict) -> str:
    """A Markdown table: one row per benchmark row, one column per metric (value [95 % CI]), ↑/↓ directions."""
    names = list(results["metrics"])
    lines = ["| row | " + " | ".join(f"{m}{_arrow(results['metrics'][m])}" for m in names) + " | images | images/s |",
             "|---|" + "---:|" * (len(names) + 2)]
    for row, entry in results["rows"].items():
        speed = entry["images_per_second"]
        missing = f" ({entry['batches_missing']} batches missing)" if entry["batches_missing"] else ""
        lines.append(f"| {row} | " + " | ".join(_cell(entry["scores"].get(m)) for m in names)
                     + f" | {entry['images']}{missing} | {'–' if speed is None else f'{speed:.1f}'} |")
    return "\n".join(lines) + "\n"


def html_report(results: dict) -> str:
    """A self-contained page: the table with confidence intervals, then per-class means of per-target metrics."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>saliencylab benchmark</title>
<style>{STYLE}</style></head><body><h1>saliencylab benchmark</h1>
{html_tables(results)}</body></html>"""


def html_tables(results: dict) -> str:
    """The body of :func:`html_report`: what was run, the table, the per-class tables (HTML fragment)."""
    run = results["run"]
    names = list(results["metrics"])
    head = "".join(f'<th title="{html.escape(results["metrics"][m]["description"])}">{html.escape(m)}'
                   f'{_arrow(results["metrics"][m])}</th>' for m in names)
    body = "".join(
        f'<tr class="{entry["kind"]}"><th>{html.escape(row)}</th>'
        + "".join(f"<td>{html.escape(_cell(entry['scores'].get(m)))}</td>" for m in names)
        + f"<td>{entry['images']}</td></tr>" for row, entry in results["rows"].items())
    per_class = []
    for m in (m for m in names if results["metrics"][m]["per"] == "target"):
        classes = run["class_names"]
        cells = "".join(
            f"<tr><th>{html.escape(row)}</th>" + "".join(
                f"<td>{_number(entry['scores'].get(m, {}).get('per_class', {}).get(c))}</td>" for c in classes) + "</tr>"
            for row, entry in results["rows"].items())
        per_class.append(f"<h3>{html.escape(m)} per class</h3><table><tr><th>row</th>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in classes) + f"</tr>{cells}</table>")
    return f"""<p>Dataset <code>{html.escape(str(run['dataset']))}</code>, {run['images']} images; classifier
<code>{html.escape(str(run['classifier']))}</code>; targets: {html.escape(run['targets'])}. Each cell: the metric's
value over the images [95 % bootstrap interval]; ↑ higher is better, ↓ lower is better. Created
{html.escape(results['created'])} with saliencylab {html.escape(results['saliencylab_version'])}.</p>
<table><tr><th>row</th>{head}<th>images</th></tr>{body}</table>
{''.join(per_class)}"""
