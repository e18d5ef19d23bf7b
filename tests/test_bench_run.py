"""The benchmark engine: scores equal direct computation; resumable after SIGKILL; shards merge to one run."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from saliencylab import build_classifier, methods, metrics
from saliencylab.bench.run import Row, merge_runs, run_benchmark
from saliencylab.cli import main
from saliencylab.data.formats import format_names, load_dataset
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.metrics.registry import MetricInputs
from saliencylab.targets import from_multi_hot
from saliencylab.models.load import save_classifier
from saliencylab.types import collate

METRICS = ["pointing_game", "energy", "mean_f1", "saliency_metric", "pxap"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_synthetic(root / "data", SyntheticConfig(image_size=48, train=2, val=2, test=20, seed=5), progress=False)
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4)
    save_classifier(classifier, root / "classifier", arch="small_cnn", width=4, data={"image_size": 48})
    dataset = load_dataset(f"voc:{root / 'data' / 'voc'}", class_names=CLASSES, image_size=48,
                           options={"segmentation_only": True})
    return root, classifier, dataset


def run(project, out, rows=("gradcam", "zeros", "ground_truth"), **kwargs):
    _, classifier, dataset = project
    return run_benchmark(classifier, dataset, list(rows), out, metric_names=METRICS, batch_size=6, progress=False,
                         description={"classifier": "small_cnn", "dataset": "voc"}, **kwargs)


def values(results: dict) -> dict:
    """Every row's value, interval and per-class means; NaN as None so that equal runs compare equal."""
    table = {row: {m: [s["value"], s["ci"], s.get("per_class")] for m, s in entry["scores"].items()}
             for row, entry in results["rows"].items()}
    return json.loads(json.dumps(table).replace("NaN", "null"))


def test_scores_equal_the_metrics_computed_directly(project, tmp_path):
    _, classifier, dataset = project
    results = run(project, tmp_path / "out")
    batch = collate([dataset[i] for i in range(len(dataset))])
    targets = from_multi_hot(batch.labels)
    maps = methods.build("gradcam", classifier).attribute(batch.images, targets)
    inputs = MetricInputs(maps, targets, batch, classifier)
    for name in ("energy", "mean_f1", "saliency_metric"):
        expected = metrics.get(name).fn(inputs)
        assert results["rows"]["gradcam"]["scores"][name]["value"] == pytest.approx(float(expected.nanmean()), rel=1e-5)
    expected = metrics.get("pointing_game").reduce(metrics.get("pointing_game").fn(inputs), targets)
    assert results["rows"]["gradcam"]["scores"]["pointing_game"]["value"] == pytest.approx(expected)
    truth = results["rows"]["ground_truth"]["scores"]
    assert truth["mean_f1"]["value"] == pytest.approx(1.0) and truth["pxap"]["value"] == pytest.approx(100.0)
    assert results["rows"]["zeros"]["kind"] == "reference" and math.isnan(
        results["rows"]["zeros"]["scores"]["pointing_game"]["value"])  # constant maps: no maximum
    low, high = results["rows"]["gradcam"]["scores"]["energy"]["ci"]
    assert low <= results["rows"]["gradcam"]["scores"]["energy"]["value"] <= high and low < high
    assert set(results["rows"]["gradcam"]["scores"]["energy"]["per_class"]) <= set(CLASSES)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"run.json", "scores", "results.json", "results.csv", "scores.csv",
                                               "report.html"}
    assert sorted(p.name for p in (out / "scores" / "gradcam").iterdir()) == [
        "000000.json", "000001.json", "000002.json", "000003.json", "row.json"]
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "row,image,target,metric,score" and len(lines) > 3 * 20


def test_shards_in_one_folder_or_merged_equal_one_run(project, tmp_path):
    whole = values(run(project, tmp_path / "whole"))
    first = run(project, tmp_path / "shared", shard=(0, 2))
    assert first["rows"]["gradcam"]["batches_missing"] == 2
    assert values(run(project, tmp_path / "shared", shard=(1, 2))) == whole
    run(project, tmp_path / "a", shard=(0, 2))
    run(project, tmp_path / "b", shard=(1, 2))
    assert values(merge_runs(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])) == whole


def test_batch_size_and_subsets(project, tmp_path):
    _, classifier, dataset = project
    results = run_benchmark(classifier, dataset, {"gc": "gradcam", "gc8": Row("gradcam", images=8)},
                            tmp_path / "out", metric_names=["energy", "mean_f1"], batch_size=5, progress=False)
    whole = run(project, tmp_path / "six", rows=("gradcam",))
    for metric in ("energy", "mean_f1"):  # batches of 5 and 6: the same numbers
        assert results["rows"]["gc"]["scores"][metric]["value"] == pytest.approx(
            whole["rows"]["gradcam"]["scores"][metric]["value"], rel=1e-6)
    assert results["rows"]["gc8"]["images"] == 8 and results["rows"]["gc"]["images"] == 20


def test_a_folder_of_other_settings_is_refused(project, tmp_path):
    _, classifier, dataset = project
    run(project, tmp_path / "out", rows=("gradcam",))
    with pytest.raises(ValueError, match="other settings \\(seed differ\\)"):
        run(project, tmp_path / "out", rows=("gradcam",), seed=1)
    with pytest.raises(ValueError, match="other settings \\(settings differ\\)"):
        run_benchmark(classifier, dataset, {"gradcam": Row("gradcam", {"layer": "features"})}, tmp_path / "out",
                      metric_names=METRICS, batch_size=6, progress=False,
                      description={"classifier": "small_cnn", "dataset": "voc"})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run(project, tmp_path / "other", rows=("nope",))
    with pytest.raises(ValueError, match="metric 'localization_error' needs"):
        images = project[0] / "data" / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages"
        folder = load_dataset(f"folder:{images}", class_names=CLASSES, image_size=48)
        run_benchmark(classifier, folder, ["gradcam"], tmp_path / "f", metric_names=["localization_error"],
                      targets="top1", progress=False)


