"""Explaining a dataset's hardest images (Wang & Vasconcelos, "Deliberative Explanations", NeurIPS 2019, §5):
rank the images by a difficulty score, explain the ``count`` hardest, write their insecurities and overlays."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from saliencylab import viz
from saliencylab.files import write_atomic
from saliencylab.insecurity.attribution import (Score, confidence_score, entropy_score, explain_insecurities,
                                                hardness_logit, hardness_probability)
from saliencylab.insecurity.evaluate import hardest
from saliencylab.insecurity.maps import top_fraction
from saliencylab.maps import normalize_minmax
from saliencylab.models.classifier import Classifier, scoped_eval
from saliencylab.types import collate

SCORES = ("confidence", "entropy", "hardness")
"""Difficulty scores: the classifier's 1 − max p ("cs"), its entropy, the hardness predictor's ("hp")."""


def difficulty_source(score: str, classifier: Classifier, predictor: Classifier | None = None,
                      presigmoid: bool = False) -> tuple[Classifier, Score]:
    """(the network computing ``score``, the function of its output): the classifier for ``confidence`` and
    ``entropy``, the wrapped hardness ``predictor`` for ``hardness``: its sigmoid output, as the official scripts
    (the 2ndG ones among them), or with ``presigmoid`` its logit, as the review-time scripts. Above a ReLU layer
    the predictor's logit is piecewise linear in the activation, so its Hessian is 0 and 2ndG equals the
    gradient map; the sigmoid's curvature is what 2ndG adds."""
    if score not in SCORES:
        raise ValueError(f"difficulty score must be one of {SCORES}, got {score!r}")
    if score == "hardness":
        if predictor is None:
            raise ValueError("the hardness score needs a trained hardness predictor (train-hardness)")
        return predictor, hardness_logit if presigmoid else hardness_probability
    return classifier, confidence_score if score == "confidence" else entropy_score


def dataset_scores(network: Classifier, score: Score, dataset: Dataset, batch_size: int = 64,
                   device: torch.device | str = "cpu") -> Tensor:
    """The difficulty score (N,) of every image of ``dataset``."""
    scores = []
    with scoped_eval(network), torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            scores.append(score(network(batch.images.to(device))).cpu())
    return torch.cat(scores)


def explain_hardest(classifier: Classifier, dataset: Dataset, *, score: str, attributions: Sequence[str], layer: str,
                    count: int, predictor: Classifier | None = None, batch_size: int = 16,
                    device: torch.device | str = "cpu", progress: bool = False) -> dict[str, list[dict]]:
    """Explain the ``count`` images of ``dataset`` with the highest ``score`` (hardest first), by each of
    ``attributions`` (one pass for all: the class maps and the gradient are shared).

    Returns, per attribution, one record per image: ``index`` (in ``dataset``), ``image_id``, ``difficulty``,
    ``classes`` (5,) the top-5 class ids and ``insecurities`` (slot pair -> (H,W) map on the CPU).
    """
    network, score_fn = difficulty_source(score, classifier, predictor)
    difficulty = dataset_scores(network, score_fn, dataset, device=device)
    chosen = hardest(difficulty, count).tolist()
    records: dict[str, list[dict]] = {attribution: [] for attribution in attributions}
    for start in tqdm(range(0, len(chosen), batch_size), desc=f"{score} + {', '.join(attributions)}",
                      disable=not progress):
        indices = chosen[start:start + batch_size]
        batch = collate([dataset[i] for i in indices])
        classes, maps = explain_insecurities(classifier, batch.images.to(device), layer, network, score_fn,
                                             attributions)
        for attribution, per_image in maps.items():
            records[attribution].extend(
                {"index": index, "image_id": batch.image_ids[row], "difficulty": float(difficulty[index]),
                 "classes": classes[row].cpu(), "insecurities": {pair: m.cpu() for pair, m in per_image[row].items()}}
                for row, index in enumerate(indices))
    return records


def write_insecurities(records: list[dict], dataset: Dataset, out_dir: str | Path, class_names: list[str],
                       fraction: float = 0.1, figures: int = 20) -> Path:
    """Write ``out_dir/maps/<image id>.npz`` (``pairs`` (P,2) class ids, ``maps`` (P,H,W)), a ``manifest.json``
    and, for the first ``figures`` images, ``figures/<image id>.png``: the image, then one overlay per insecurity
    (min-max normalised) with its top-``fraction`` region outlined, titled with the two classes."""
    out_dir = Path(out_dir)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    manifest = []
    for number, record in enumerate(records):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record["image_id"])
        pairs = list(record["insecurities"])
        classes = record["classes"].tolist()
        ids = np.array([[classes[a], classes[b]] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
        maps = (torch.stack(list(record["insecurities"].values())).numpy() if pairs
                else np.zeros((0, 1, 1), dtype=np.float32))
        np.savez_compressed(out_dir / "maps" / f"{safe}.npz", pairs=ids, maps=maps)
        entry = {"image_id": record["image_id"], "file": f"maps/{safe}.npz", "difficulty": record["difficulty"],
                 "top5": [class_names[c] for c in classes],
                 "pairs": [[class_names[a], class_names[b]] for a, b in ids.tolist()]}
        if number < figures and pairs:
            image = dataset[record["index"]].image
            tiles, titles = [viz.to_uint8_image(image)], ["image"]
            for (a, b), insecurity in record["insecurities"].items():
                tile = viz.overlay(image, normalize_minmax(insecurity[None, None])[0, 0])
                region = top_fraction(insecurity, fraction).numpy()
                tile[region & ~ndimage.binary_erosion(region)] = 255  # the region's outline in white
                tiles.append(tile)
                titles.append(f"{class_names[classes[a]]} / {class_names[classes[b]]}")
            (out_dir / "figures").mkdir(exist_ok=True)
            viz.grid([tiles], titles).save(out_dir / "figures" / f"{safe}.png")
            entry["figure"] = f"figures/{safe}.png"
        manifest.append(entry)
    write_atomic(out_dir / "manifest.json", json.dumps({"fraction_outlined": fraction, "images": manifest}, indent=2))
    return out_dir
