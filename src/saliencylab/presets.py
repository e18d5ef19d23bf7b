"""YAML presets of the training schemes, shipped as package data: saliencylab/configs/<scheme>/<name>.yaml.

A preset of scheme S has the sections ``data`` (``image_size``, ``batch_size``; optional ``dataset`` and
``class_names``),
``S`` (keyword arguments of S's fit function) and optionally ``classifier`` (``arch``, ``num_classes``:
the classifier the settings were made for). Anything else is rejected with the file's name.
"""
from __future__ import annotations

import importlib
import inspect
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python >= 3.11; annotations only

FIT = {"classifier": ("saliencylab.training.classifier", "fit_classifier", "ClassifierModule"),
       "explainer": ("saliencylab.training.explainer", "fit_explainer", "ExplainerModule"),
       "masker": ("saliencylab.training.masker", "fit_masker", "MaskerModule"),
       "consistent": ("saliencylab.training.consistency", "fit_consistent", "ConsistencyModule"),
       "inmodel": ("saliencylab.training.inmodel", "fit_inmodel", "InModelModule")}
"""scheme -> (module, fit function, LightningModule its extra keyword arguments go to)."""

RUNTIME = {"classifier_dir", "progress", "accelerator", "callbacks", "ckpt_path", "generator"}
"""Keyword parameters of the fit functions that the caller passes, not a preset."""

SECTIONS = {"data": ({"image_size", "batch_size"}, {"dataset", "class_names"}), "classifier": (set(), {"arch", "num_classes"})}
"""Sections other than the training one: name -> (required keys, optional keys)."""


def _fit(scheme: str) -> tuple[str, str, str]:
    """FIT[scheme], or a ValueError naming the known schemes."""
    if scheme not in FIT:
        raise ValueError(f"unknown preset scheme {scheme!r}; known schemes: {', '.join(FIT)}")
    return FIT[scheme]


def _scheme_dir(scheme: str) -> Traversable:
    _fit(scheme)
    return files("saliencylab") / "configs" / scheme


def names(scheme: str) -> list[str]:
    """Names of the presets shipped for ``scheme`` ("explainer" or "masker")."""
    return sorted(p.name.removesuffix(".yaml") for p in _scheme_dir(scheme).iterdir() if p.name.endswith(".yaml"))


def path(scheme: str, name_or_path: str | Path) -> Traversable | Path:
    """The file of a preset: ``name_or_path`` when it is a file, else the shipped preset of that name."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    shipped = _scheme_dir(scheme) / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise FileNotFoundError(f"no {scheme} preset {str(name_or_path)!r}; known presets: {', '.join(names(scheme))}")
    return shipped


def keywords(scheme: str) -> set[str]:
    """Keys the training section of a ``scheme`` preset may hold: keyword parameters of its fit function
    and of the module it passes the others to, less RUNTIME (imports the training module, so Lightning)."""
    module_name, fit_name, module_class = _fit(scheme)
    module = importlib.import_module(module_name)
    fit = inspect.signature(getattr(module, fit_name)).parameters.values()
    init = inspect.signature(getattr(module, module_class)).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return ({p.name for p in fit if p.kind == inspect.Parameter.KEYWORD_ONLY}
            | {p.name for p in init if p.kind in named}) - RUNTIME


def _check_keys(where: str, keys: set[str], required: set[str], known: set[str], noun: str = "key") -> None:
    """ValueError naming ``where`` (the file, the section) when ``keys`` miss ``required`` or leave ``known``."""
    unknown, missing = sorted(keys - known), sorted(required - keys)
    problems = ([f"unknown {noun}(s) {', '.join(unknown)}"] if unknown else []) + \
        ([f"missing {noun}(s) {', '.join(missing)}"] if missing else [])
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}; known {noun}s: {', '.join(sorted(known))}")


def load(scheme: str, name_or_path: str | Path) -> dict:
    """A preset of ``scheme`` as a dict of sections, checked (ValueError naming the file otherwise).

    ``name_or_path``: a YAML file, or a name in :func:`names`. ``preset[scheme]`` holds keyword
    arguments of the scheme's fit function (``fit_explainer`` / ``fit_masker``).
    """
    source = path(scheme, name_or_path)
    try:
        preset = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"preset {source} is not valid YAML: {err}") from None
    known = {**SECTIONS, scheme: (set(), keywords(scheme))}
    if not isinstance(preset, dict):
        raise ValueError(f"preset {source} must be a mapping of sections {', '.join(known)}")
    _check_keys(f"preset {source}", set(preset), {"data", scheme}, set(known), "section")
    for section, value in preset.items():
        if not isinstance(value, dict):
            raise ValueError(f"preset {source}, section {section!r}: expected a mapping of keys, got {value!r}")
        required, optional = known[section]
        _check_keys(f"preset {source}, section {section!r}", set(value), required, required | optional)
    return preset
