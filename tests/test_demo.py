"""The demo end to end on a tiny set, the results schema, the report, and the CLI."""
import csv
import json
import math
import re
from pathlib import Path

import pytest

from saliencylab import methods
from saliencylab.bench.demo import CLASS_SPECIFIC, DEMO_METRICS, REFERENCE_ROWS, run_demo
from saliencylab.bench import report
from saliencylab.bench.masking import MASKERS
from saliencylab.cli import main
from saliencylab.data.synthetic import SyntheticConfig

TINY = SyntheticConfig(image_size=40, train=24, val=8, test=8, seed=2)
TINY_WSOL = SyntheticConfig(image_size=48, train=12, val=6, test=6, seed=2)  # HOG needs 48 px
TINY_RUN = dict(config=TINY, epochs=1, explainer_epochs=1, batch_size=4, figure_images=3, slow_images=2,
                class_specific_images=4, masker_epochs=1, wsol_config=TINY_WSOL, sanity_images=3, progress=False)
README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("project") / "runs" / "demo"  # the README example's paths
    results = run_demo(out, **TINY_RUN)
    return out, results


def test_demo_writes_every_output(demo_run):
    out, results = demo_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == "saliencylab.results/1"
    # fcnn explains itself, not the demo classifier; the masker (paper 001) is trained on single-label data;
    # inmodel (paper 004) is the map of its own in-model network
    explained = set(methods.names()) - {"fcnn", "masker", "inmodel"}
    assert set(on_disk["methods"]) == explained | set(REFERENCE_ROWS)
    assert list(on_disk["metrics"]) == list(DEMO_METRICS)
    assert on_disk["dataset"]["images"] == 8 and on_disk["dataset"]["image_size"] == 40
    assert set(on_disk["classifier"]["test"]) == {"accuracy", "precision", "recall", "micro_f1"}
    for name in explained:
        row = on_disk["methods"][name]
        assert row["kind"] == "method" and row["images_per_second"] > 0
        assert (out / row["figure"]).is_file()
        assert set(row["scores"]) == set(DEMO_METRICS)
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == list(on_disk["methods"])
    page = (out / "report.html").read_text()
    assert set(on_disk["class_specific"]) == set(CLASS_SPECIFIC) & set(methods.names())
    for entry in on_disk["class_specific"].values():
        assert len(entry["matrix"]) == 6 and len(entry["matrix"][0]) == 7 and (out / entry["figure"]).is_file()
    figures = len(explained) + 1 + len(on_disk["class_specific"]) + 1 + len(on_disk["masking"]["sanity"])
    assert "<table>" in page and page.count("data:image/png;base64,") == figures
    assert not list(out.rglob("*.tmp"))


def test_demo_reference_rows_have_known_values(demo_run):
    _, results = demo_run
    ideal, ones, zeros = (results["methods"][k]["scores"] for k in ("ideal", "1", "0"))
    assert ideal["mean_f1"] == pytest.approx(1.0) and ideal["soft_iou"] == pytest.approx(1.0)
    assert ideal["overlap"] == pytest.approx(1.0) and ideal["background_coverage"] == pytest.approx(0.0)
    assert ones["object_coverage"] == pytest.approx(1.0) and ones["background_coverage"] == pytest.approx(1.0)
    assert zeros["object_coverage"] == pytest.approx(0.0)
    assert ideal["pointing_game"] == pytest.approx(1.0)  # each class's own pixels point at that class
    assert math.isnan(results["methods"]["0.5"]["scores"]["pointing_game"])  # a constant map has no maximum


def test_demo_rerun_reuses_data_and_classifier(demo_run, capsys):
    out, _ = demo_run
    weights = out / "classifier" / "classifier.safetensors"
    explainer = out / "explainer" / "explainer.safetensors"
    stamp, explainer_stamp = weights.stat().st_mtime_ns, explainer.stat().st_mtime_ns
    masker = out / "masking" / "ca" / "masker.safetensors"
    masker_stamp = masker.stat().st_mtime_ns
    run_demo(out, **TINY_RUN)
    assert weights.stat().st_mtime_ns == stamp and explainer.stat().st_mtime_ns == explainer_stamp
    assert masker.stat().st_mtime_ns == masker_stamp
    printed = capsys.readouterr().out
    assert "reusing the trained classifier" in printed and "reusing the trained explainer" in printed
    assert "reusing the trained masker ca" in printed


