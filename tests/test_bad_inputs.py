"""Bad inputs through every command and the Python API: exit code 2 (or the exception type) with a message
naming the file, field and what was expected, and no output written silently."""
import errno
import json
import os
import re
import shutil
import warnings

import pytest
import torch

from saliencylab import methods
from saliencylab.cli import main
from saliencylab.data import COCODataset, VOCDataset
from saliencylab.data.base import clip_boxes
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.files import read_json
from saliencylab.metrics import functional as F
from saliencylab.models.classifier import check_images
from saliencylab.models.load import save_classifier
from saliencylab.models.zoo import build_classifier


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Synthetic VOC + COCO (6 test images, 48 px), an ImageNet-format set and a small CNN recorded at 48 px."""
    root = tmp_path_factory.mktemp("bad_inputs")
    write_synthetic(root / "data", SyntheticConfig(image_size=48, train=4, val=4, test=6, seed=5), progress=False)
    write_synthetic_imagenet(root / "inet", SyntheticConfig(image_size=48, train=6, val=6, test=6, seed=3),
                             num_per_class_in_train_val=1, progress=False)
    torch.manual_seed(0)
    save_classifier(build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4), root / "classifier",
                    arch="small_cnn", width=4, data={"image_size": 48})
    return root


def voc_copy(root, tmp_path):
    """A copy of the VOC set to break; returns (root, VOC2007 folder, first test id)."""
    shutil.copytree(root / "data" / "voc", tmp_path / "voc")
    folder = tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    return tmp_path / "voc", folder, (folder / "ImageSets" / "Main" / "test.txt").read_text().split()[0]


def coco_copy(root, tmp_path, change):
    """The COCO test JSON with ``change(data)`` applied, written to tmp_path/instances.json."""
    data = json.loads((root / "data" / "coco" / "annotations" / "instances_test.json").read_text())
    change(data)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return ["--coco-json", str(tmp_path / "instances.json"), "--coco-images", str(root / "data" / "coco" / "test")]


def fails(capsys, argv, *expected):
    """main(argv) ends with exit code 2 and one 'error:' message holding each of ``expected`` (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for text in expected:
        assert re.search(text, err), f"{text!r} not in {err!r}"
    return err


def no_maps(out):
    assert not list(out.rglob("*.npz")) if out.exists() else True


def explain(root, out, *extra, method="gradient"):
    return ["explain", method, "--classifier", str(root / "classifier"), "--out", str(out), "--no-progress", *extra]


def voc(root):
    return ["--voc", str(root / "data" / "voc")]


# --- explain ------------------------------------------------------------------------------------------------

def test_explain_out_is_a_file(root, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    fails(capsys, explain(root, tmp_path / "afile", *voc(root)), "--out .*afile is a file; expected a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_explain_corrupt_jpeg_named(root, tmp_path, capsys):
    voc_root, folder, first = voc_copy(root, tmp_path)
    (folder / "JPEGImages" / f"{first}.jpg").write_bytes(b"not a jpeg")
    fails(capsys, explain(root, tmp_path / "out", "--voc", str(voc_root)),
          f"cannot read image .*JPEGImages/{first}.jpg", "expected a readable JPEG/PNG image")
    no_maps(tmp_path / "out")


def test_explain_voc_coordinate_not_a_number(root, tmp_path, capsys):
    voc_root, folder, first = voc_copy(root, tmp_path)
    xml = folder / "Annotations" / f"{first}.xml"
    xml.write_text(re.sub(r"<xmin>\d+</xmin>", "<xmin>abc</xmin>", xml.read_text(), count=1))
    fails(capsys, explain(root, tmp_path / "out", "--voc", str(voc_root)),
          f"Annotations/{first}.xml: <xmin> inside <bndbox> is 'abc'; expected a number")
    no_maps(tmp_path / "out")


def test_explain_voc_box_wholly_outside_refused(root, tmp_path, capsys):
    voc_root, folder, first = voc_copy(root, tmp_path)
    xml = folder / "Annotations" / f"{first}.xml"
    text = re.sub(r"<xmin>\d+</xmin>", "<xmin>900</xmin>", xml.read_text(), count=1)
    xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>950</xmax>", text, count=1))
    fails(capsys, explain(root, tmp_path / "out", "--voc", str(voc_root)),
          f"{first}.xml: box .* lies wholly outside its 48x48 \\(WxH\\) image; expected a box that overlaps")


def test_explain_voc_box_partly_outside_clipped_with_a_warning(root, tmp_path, capsys):
    voc_root, folder, first = voc_copy(root, tmp_path)
    xml = folder / "Annotations" / f"{first}.xml"
    xml.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>5000</xmax>", xml.read_text(), count=1))
    assert main(explain(root, tmp_path / "out", "--voc", str(voc_root))) == 0
    err = capsys.readouterr().err
    assert re.search(f"warning: .*{first}.xml: box .*4999.0.* reaches outside its 48x48 .* clipped to .*47.0", err)
    sample = VOCDataset(voc_root, "test", CLASSES)[0]
    assert float(sample.boxes[:, 2].max()) <= 47.0


def test_explain_classifier_description_without_arch(root, tmp_path, capsys):
    shutil.copytree(root / "classifier", tmp_path / "c")
    description = json.loads((tmp_path / "c" / "classifier.json").read_text())
    del description["arch"]
    (tmp_path / "c" / "classifier.json").write_text(json.dumps(description))
    fails(capsys, ["explain", "gradient", "--classifier", str(tmp_path / "c"), *voc(root), "--out", str(tmp_path / "o")],
          "classifier description .*c/classifier.json lacks 'arch'; expected a JSON object with keys 'arch'")
    assert not (tmp_path / "o").exists()


def test_explain_classifier_description_malformed(root, tmp_path, capsys):
    shutil.copytree(root / "classifier", tmp_path / "c")
    (tmp_path / "c" / "classifier.json").write_text('{"arch": "small_cnn",')
    fails(capsys, ["explain", "gradient", "--classifier", str(tmp_path / "c"), *voc(root), "--out", str(tmp_path / "o")],
          "classifier description .*c/classifier.json is not valid JSON: .*line 1")


@pytest.mark.parametrize("key, value, expected", [
    ("arch", 5, "arch is 5; expected a zoo name or torchvision:NAME"),
    ("num_classes", 9, "class_names is .*; expected a list of 9 names \\(num_classes\\) or \\[\\]"),
    ("class_names", "abc", "class_names is abc; expected a list of 6 names")])
def test_explain_classifier_description_of_the_wrong_types(root, tmp_path, capsys, key, value, expected):
    shutil.copytree(root / "classifier", tmp_path / "c")
    description = json.loads((tmp_path / "c" / "classifier.json").read_text())
    description[key] = value
    (tmp_path / "c" / "classifier.json").write_text(json.dumps(description))
    fails(capsys, ["explain", "gradient", "--classifier", str(tmp_path / "c"), *voc(root), "--out", str(tmp_path / "o")],
          f"c/classifier.json: {expected}")


def test_explain_setting_that_is_not_yaml_is_a_usage_error(root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(explain(root, tmp_path / "out", *voc(root), "--set", "reduce=[1"))
    assert exit_.value.code == 2
    assert "--set: reduce: the value '[1' is not valid YAML" in capsys.readouterr().err


def test_explain_missing_classifier(root, tmp_path, capsys):
    fails(capsys, ["explain", "gradient", "--classifier", str(tmp_path / "none"), *voc(root), "--out", str(tmp_path)],
          "none.* is neither a classifier folder")


def test_explain_coco_bbox_not_a_list(root, tmp_path, capsys):
    args = coco_copy(root, tmp_path, lambda d: d["annotations"][0].update(bbox="oops"))
    fails(capsys, explain(root, tmp_path / "out", *args),
          "instances.json: annotation 1 has bbox 'oops'; expected \\[x, y, width, height\\]")


def test_explain_coco_string_image_id(root, tmp_path, capsys):
    args = coco_copy(root, tmp_path, lambda d: d["images"][0].update(id="abc"))
    fails(capsys, explain(root, tmp_path / "out", *args),
          "instances.json: image id 'abc' .* is not an integer; expected COCO's integer image ids")


def test_explain_coco_malformed_json(root, tmp_path, capsys):
    (tmp_path / "instances.json").write_text('{"images": [')
    fails(capsys, explain(root, tmp_path / "out", "--coco-json", str(tmp_path / "instances.json"), "--coco-images",
                          str(tmp_path)), "COCO annotation file .*instances.json is not valid JSON")


def test_explain_coco_without_images_folder(root, tmp_path, capsys):
    fails(capsys, explain(root, tmp_path / "out", "--coco-json", str(tmp_path / "x.json")),
          "--coco-json needs --coco-images")


def test_explain_unknown_hyper_parameter(root, tmp_path, capsys):
    fails(capsys, explain(root, tmp_path / "out", *voc(root), "--set", "strength=2", method="gradcam"),
          "no hyper-parameter\\(s\\) strength; it takes: layer=")


def test_explain_unknown_method(root, tmp_path, capsys):
    fails(capsys, explain(root, tmp_path / "out", *voc(root), method="nosuch"), "unknown method\\(s\\) nosuch; registered")


@pytest.mark.parametrize("flag", ["--image-size", "--batch-size"])
def test_explain_sizes_below_one(root, tmp_path, capsys, flag):
    fails(capsys, explain(root, tmp_path / "out", *voc(root), flag, "-5"), f"{flag} must be at least 1, got -5")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, options, expected", [
    ("integrated_gradients", ["--set", "steps=ten"],
     "integrated_gradients': steps must be int \\(default 50\\), got 'ten'"),  # a hyper-parameter of the wrong type
    ("gradcam", ["--image-size", "8"],  # images smaller than the classifier takes
     "images of 8x8 do not fit this classifier; expected at least 16x16 .*layer 'auto' is a single cell"),
    ("occlusion", ["--set", "window=64"],  # an occlusion window larger than the image
     "occlusion window 64 px covers the whole 48x48 image .*expected window < 48"),
])
def test_explain_refuses_settings_that_do_not_fit_and_writes_no_maps(root, tmp_path, capsys, method, options,
                                                                    expected):
    fails(capsys, explain(root, tmp_path / "out", *voc(root), *options, method=method), expected)
    no_maps(tmp_path / "out")


def test_explain_missing_voc_root_and_no_source(root, tmp_path, capsys):
    fails(capsys, explain(root, tmp_path / "out", "--voc", str(tmp_path / "none")), "VOC root .*none does not exist")
    fails(capsys, explain(root, tmp_path / "out"), "give exactly one of --voc ROOT")


def test_explain_traversal_in_a_split_writes_nothing_outside_out(root, tmp_path, capsys):
    voc_root, folder, first = voc_copy(root, tmp_path)
    outside = folder.parent / "outside"  # Annotations/../../outside/x.xml
    outside.mkdir()
    shutil.copy(folder / "Annotations" / f"{first}.xml", outside / "x.xml")
    shutil.copy(folder / "JPEGImages" / f"{first}.jpg", outside / "x.jpg")
    (folder / "ImageSets" / "Main" / "test.txt").write_text("../../outside/x\n")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "inner" / "out"
    assert main(explain(root, out, "--voc", str(voc_root))) == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.resolve().is_relative_to(out.resolve()) or p == out.parent for p in created)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "/" not in manifest["images"]["../../outside/x"]["file"].removeprefix("maps/")


def test_explain_read_only_output_folder(root, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, explain(root, locked / "out", *voc(root)), "locked/out.*: Permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("code, expected", [(errno.ENOSPC, "No space left on device; free some space"),
                                            (errno.EROFS, "Read-only file system; expected a writable folder"),
                                            (errno.EACCES, "Permission denied; expected a file or folder you may")])
