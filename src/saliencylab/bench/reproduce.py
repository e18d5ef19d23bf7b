"""``saliencylab reproduce PAPER``: train what a paper trains on the synthetic data, score it with the
benchmark engine at the paper's settings, and check the paper's claims on the numbers.

Each reproduction writes ``out_dir/results.json`` (``claims``, the engine results, settings, timing) and
``out_dir/report.html`` (the claims table, then the engine's tables); claims are made by
:func:`saliencylab.bench.claims.claim` from the numbers. One module per paper:

- ``reproduce_000``: NN-Explainer (Stalder et al., "What You See is What You Classify", NeurIPS 2022).
- ``reproduce_001``: masking-based saliency (Phang et al., "Investigating and Simplifying Masking-based Saliency
  Methods for Model Interpretability", 2020).
- ``reproduce_002``: consistent interpretations (Pillai & Pirsiavash, "Explainable Models with Consistent
  Interpretations", AAAI 2021).
- ``reproduce_003``: deliberative explanations (Wang & Vasconcelos, "Deliberative Explanations: visualizing network
  insecurities", NeurIPS 2019).
- ``reproduce_004``: the in-model explainer-classifier (Rio-Torto et al., "Understanding the decisions of CNNs: an
  in-model approach", Pattern Recognition Letters 2020).
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
from saliencylab.bench.demo import pick_device
from saliencylab.bench.reproduce_000 import reproduce_000
from saliencylab.bench.reproduce_001 import reproduce_001
from saliencylab.bench.reproduce_002 import reproduce_002
from saliencylab.bench.reproduce_003 import reproduce_003
from saliencylab.bench.reproduce_004 import PHASE1_004, VARIANTS_004, reproduce_004
from saliencylab.bench.run import html_tables
from saliencylab.data.synthetic import SyntheticConfig
from saliencylab.files import write_atomic


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
