"""Paper claims computed from the numbers, for the reproductions (``bench/reproduce_NNN.py``).

A claim is ``{id, statement, metric, higher_is_better, ours, reference, holds}``: ``ours`` holds our numbers
per row, ``reference`` the paper's numbers where the paper (or its released README) gives them, else null,
and ``holds`` is computed by :func:`claim` from ``ours``, never written by hand.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


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


def metric_values(results: dict, metric: str, rows: Sequence[str]) -> dict[str, float]:
    """row -> the engine's aggregated value of ``metric`` (NaN when missing)."""
    out = {}
    for row in rows:
        value = results["rows"][row]["scores"].get(metric, {}).get("value")
        out[row] = math.nan if value is None else value
    return out