def test_explain_full_or_read_only_disk(root, tmp_path, capsys, monkeypatch, code, expected):
    def refuse(path, text):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr("saliencylab.bench.export.write_atomic", refuse)
    fails(capsys, explain(root, tmp_path / "out", *voc(root)), f"out/manifest.json: {expected}")


def test_debug_shows_the_traceback_and_bugs_are_not_user_errors(root, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--image-size must be at least 1"):
        main(["--debug", *explain(root, tmp_path / "out", *voc(root), "--image-size", "0")])

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("saliencylab.bench.export.explain_to_disk", broken)
    with pytest.raises(KeyError, match="a bug"):  # a programming error keeps its traceback: not exit code 2
        main(explain(root, tmp_path / "out", *voc(root)))


# --- training commands --------------------------------------------------------------------------------------

def train_classifier(root, tmp_path, *extra):
    return ["train-classifier", *voc(root), "--out", str(tmp_path / "out"), "--image-size", "32", "--set", "width=4",
            "--device", "cpu", "--no-progress", *extra]


def test_train_classifier_malformed_yaml_preset(root, tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("classifier: [unclosed")
    fails(capsys, train_classifier(root, tmp_path, "--preset", str(tmp_path / "mine.yaml")),
          "mine.yaml is not valid YAML")
    assert not (tmp_path / "out").exists()


def test_train_classifier_unknown_preset_and_setting(root, tmp_path, capsys):
    fails(capsys, train_classifier(root, tmp_path, "--preset", "nosuch"), "no classifier preset 'nosuch'; known presets")
    fails(capsys, train_classifier(root, tmp_path, "--set", "lrr=1"), "--set lrr: not classifier settings; known: ")


def test_train_classifier_missing_split_and_zero_epochs(root, tmp_path, capsys):
    fails(capsys, train_classifier(root, tmp_path, "--train-split", "nosuch"),
          "split file .*nosuch.txt not found; available splits: \\['test', 'train', 'val'\\]")
    fails(capsys, train_classifier(root, tmp_path, "--epochs", "0"), "--epochs must be at least 1, got 0")
    assert not (tmp_path / "out").exists()


def test_train_classifier_imagenet_json_needs_val_json(root, tmp_path, capsys):
    fails(capsys, ["train-classifier", "--train-json", str(root / "inet" / "imagenet" / "metadata" / "train.json"),
                   "--out", str(tmp_path / "out")], "--train-json needs --val-json")


def test_train_explainer_bad_inputs(root, tmp_path, capsys):
    command = ["train-explainer", *voc(root), "--out", str(tmp_path / "out"), "--no-progress"]
    fails(capsys, [*command, "--classifier", str(tmp_path / "none")], "none.* is neither a classifier folder")
    fails(capsys, [*command, "--classifier", str(root / "classifier"), "--set", "widht=4"],
          "--set widht: not explainer settings; known: ")
    assert not (tmp_path / "out").exists()


def test_train_masker_metadata_missing_or_malformed(root, tmp_path, capsys):
    command = ["train-masker", "--classifier", str(root / "classifier"), "--out", str(tmp_path / "out")]
    fails(capsys, [*command, "--train-json", str(tmp_path / "none.json")], "metadata file .*none.json not found")
    (tmp_path / "bad.json").write_text("[1,")
    fails(capsys, [*command, "--train-json", str(tmp_path / "bad.json")],
          "metadata file .*bad.json is not valid JSON: Expecting value: line 1")
    fails(capsys, [*command, "--train-json", str(tmp_path / "bad.json"), "--examples-per-class", "0"],
          "--examples-per-class must be at least 1")


# --- sanity, bench, reproduce, synthetic, presets -------------------------------------------------------------

def evaluation(root, *extra):
    meta = root / "inet" / "imagenet" / "metadata"
    return ["--classifier", str(root / "classifier"), "--val-json", str(meta / "val.json"), *extra]


def test_sanity_bad_inputs(root, tmp_path, capsys):
    data = ["--classifier", str(root / "classifier"), "--data",
            f"imagenet:{root / 'inet' / 'imagenet' / 'metadata' / 'val.json'}"]
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    fails(capsys, ["sanity", "gradient", *data, "--images", "100000", *out],
          "--images 100000, but --data imagenet:.*val.json has 6 images; pass --images 6 or fewer")
    fails(capsys, ["sanity", "gradient", *data, "--images", "0", *out], "--images must be at least 1")
    fails(capsys, ["sanity", "gradient", *data, "--mode", "data", *out], "--mode data compares two sets")
    assert not (tmp_path / "out").exists()


def test_bench_speed_bad_inputs(capsys):
    fails(capsys, ["bench", "speed", "--methods", "nope"], "unknown method\\(s\\) nope")
    fails(capsys, ["bench", "speed", "--batch", "0"], "--batch must be at least 1, got 0")


def test_bench_wsol_missing_boxes(root, tmp_path, capsys):
    fails(capsys, ["bench", "wsol", "gradcam", *evaluation(root), "--boxes", str(tmp_path / "none.json"), "--out",
                   str(tmp_path / "out"), "--no-progress"], "box file .*none.json not found")


def test_bench_run_bad_inputs(root, tmp_path, capsys):
    command = ["bench", "run", "gradient", "--classifier", str(root / "classifier"), "--out", str(tmp_path / "out"),
               "--no-progress"]
    fails(capsys, [*command, "--data", f"voc:{root / 'data' / 'voc'}", "--data-set", "split=test", "--metrics", "nope"],
          "unknown metric\\(s\\) nope; registered metrics: ")
    fails(capsys, [*command, "--data", f"nope:{root}"], "unknown dataset format 'nope'; known formats: voc, coco")
    fails(capsys, [*command, "--data", f"voc:{tmp_path / 'none'}"], "VOC root .*none does not exist")
    assert not list((tmp_path / "out").rglob("*.json")) if (tmp_path / "out").exists() else True


def test_bench_run_malformed_shard_is_a_usage_error(root, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "run", "gradient", "--classifier", str(root), "--data", "voc:x", "--out", str(tmp_path),
              "--shard", "2/2"])
    assert exit_.value.code == 2


def test_bench_merge_of_a_folder_without_a_run(tmp_path, capsys):
    fails(capsys, ["bench", "merge", str(tmp_path / "merged"), str(tmp_path / "none")],
          "none holds no benchmark run \\(run.json missing\\)")


def test_reproduce_bad_options(tmp_path, capsys):
    fails(capsys, ["reproduce", "001", "--set", "rise:num_masks=5", "--out", str(tmp_path / "r")],
          "--set and --explainer-epochs apply to paper 000 only, --images to 000 and 004")
    fails(capsys, ["reproduce", "000", "--images", "0", "--out", str(tmp_path / "r")], "--images must be at least 1")
    assert not (tmp_path / "r").exists()


def test_synthetic_and_demo_bad_options(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    fails(capsys, ["synthetic", "--out", str(tmp_path / "afile")], "is a file; expected a folder")
    fails(capsys, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "0"], "--epochs must be at least 1")
    assert not (tmp_path / "demo").exists()


def test_presets_unknown_name(capsys):
    fails(capsys, ["presets", "explainer", "nosuch"], "no explainer preset 'nosuch'; known presets: ")


# --- the Python API ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_check_images_refuses_nan_inf_and_out_of_range(value):
    images = torch.rand(1, 3, 8, 8)
    images[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match="finite values in \\[0,1\\]"):
        check_images(images)


def test_float64_images_are_converted():
    classifier = build_classifier("small_cnn", 4, width=4)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    maps = methods.build("gradcam", classifier).attribute(images, [0, 1])
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, methods.build("gradcam", classifier).attribute(images.float(), [0, 1]))


