"""Presets: shipped names, checked sections and keys, the presets command, and a built wheel that has them."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from saliencylab import presets
from saliencylab.cli import main

REPO = Path(__file__).resolve().parents[1]

GOOD = {"data": {"image_size": 32, "batch_size": 4}, "explainer": {"arch": "light", "lr": 0.01}}


def _write(tmp_path: Path, preset: object) -> Path:
    file = tmp_path / "preset.yaml"
    file.write_text(yaml.safe_dump(preset))
    return file


def test_every_shipped_preset_loads(tmp_path):
    for scheme in presets.FIT:
        assert presets.names(scheme)
        for name in presets.names(scheme):
            preset = presets.load(scheme, name)
            assert {"data", scheme} <= set(preset) <= {"data", "classifier", scheme}
    with pytest.raises(ValueError, match="unknown preset scheme 'classifer'; known schemes: classifier, explainer, masker"):
        presets.names("classifer")
    with pytest.raises(ValueError, match="unknown preset scheme"):
        presets.load("classifer", _write(tmp_path, GOOD))


@pytest.mark.parametrize("preset,message", [
    ({**GOOD, "notes": {"a": 1}}, r"unknown section\(s\) notes; known sections: classifier, data, explainer"),
    ({"explainer": GOOD["explainer"]}, r"missing section\(s\) data"),
    ({**GOOD, "data": {"image_size": 32, "batch_size": 4, "augment": True}},
     r"section 'data': unknown key\(s\) augment; known keys: batch_size, class_names, dataset, image_size"),
    ({**GOOD, "data": {"image_size": 32}}, r"section 'data': missing key\(s\) batch_size"),
    ({**GOOD, "explainer": {"entropy_wieght": 1.0}}, r"section 'explainer': unknown key\(s\) entropy_wieght; .*tv_weight"),
    ({**GOOD, "explainer": {"accelerator": "cpu"}}, r"unknown key\(s\) accelerator"),  # the caller's, not a setting
    ({**GOOD, "classifier": "resnet50"}, r"section 'classifier': expected a mapping"),
    (["data", "explainer"], "must be a mapping of sections"),
])
def test_a_preset_with_unknown_or_missing_parts_is_refused_naming_the_file(preset, message, tmp_path):
    file = _write(tmp_path, preset)
    with pytest.raises(ValueError, match=f"preset {file}.*{message}"):
        presets.load("explainer", file)


def test_malformed_yaml_is_a_value_error_naming_the_file(tmp_path):
    file = tmp_path / "broken.yaml"
    file.write_text("data: [image_size: 32\n")
    with pytest.raises(ValueError, match=f"preset {file} is not valid YAML"):
        presets.load("masker", file)
    assert presets.load("explainer", _write(tmp_path, GOOD)) == GOOD


def test_presets_command_lists_and_prints_presets(capsys):
    assert main(["presets"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{s}: {', '.join(presets.names(s))}" for s in presets.FIT]
    assert main(["presets", "masker"]) == 0
    assert capsys.readouterr().out == f"masker: {', '.join(presets.names('masker'))}\n"
    assert main(["presets", "explainer", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Light explainer") and yaml.safe_load(out) == presets.load("explainer", "synthetic")
    assert main(["presets", "explainer", "nowhere"]) == 2
    assert "no explainer preset 'nowhere'; known presets: resnet50_coco" in capsys.readouterr().err


@pytest.mark.slow
def test_a_built_wheel_ships_the_presets(tmp_path):
    """Build the wheel from a copy of the source tree, install it --no-deps into a fresh venv that sees
    this environment's dependencies (not its src/), and read presets from outside the repository."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", source],
                   check=True)
    wheel = next((tmp_path / "dist").glob("saliencylab-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dependencies = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}  # this test's environment
    (Path(site) / "dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*command: object) -> str:
        return subprocess.run(command, cwd=outside, env=env, check=True, capture_output=True, text=True).stdout

    script = ("import sys, saliencylab; from saliencylab import presets; print(saliencylab.__file__); "
              "print(any(p.rstrip('/').endswith('src') for p in sys.path)); print(presets.names('explainer')); "
              "print(sorted(presets.load('masker', 'synthetic_fix')))")
    module, src_on_path, names, sections = run(python, "-c", script).splitlines()
    assert Path(module).is_relative_to(venv) and src_on_path == "False"
    assert names == str(presets.names("explainer")) and sections == "['classifier', 'data', 'masker']"
    printed = run(venv / "bin" / "saliencylab", "presets", "explainer", "synthetic")
    assert printed == (REPO / "src" / "saliencylab" / "configs" / "explainer" / "synthetic.yaml").read_text()
