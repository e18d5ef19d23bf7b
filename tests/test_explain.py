"""'saliencylab explain': per-image files plus a manifest, resumable after a hard kill."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from saliencylab import build_classifier
from saliencylab.bench.export import explain_to_disk, load_maps
from saliencylab.data import ImageFolder, VOCDataset
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, write_synthetic
from saliencylab.models.load import save_classifier


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    write_synthetic(root / "data", SyntheticConfig(image_size=48, train=2, val=2, test=120, seed=5), progress=False)
    torch.manual_seed(0)
    save_classifier(build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4), root / "classifier",
                    arch="small_cnn", width=4, data={"image_size": 48})
    return root


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "saliencylab.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_explain_survives_a_hard_kill_and_completes_on_rerun(project):
    out = project / "maps_hessian"
    args = ["explain", "gradient_hessian", "--classifier", str(project / "classifier"), "--voc",
            str(project / "data" / "voc"), "--out", str(out), "--batch-size", "1", "--set", "max_batch=1",
            "--no-progress"]
    process = run_cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest = out / "manifest.json"
        if manifest.is_file() and len(json.loads(manifest.read_text())["images"]) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    written = json.loads((out / "manifest.json").read_text())["images"]
    assert 3 <= len(written) < 120
    (out / "maps" / "000005.npz.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves
    finished = run_cli(*args)
    _, err = finished.communicate(timeout=600)
    assert finished.returncode == 0, err.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    dataset = VOCDataset(project / "data" / "voc", "test", CLASSES)
    assert sorted(manifest["images"]) == sorted(dataset.ids)
    assert not list((out / "maps").glob("*.tmp"))
    for image_id in dataset.ids:
        maps, targets = load_maps(out, image_id)
        assert maps.shape[1:] == (48, 48) and maps.shape[0] == targets.shape[0]
    for image_id, entry in written.items():  # finished work was kept, not recomputed differently
        with np.load(out / entry["file"]) as data:
            assert data["maps"].shape[0] == len(entry["targets"])


def test_explain_refuses_to_mix_settings_and_needs_labels_or_predictions(project, tmp_path):
    from saliencylab.models.load import load_trained_classifier

    classifier, _ = load_trained_classifier(project / "classifier")
    dataset = VOCDataset(project / "data" / "voc", "test", CLASSES)
    explain_to_disk("gradcam", classifier, dataset, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="holds maps of 'gradcam' with other settings"):
        explain_to_disk("gradient", classifier, dataset, tmp_path / "a", progress=False)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index in range(3):
        from PIL import Image
        Image.fromarray(np.full((48, 48, 3), 40 * index, dtype=np.uint8)).save(folder / f"p{index}.png")
    pictures = ImageFolder(folder, CLASSES)
    with pytest.raises(ValueError, match="targets='top1'"):
        explain_to_disk("gradient", classifier, pictures, tmp_path / "b", progress=False)
    manifest = explain_to_disk("gradient", classifier, pictures, tmp_path / "c", targets="top3", progress=False)
    assert sorted(manifest["images"]) == ["p0", "p1", "p2"]
    assert load_maps(tmp_path / "c", "p1")[0].shape == (3, 48, 48)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        ImageFolder(folder, CLASSES)[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere", CLASSES)


def test_image_ids_never_leave_the_output_folder(project, tmp_path):
    from saliencylab.bench.export import safe_file_name

    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4)
    dataset = ImageFolder(project / "data" / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages", CLASSES)
    dataset.ids = ["../../escaped", "/abs/path", "plain_name-1.x"] + dataset.ids[3:6]
    dataset.files = dataset.files[:6]
    out = tmp_path / "inner" / "out"
    manifest = explain_to_disk("gradcam", classifier, dataset, out, targets="top1", progress=False)
    written = {p.resolve() for p in tmp_path.rglob("*.npz")}
    assert written and all(p.is_relative_to(out.resolve()) for p in written)
    assert manifest["images"]["plain_name-1.x"]["file"] == "maps/plain_name-1.x.npz"
    assert safe_file_name("../x") != safe_file_name("..-x") and "/" not in safe_file_name("/abs/path")
    maps, _ = load_maps(out, "../../escaped")
    assert maps.shape[0] == 1
    manifest["images"]["../../escaped"]["file"] = "../../../elsewhere.npz"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lies outside"):
        load_maps(out, "../../escaped")
