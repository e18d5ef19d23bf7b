"""`saliencylab reproduce`: claims computed from numbers, both papers end to end on a tiny set, the CLI."""
import html
import json
import math

import pytest

from saliencylab.bench.reproduce import PAPERS, claim, claims_000, claims_001, claims_table, paper_settings_000, reproduce
from saliencylab.cli import build_parser, main
from saliencylab.data.synthetic import SyntheticConfig

TINY = SyntheticConfig(image_size=40, train=24, val=8, test=8, seed=2)
TINY_WSOL = SyntheticConfig(image_size=48, train=12, val=6, test=6, seed=2)  # HOG needs 48 px
FAST_000 = {"rise": {"num_masks": 20}, "extremal_perturbation": {"max_iter": 2, "areas": [0.1, 0.3]}}
KEYS = {"id", "statement", "metric", "higher_is_better", "ours", "reference", "holds"}


def test_claim_holds_only_when_every_better_row_beats_every_worse_row():
    higher = claim("c", "s", "mean_f1", True, {"a": 0.7, "b": 0.6, "c": 0.5}, ["a"], ["b", "c"])
    assert higher["holds"] and set(higher) == KEYS and higher["reference"] is None
    assert not claim("c", "s", "mean_f1", True, {"a": 0.7, "b": 0.6, "c": 0.5}, ["a", "c"], ["b"])["holds"]
    assert not claim("c", "s", "mean_f1", True, {"a": 0.6, "b": 0.6}, ["a"], ["b"])["holds"]  # a tie is no win
    lower = claim("c", "s", "localization_error", False, {"fix": 0.2, "gradcam": 1.0}, ["fix"], ["gradcam"], {"x": 0.3})
    assert lower["holds"] and lower["reference"] == {"x": 0.3}
    assert not claim("c", "s", "localization_error", False, {"fix": 1.0, "gradcam": 0.2}, ["fix"], ["gradcam"])["holds"]
    assert not claim("c", "s", "m", True, {"a": math.nan, "b": 0.1}, ["a"], ["b"])["holds"]  # undefined fails
    assert not claim("c", "s", "m", True, {"b": 0.1}, ["a"], ["b"])["holds"]  # missing fails


def _bench(values: dict[str, dict[str, float]]) -> dict:
    return {"rows": {row: {"scores": {m: {"value": v} for m, v in scores.items()}} for row, scores in values.items()}}


def test_paper_claims_on_hand_built_numbers():
    good = {"mean_f1": 0.6, "discrete_iou": 0.5, "soft_iou": 0.4}
    bad = {"mean_f1": 0.5, "discrete_iou": 0.3, "soft_iou": 0.5}  # soft IoU beats the explainer
    claims = claims_000(_bench({"explainer": good, "gradcam": bad, "rise": bad, "extremal_perturbation": bad}))
    assert [c["holds"] for c in claims] == [True, True, False]
    wsol_rows = {"fix": 0.2, "ca": 0.4, "gradcam": 1.0, "center": 1.0}
    val = _bench({row: {"localization_error": v, "official_localization_error": v} for row, v in wsol_rows.items()})
    pair = {"spearman": 0.6, "spearman_abs": 0.5, "hog_pearson": 0.8, "ssim": 0.8}
    drt = {"trained_vs_trained": pair, "trained_vs_random_labels": {**pair, "spearman": 0.3, "spearman_abs": 0.55}}
    by_id = {c["id"]: c for c in claims_001(val, drt)}
    assert by_id["maskers_beat_gradcam_center_le"]["holds"] and by_id["maskers_beat_gradcam_center_om"]["holds"]
    assert not by_id["ca_beats_fix_le"]["holds"]  # FIX 0.2 < CA 0.4
    assert by_id["data_randomization_spearman"]["holds"] and not by_id["data_randomization_spearman_abs"]["holds"]
    assert by_id["maskers_beat_gradcam_center_le"]["reference"]["CAM (Fig. 1C)"] == 0.481
    assert "✗" in claims_table(list(by_id.values())) and "✓" in claims_table(list(by_id.values()))


def test_paper_000_settings_scale_extremal_perturbations_with_the_image():
    settings = paper_settings_000(96)
    assert settings["rise"]["num_masks"] == 8000
    ep = settings["extremal_perturbation"]
    assert (ep["step"], ep["sigma"], ep["max_iter"]) == (3, 9.0, 800)
    assert (paper_settings_000(224)["extremal_perturbation"]["step"], paper_settings_000(224)["extremal_perturbation"]
            ["sigma"]) == (7, 21.0)


@pytest.mark.parametrize("paper", ["000", "001"])
def test_reproduce_end_to_end_writes_claims_and_report(tmp_path, paper):
    options = ({"images": 3, "explainer_epochs": 1, "overrides": FAST_000} if paper == "000"
               else {"masker_epochs": 1, "wsol_config": TINY_WSOL})
    results = reproduce(paper, tmp_path / paper, config=TINY, epochs=1, batch_size=4, progress=False, **options)
    on_disk = json.loads((tmp_path / paper / "results.json").read_text())
    assert on_disk["paper"] == paper and on_disk["claims"] and on_disk["elapsed_seconds"] > 0
    for entry in on_disk["claims"]:
        assert set(entry) == KEYS and isinstance(entry["holds"], bool) and entry["ours"]
    page = (tmp_path / paper / "report.html").read_text()
    assert page.index(html.escape(results["claims"][0]["statement"])) < page.index("Engine:")
    if paper == "000":
        assert on_disk["deviations"] == FAST_000 and "Not the paper" in page
        rows = on_disk["bench"]["test"]["rows"]
        assert set(rows) == {"explainer", "gradcam", "rise", "extremal_perturbation"}
        assert {row["images"] for row in rows.values()} == {3}  # every compared row on the same images
    else:
        assert set(on_disk["bench"]) == {"val", "openimages_test"}
        assert on_disk["bench"]["openimages_test"]["rows"]["fix"]["scores"]["pxap"]["value"] is not None
        assert len(on_disk["claims"]) == 7


def test_cli_lists_reproduce_and_rejects_000_options_for_001(capsys):
    assert "reproduce" in build_parser().format_help()
    assert set(PAPERS) == {"000", "001", "003"}
    assert main(["reproduce", "001", "--set", "rise:num_masks=10", "--out", "unused"]) == 2
    assert "paper 000 only" in capsys.readouterr().err
