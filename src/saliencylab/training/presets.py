"""YAML presets of the training schemes: configs/<scheme>/<name>.yaml with named sections."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"
"""configs/ of the source tree."""


def preset_names(scheme: str) -> list[str]:
    """Names of the presets in configs/<scheme>/ (e.g. scheme "explainer" or "masker")."""
    return sorted(p.stem for p in (CONFIGS_DIR / scheme).glob("*.yaml"))


def read_preset(name_or_path: str | Path, scheme: str, sections: Sequence[str]) -> dict:
    """A preset as a dict that has every one of ``sections`` as a mapping.

    ``name_or_path``: a YAML file, or a preset name in configs/<scheme>/.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIGS_DIR / scheme / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {scheme} preset {name_or_path!r}; known presets: "
                                f"{', '.join(preset_names(scheme))}")
    preset = yaml.safe_load(path.read_text())
    missing = [k for k in sections if not isinstance((preset or {}).get(k), dict)]
    if missing:
        raise ValueError(f"preset {path} lacks section(s) {missing}")
    return preset