def test_dataset_formats_are_registered_with_their_options():
    assert {"voc", "coco", "imagenet", "openimages", "folder"} <= set(format_names())
    with pytest.raises(ValueError, match="unknown option\\(s\\) spilt; its options: split='test'"):
        load_dataset("voc:x", class_names=CLASSES, image_size=48, options={"spilt": "val"})
    with pytest.raises(ValueError, match="missing option\\(s\\) images"):
        load_dataset("coco:x.json", class_names=CLASSES, image_size=48)
    with pytest.raises(ValueError, match="expected a dataset as FORMAT:PATH"):
        load_dataset("voc", class_names=CLASSES, image_size=48)


@pytest.fixture(scope="module")
def resnet18(project):
    """A torchvision ResNet-18 with random weights saved as a plain state dict, and a class-names file."""
    import torchvision

    root = project[0]
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=len(CLASSES)).state_dict(), root / "resnet18.pth")
    (root / "classes.txt").write_text("\n".join(CLASSES))
    return ["--model", "torchvision:resnet18", "--weights", str(root / "resnet18.pth"), "--class-names",
            str(root / "classes.txt"), "--image-size", "48"]


def bench_cli(project, resnet18, out, *extra):
    root = project[0]
    return [sys.executable, "-m", "saliencylab.cli", "bench", "run", "rise", "gc=gradcam", *resnet18, "--data",
            f"voc:{root / 'data' / 'voc'}", "--data-set", "segmentation_only=true", "--out", str(out), "--metrics",
            "energy", "pointing_game", "mean_f1", "--batch-size", "2", "--set", "rise:num_masks=40", "--no-progress", *extra]


def test_bench_run_on_a_torchvision_resnet_survives_a_hard_kill_and_shards(project, resnet18, tmp_path):
    reference = subprocess.run(bench_cli(project, resnet18, tmp_path / "reference", "--html", str(tmp_path / "r.html"),
                                         "--csv", str(tmp_path / "r.csv")), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    assert "| rise |" in reference.stdout and "<table>" in (tmp_path / "r.html").read_text()
    assert (tmp_path / "r.csv").read_text().startswith("row,metric,value,ci_low,ci_high")
    out = tmp_path / "killed"
    process = subprocess.Popen(bench_cli(project, resnet18, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "scores").glob("*/0*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "scores").glob("*/0*.json")))
    assert 3 <= done < 20, "the kill should land mid-run"
    rerun = subprocess.run(bench_cli(project, resnet18, out, "--json", str(tmp_path / "copy.json")),
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "| rise |" in rerun.stdout and "| gc |" in rerun.stdout
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())
    assert values(json.loads((tmp_path / "copy.json").read_text())) == values(expected)
    assert not list(out.rglob("*.tmp"))
    for shard in ("0/2", "1/2"):  # two shards into one folder, then merged from two folders
        done = subprocess.run(bench_cli(project, resnet18, tmp_path / shard.replace("/", "of"), "--shard", shard),
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    merged = subprocess.run([sys.executable, "-m", "saliencylab.cli", "bench", "merge", str(tmp_path / "merged"),
                             str(tmp_path / "0of2"), str(tmp_path / "1of2")], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert values(json.loads((tmp_path / "merged" / "results.json").read_text())) == values(expected)


def test_cli_errors_are_messages(project, tmp_path, capsys):
    root = project[0]
    base = ["bench", "run", "gradcam", "--classifier", str(root / "classifier"), "--out", str(tmp_path / "o")]
    assert main([*base, "--data", "vocx:here"]) == 2
    assert "unknown dataset format 'vocx'" in capsys.readouterr().err
    assert main([*base, "--data", f"voc:{root / 'data' / 'voc'}", "--set", "rise:num_masks=3"]) == 2
    assert "--set names row 'rise', which is not benchmarked (gradcam)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--data", f"voc:{root}", "--shard", "2/2"])


def test_a_stale_run_is_refused_or_replaced_and_a_current_one_kept(project, tmp_path):
    from saliencylab.bench.run import weights_stamp

    _, classifier, dataset = project
    folder = project[0] / "classifier"
    description = {"classifier": weights_stamp(folder), "dataset": "voc"}
    assert list(description["classifier"]) == [str(folder / "classifier.safetensors")]

    def bench(described: dict, **kwargs) -> dict:
        return run_benchmark(classifier, dataset, ["zeros"], tmp_path / "out", metric_names=["mean_f1"],
                             progress=False, description=described, **kwargs)

    bench(description)
    batch = tmp_path / "out" / "scores" / "zeros" / "000000.json"
    stamp = batch.stat().st_mtime_ns
    bench(description, replace_stale=True)  # same networks: kept, nothing recomputed
    assert batch.stat().st_mtime_ns == stamp
    retrained = {**description, "classifier": {"retrained": "0" * 64}}
    with pytest.raises(ValueError, match="other settings \\(classifier differ\\)"):
        bench(retrained)
    bench(retrained, replace_stale=True)
    assert batch.stat().st_mtime_ns != stamp
