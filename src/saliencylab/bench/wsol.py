"""WSOL benchmark of masking-based saliency (Phang et al., "Investigating and Simplifying Masking-based
Saliency Methods", §4): one mask per single-label image, scored by the benchmark engine with the registry's
WSOL metrics beside the paper's special rows, and PxAP (Choe et al. 2020) on a split with masks.

The table's columns are registered metrics (:data:`COLUMNS`): LE, OM, F1, F1a, SM as the paper names
them, sm_acc and top1 in percent as the original prints them, and the mask statistics. A method's map of
the label class is min-max normalised to [0,1] unless the method declares ``output_range = "unit"`` (the
masker's sigmoid output is scored as it is, as the original does).

Box convention. ``Sample.boxes`` hold inclusive pixel corners; the metrics take half-open boxes and
convert (x2 + 1, y2 + 1): right for the synthetic sets, whose boxes are the rendered objects' inclusive
corners. ImageNetDataset keeps the original's mapped integers, which the original code used as half-open
ends; ``paper_quirks=True`` reads them so, makes predicted boxes one pixel short and leaves ground-truth
areas unclipped, which reproduces its numbers on real ImageNet boxes.

The special rows are the engine's reference masks: ``center`` (the square 33:191 of a 224 image),
``max`` (the full mask), ``min`` (the empty mask) and ``ground_truth`` (the union of the label's boxes,
whose box is then predicted like any mask's: the original scores each ground-truth box as its own
prediction, which differs only when an image's boxes overlap or touch). As in the original, their OM
counts every image as correctly classified, so OM = LE.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from saliencylab.bench.run import Row, run_benchmark
from saliencylab.models.classifier import Classifier

COLUMNS = {"LE": "localization_error", "OM": "official_localization_error", "F1": "box_f1",
           "F1a": "box_f1_average", "SM": "saliency_metric_wsol", "sm_acc": "box_crop_accuracy",
           "top1": "classifier_top1", "binarized": "binarized_fraction", "avg_mask": "mask_mean",
           "entropy": "mask_entropy", "tv": "mask_tv"}
"""The table's columns, in the order of the paper's table, and the registered metric behind each."""
BOX_COLUMNS = {"MaxBoxAcc": "max_box_acc", "MaxBoxAccV2": "max_box_acc_v2"}
"""Added with ``max_box_acc=True`` (percent; a threshold sweep per image, so opt-in)."""
PERCENT = ("sm_acc", "top1")
LOWER_IS_BETTER = ("LE", "OM", "SM")
HIGHER_IS_BETTER = ("F1", "F1a", "sm_acc", "top1", "PxAP", *BOX_COLUMNS)
BASELINES = {"center": "center_box", "max": "ones", "min": "zeros", "ground_truth": "ground_truth"}
"""The paper's special rows -> the engine's reference masks."""
PXAP_BASELINES = ("center",)
"""Special rows that rank pixels, so have a PxAP (max, min and the ground truth do not)."""


def paper_quirk_options(paper_quirks: bool) -> dict[str, object]:
    """The metric protocol switches of the original's box arithmetic (see the module docstring)."""
    if not paper_quirks:
        return {}
    return {"boxes_inclusive": False, "one_pixel_smaller": True, "unclipped_area": True}


def summary(entry: dict) -> dict[str, float]:
    """One engine row -> the WSOL table's row: its columns, images and seconds."""
    names = {**COLUMNS, **BOX_COLUMNS, "PxAP": "pxap"}
    row = {column: entry["scores"][metric]["value"] * (100 if column in PERCENT else 1)
           for column, metric in names.items() if metric in entry["scores"]}
    return {**row, "images": entry["images"], "seconds": entry["seconds"]}


def run_wsol(classifier: Classifier, val: Dataset, methods: dict[str, Row], out_dir: str | Path, *,
             baselines: tuple[str, ...] = tuple(BASELINES), test: Dataset | None = None, max_box_acc: bool = False,
             paper_quirks: bool = False, batch_size: int = 32, device: torch.device | str = "cpu",
             progress: bool = True, description: dict | None = None,
             replace_stale: bool = False) -> dict[str, dict[str, float]]:
    """The WSOL table of ``baselines`` and ``methods`` (row name -> engine Row) on ``val`` (single-label Samples
    with boxes), plus PxAP on ``test`` (Samples with a segmentation, e.g. OpenImagesDataset) when given.

    Writes the engine's folders ``out_dir/val`` and ``out_dir/pxap`` (resumable; ``description`` and
    ``replace_stale`` as :func:`run_benchmark`'s); returns row -> column -> value.
    """
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown WSOL baseline(s) {', '.join(unknown)}; expected some of {', '.join(BASELINES)}")
    rows = {**{name: Row(BASELINES[name]) for name in baselines}, **methods}
    metric_names = [*COLUMNS.values(), *(BOX_COLUMNS.values() if max_box_acc else ())]
    common = dict(description=description, batch_size=batch_size, device=device, progress=progress,
                  options=paper_quirk_options(paper_quirks), replace_stale=replace_stale)
    out_dir = Path(out_dir)
    results = run_benchmark(classifier, val, rows, out_dir / "val", metric_names=metric_names, **common)
    table = {name: summary(entry) for name, entry in results["rows"].items()}
    if test is not None:
        ranked = {name: row for name, row in rows.items() if name not in BASELINES or name in PXAP_BASELINES}
        pxap = run_benchmark(classifier, test, ranked, out_dir / "pxap", metric_names=["pxap"], **common)
        for name, entry in pxap["rows"].items():
            table[name]["PxAP"] = entry["scores"]["pxap"]["value"]
    return table


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def wsol_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per method (its summary dict), one column per key in order of first
    appearance; ↓ marks lower-is-better columns, ↑ higher-is-better; a missing or non-finite value prints as "–"."""
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    titles = [f"{c} ↓" if c in LOWER_IS_BETTER else f"{c} ↑" if c in HIGHER_IS_BETTER else c for c in columns]
    lines = ["| method | " + " | ".join(titles) + " |", "|---" + "|---:" * len(columns) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines) + "\n"
