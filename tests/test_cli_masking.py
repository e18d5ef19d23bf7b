"""The paper-001 commands: train-masker, sanity and bench wsol on a tiny generated ImageNet-format set."""
import json
import math

import pytest

from saliencylab.cli import main
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.data.synthetic import SyntheticConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """12 train (2 per class), 6 val and 6 OpenImages test images at 48 px (HOG needs 48)."""
    return write_synthetic_imagenet(tmp_path_factory.mktemp("imagenet"),
                                    SyntheticConfig(image_size=48, train=12, val=6, test=6, seed=3),
                                    num_per_class_in_train_val=1, progress=False)


@pytest.fixture(scope="module")
def maskers(root, classifier_dir, tmp_path_factory):
    """Two maskers trained by the command: CA on 1 image per class (2 epochs), FIX on the shuffled labels."""
    meta = root / "imagenet" / "metadata"
    out = tmp_path_factory.mktemp("maskers")
    common = ["--classifier", str(classifier_dir), "--image-size", "48", "--device", "cpu", "--no-progress"]
    assert main(["train-masker", "--out", str(out / "a"), "--train-json", str(meta / "train.json"), "--mode", "ca",
                 "--epochs", "2", "--examples-per-class", "1", "--batch-size", "2", "--set", "lr=0.01", *common]) == 0
    assert main(["train-masker", "--out", str(out / "b"), "--train-json", str(meta / "train_shuffle.json"),
                 "--val-json", str(meta / "val.json"), "--epochs", "1", "--batch-size", "4", *common]) == 0
    return out / "a", out / "b"


def _sanity_common(root, classifier_dir) -> list[str]:
    return ["--classifier", str(classifier_dir), "--data", f"imagenet:{root / 'imagenet' / 'metadata' / 'val.json'}",
            "--image-size", "48"]


def _common(root, classifier_dir) -> list[str]:
    return ["--classifier", str(classifier_dir), "--val-json", str(root / "imagenet" / "metadata" / "val.json"),
            "--image-size", "48"]


def test_train_masker_records_mode_epochs_settings_and_subset(maskers, capsys):
    a, b = (json.loads((folder / "masker.json").read_text()) for folder in maskers)
    assert a["mode"] == "ca" and a["epochs"] == 2 and a["hyper_parameters"]["lr"] == 0.01
    assert a["batches_per_epoch"] == 3  # 6 images (1 per class) in batches of 2; preset epoch_fraction 1
    assert len(json.loads((maskers[0] / "train_1_per_class.json").read_text())["samples"]) == 6
    assert a["classifier_dir"] == str(maskers[0])  # CA: the co-trained classifier is written next to the masker
    assert b["mode"] == "fix" and b["epochs"] == 1 and b["batches_per_epoch"] == 3  # 12 images in batches of 4
    assert (maskers[1] / "masker.safetensors").is_file()