def test_demo_masking_section(demo_run):
    out, results = demo_run
    section = json.loads((out / "results.json").read_text())["masking"]
    assert set(section["maskers"]) == set(MASKERS)
    assert section["maskers"]["ca"]["mode"] == "ca" and section["maskers"]["fix_random_labels"]["labels"] == "train_shuffle.json"
    assert section["maskers"]["fix_seed2"]["seed"] == section["maskers"]["fix"]["seed"] + 1
    assert set(section["wsol"]) == {"center", "max", "min", "ground_truth", "gradcam", "fix", "ca"}
    assert section["dataset"] == {"root": str(out / "masking" / "data"), "train": 12, "val": 6, "test": 6,
                                  "image_size": 48}
    truth, smallest, center = (section["wsol"][k] for k in ("ground_truth", "min", "center"))
    assert truth["LE"] == 0.0 and smallest["LE"] == 1.0 and smallest["F1"] == 0.0
    assert "PxAP" in center and "PxAP" not in truth
    for row in ("gradcam", "fix", "ca"):
        assert 0.0 <= section["wsol"][row]["LE"] <= 1.0 and 0.0 <= section["wsol"][row]["PxAP"] <= 100.0
    drt = section["data_randomization"]
    assert drt["images"] == 6 and drt["trained_vs_random_labels"]["model"] == "fix_random_labels"
    for entry in section["sanity"].values():
        # a second run of the trained model: identical maps (SSIM is defined even for a constant map)
        assert entry["layers"][0] == "original" and entry["mean"]["ssim"][0] == pytest.approx(1.0)
        assert len(entry["layers"]) > 2 and len(entry["mean"]["ssim"]) == len(entry["layers"])
        assert (out / entry["figure"]).is_file()
    assert (out / section["figure"]).is_file()
    page = (out / "report.html").read_text()
    assert "Masking-based saliency (Phang et al. 2020)" in page and "<p>LE: fix " in page


def test_report_states_the_masking_verdicts_from_the_numbers(demo_run):
    out, results = demo_run
    section = json.loads(json.dumps(results["masking"]))
    for name, le in (("fix", 0.2), ("ca", 0.3), ("gradcam", 0.9), ("center", 1.0)):
        section["wsol"][name]["LE"] = le
    drt = section["data_randomization"]
    drt["trained_vs_trained"].update(spearman=0.6, spearman_abs=0.5, hog_pearson=0.8, ssim=0.8)
    drt["trained_vs_random_labels"].update(spearman=0.3, spearman_abs=0.5, hog_pearson=0.2, ssim=0.4)
    page = report._masking({"masking": section}, out)
    assert "fix 0.200, ca 0.300, gradcam 0.900, center 1.000: both maskers localise better" in page
    assert "less similar on 3 of 4 measures (spearman, hog_pearson, ssim)." in page
    section["wsol"]["ca"]["LE"] = 0.95
    assert "the maskers do <b>not</b> beat both" in report._masking({"masking": section}, out)


def test_cli_lists_methods_and_metrics(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in methods.names())
    assert main(["metrics"]) == 0
    assert "pointing_game" in capsys.readouterr().out


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path), "--image-size", "8", "--no-progress"]) == 2
    assert "image_size must be >= 32" in capsys.readouterr().err
    assert main(["explain", "nosuch", "--classifier", str(tmp_path), "--out", str(tmp_path / "maps")]) == 2
    assert "unknown method(s) nosuch; registered methods:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explode"])


def test_readme_python_example_runs_as_written(demo_run, monkeypatch, capsys):
    out, _ = demo_run
    example = re.search(r"## Ten lines of Python.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(out.parent.parent)
    exec(compile(example, "README.md", "exec"), {})
    score = float(capsys.readouterr().out.split("pointing game:")[1])
    assert 0.0 <= score <= 1.0