def test_minimum_size_is_probed_once_per_size_and_named():
    classifier = build_classifier("small_cnn", 4, width=4)  # three 2x poolings: a 2x2 grid needs 16 px
    assert classifier.minimum_size("auto") == 16 and classifier.fits(16, 16, "auto")
    assert not classifier.fits(15, 15, "auto") and classifier.fits(8, 8)  # the forward alone works at 8
    assert methods.build("gradient", classifier).attribute(torch.rand(1, 3, 8, 8), 0).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="images of 12x40 do not fit this classifier; expected at least 16x16"):
        methods.build("gradcam", classifier).attribute(torch.rand(1, 3, 12, 40), 0)


def test_occlusion_window_covering_the_image_refused_but_one_side_shrunk():
    classifier = build_classifier("small_cnn", 4, width=4)
    with pytest.raises(ValueError, match="occlusion window 32 px covers the whole 32x32 image"):
        methods.build("occlusion", classifier, window=32, stride=16).attribute(torch.rand(1, 3, 32, 32), 0)
    maps = methods.build("occlusion", classifier, window=24, stride=8).attribute(torch.rand(1, 3, 16, 48), 0)
    assert maps[0, 0].std() > 0


@pytest.mark.parametrize("settings, expected", [({"steps": "ten"}, "steps must be int"),
                                                ({"steps": 2.5}, "steps must be int"),
                                                ({"blur_sigma": True}, "blur_sigma must be float"),
                                                ({"method": 3}, "method must be str")])