def test_sanity_cascading_writes_json_plot_and_table(root, classifier_dir, tmp_path, capsys):
    assert main(["sanity", "gradcam", *_sanity_common(root, classifier_dir), "--images", "4", "--layers", "head",
                 "features.19", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sanity_cascading_gradcam.json").read_text())
    assert result["layers"] == ["original", "head", "features.19"]
    assert result["mean"]["spearman"][0] == pytest.approx(1.0)  # gradcam is deterministic
    assert len(result["per_image"]["ssim"][0]) == 4
    assert (tmp_path / "sanity_cascading_gradcam.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "spearman_abs" in table and table.splitlines()[1].startswith("original")


def test_sanity_data_compares_two_maskers(root, classifier_dir, maskers, tmp_path, capsys):
    assert main(["sanity", "masker", *_sanity_common(root, classifier_dir), "--mode", "data", "--images", "3",
                 "--set", f"checkpoint={maskers[0]}", "--other-set", f"checkpoint={maskers[1]}",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sanity_data_masker.json").read_text())
    assert result["other_settings"] == {"checkpoint": str(maskers[1])}
    assert set(result["mean"]) == {"spearman", "spearman_abs", "hog_pearson", "ssim"}
    assert all(len(values) == 3 for values in result["per_image"].values())
    assert all(math.isnan(v) or -1 <= v <= 1 for v in result["mean"].values())
    assert "ssim" in capsys.readouterr().out


def test_sanity_data_needs_a_second_run(root, classifier_dir, tmp_path, capsys):
    assert main(["sanity", "gradcam", *_sanity_common(root, classifier_dir), "--mode", "data", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "saliencylab sanity: error: --mode data compares two sets of maps: give --other-set" in error


def test_bench_wsol_table_with_baselines_masker_and_pxap(root, classifier_dir, maskers, tmp_path, capsys):
    meta = root / "imagenet" / "metadata"
    rows_file = tmp_path / "rows.json"
    assert main(["bench", "wsol", "gradcam", "masker", *_common(root, classifier_dir), "--boxes",
                 str(meta / "val_bboxes.json"), "--set", f"masker:checkpoint={maskers[1]}", "--openimages",
                 str(root / "openimages"), "--batch-size", "4", "--json", str(rows_file), "--out", str(tmp_path / "w"),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert [line.split(" | ")[0] for line in table.splitlines()[2:8]] == [
        "| center", "| max", "| min", "| ground_truth", "| gradcam", "| masker"]
    assert "PxAP ↑" in table
    rows = json.loads(rows_file.read_text())
    assert rows["ground_truth"]["LE"] == 0.0 and rows["min"]["F1"] == 0.0 and rows["max"]["OM"] == rows["max"]["LE"]
    assert all(row["images"] == 6 for row in rows.values())
    assert 0 <= rows["masker"]["PxAP"] <= 100 and 0 <= rows["center"]["PxAP"] <= 100 and "PxAP" not in rows["max"]
    assert (tmp_path / "w" / "val" / "scores" / "masker" / "row.json").is_file()  # per-image scores, resumable
    assert main(["bench", "wsol", "gradcam", *_common(root, classifier_dir), "--boxes", str(meta / "val_bboxes.json"),
                 "--baselines", "--paper-quirks", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("\n") == 4  # header, rule, gradcam, where the scores are


def test_bench_wsol_max_box_acc(root, classifier_dir, tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert main(["bench", "wsol", "gradcam", *_common(root, classifier_dir), "--boxes",
                 str(root / "imagenet" / "metadata" / "val_bboxes.json"), "--baselines", "max", "--max-box-acc",
                 "--json", str(rows_file), "--out", str(tmp_path / "w"), "--no-progress"]) == 0
    assert "| MaxBoxAcc ↑ | MaxBoxAccV2 ↑ |" in capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    for row in rows.values():
        assert 0 <= row["MaxBoxAcc"] <= 100 and 0 <= row["MaxBoxAccV2"] <= 100
    # the full mask's box is the whole image: its IoU does not depend on the threshold
    assert rows["max"]["MaxBoxAcc"] == pytest.approx(100 * (1 - rows["max"]["LE"]))  # no IoU lies at exactly 0.5 here


def test_bad_paths_unknown_methods_and_settings_exit_2(root, classifier_dir, tmp_path, capsys):
    meta = root / "imagenet" / "metadata"
    missing = tmp_path / "nowhere.json"
    assert main(["train-masker", "--classifier", str(classifier_dir), "--out", str(tmp_path / "m"),
                 "--train-json", str(missing)]) == 2
    assert f"saliencylab train-masker: error: metadata file {missing} not found" in capsys.readouterr().err
    assert main(["bench", "wsol", "gradcam", *_common(root, classifier_dir), "--boxes", str(missing)]) == 2
    assert f"box file {missing} not found" in capsys.readouterr().err
    assert main(["sanity", "gradcam", "--classifier", str(tmp_path), "--data", f"imagenet:{meta / 'val.json'}"]) == 2
    assert f"{tmp_path / 'classifier.json'} not found" in capsys.readouterr().err
    assert main(["bench", "wsol", "gradcam", "nosuch", *_common(root, classifier_dir), "--boxes", str(missing)]) == 2
    assert "row 'nosuch': unknown method 'nosuch'; registered methods:" in capsys.readouterr().err
    assert main(["bench", "wsol", "gradcam", *_common(root, classifier_dir), "--boxes", str(meta / "val_bboxes.json"),
                 "--set", "rise:n_masks=8"]) == 2
    assert "--set names row 'rise', which is not benchmarked (gradcam)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "wsol", "gradcam", *_common(root, classifier_dir), "--boxes", "b", "--set", "layer=x"])
    assert exit_info.value.code == 2 and "expected ROW:KEY=VALUE" in capsys.readouterr().err


def test_sanity_randomizes_the_classifier_a_ca_masker_reads(root, classifier_dir, maskers, tmp_path, capsys):
    ca = maskers[0]
    args = ["sanity", "masker", "--data", f"imagenet:{root / 'imagenet' / 'metadata' / 'val.json'}", "--image-size", "48",
            "--images", "3", "--set", f"checkpoint={ca}", "--layers", "features.0", "--out", str(tmp_path)]
    assert main([*args, "--classifier", str(classifier_dir)]) == 2  # not the classifier it reads: would test nothing
    assert f"{ca} is a CA masker: it reads its co-trained classifier" in capsys.readouterr().err
    assert main([*args, "--classifier", str(ca)]) == 0
    result = json.loads((tmp_path / "sanity_cascading_masker.json").read_text())
    assert result["mean"]["ssim"][0] == pytest.approx(1.0)
    assert result["mean"]["ssim"][1] < 1.0 - 1e-6  # its input layer re-initialised: the masks change


def test_sanity_and_bench_speed_refuse_impossible_counts(root, classifier_dir, capsys):
    val_json = root / "imagenet" / "metadata" / "val.json"
    assert main(["sanity", "gradient", "--classifier", str(classifier_dir), "--data", f"imagenet:{val_json}",
                 "--images", "100000", "--no-progress"]) == 2
    assert "--images 100000, but" in capsys.readouterr().err
    for flag in ("--size", "--batch", "--repeats"):
        assert main(["bench", "speed", flag, "0"]) == 2
        assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    assert main(["bench", "speed", "--methods", "nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