def test_hyper_parameter_types(settings, expected):
    with pytest.raises(ValueError, match=expected):
        methods.build("integrated_gradients", build_classifier("small_cnn", 4, width=4), **settings)


@pytest.mark.parametrize("metric", [F.pointing_game, F.pointing_game_plain])
@pytest.mark.parametrize("fill", [0.0, 0.7])
def test_pointing_games_are_nan_for_an_all_zero_or_constant_map(metric, fill):
    maps = torch.full((1, 1, 20, 20), fill)
    gt = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    gt[0, 0, :4, :4] = True
    assert torch.isnan(metric(maps, gt)).all()
    maps[0, 0, 2, 2] = 1.0
    assert metric(maps, gt).item() == 1.0


def test_clip_boxes_exact_values_and_refusal():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert clip_boxes([[-3.0, 2.0, 60.0, 9.0], [1.0, 1.0, 5.0, 5.0]], (10, 50), "a.xml") == \
            [[0.0, 2.0, 49.0, 9.0], [1.0, 1.0, 5.0, 5.0]]
    assert len(caught) == 1 and "a.xml" in str(caught[0].message)
    with pytest.raises(ValueError, match="b.json: box .* lies wholly outside its 50x10"):
        clip_boxes([[50.0, 0.0, 60.0, 5.0]], (10, 50), "b.json")


def test_coco_dataset_refuses_negative_box_sides(root, tmp_path):
    coco_copy(root, tmp_path, lambda d: d["annotations"][0].update(bbox=[1, 1, -4, 3]))
    with pytest.raises(ValueError, match="annotation 1 has bbox \\[1, 1, -4, 3\\]; expected .* width and height >= 0"):
        COCODataset(root / "data" / "coco" / "test", tmp_path / "instances.json")


def test_voc_size_must_be_positive(root, tmp_path):
    voc_root, folder, first = voc_copy(root, tmp_path)
    xml = folder / "Annotations" / f"{first}.xml"
    xml.write_text(re.sub(r"<width>\d+</width>", "<width>0</width>", xml.read_text()))
    with pytest.raises(ValueError, match=f"{first}.xml: <size> is 0x48 \\(WxH\\); expected positive sides"):
        VOCDataset(voc_root, "test", CLASSES)[0]


def test_read_json_names_the_file_and_missing_keys(tmp_path):
    (tmp_path / "d.json").write_text('{"arch": "x"}')
    with pytest.raises(ValueError, match="thing .*d.json lacks 'width'; expected a JSON object with keys 'arch', 'width'"):
        read_json(tmp_path / "d.json", "thing", ("arch", "width"))
    with pytest.raises(FileNotFoundError, match="thing .*none.json not found"):
        read_json(tmp_path / "none.json", "thing")
    (tmp_path / "e.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="thing .*e.json is not valid JSON"):
        read_json(tmp_path / "e.json", "thing")
