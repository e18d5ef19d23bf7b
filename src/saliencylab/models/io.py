"""Safe weight files: safetensors or ``torch.load(weights_only=True)``; never arbitrary unpickling."""
from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saliencylab.files import atomic_path, read_json


def load_state_dict(path: str | Path, prefix: str = "") -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, a plain ``.pt``/``.pth`` state dict or a Lightning ``.ckpt``.

    Keys starting with ``prefix`` keep only their remainder (e.g. ``"classifier.model."`` for a
    checkpoint of a training module); other keys are dropped when a prefix is given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, SafetensorError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights file {path}: expected a safetensors file or a torch state "
                         f"dict saved with torch.save ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"weights file {path} has no keys starting with {prefix!r}")
    return state


def save_state_dict(state: dict[str, Tensor], path: str | Path) -> Path:
    """Write a state dict as safetensors (atomically: a partial file never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    return path


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load the state dict in ``path`` (see :func:`load_state_dict`) into ``model``, strictly.

    A Lightning checkpoint's keys (``model.fc.weight``, ``classifier.model.fc.weight``) fit once the
    prefix before the model's own first key is dropped. ``what`` names the model in the ValueError
    that lists missing and unexpected keys and mismatched shapes.
    """
    state = load_state_dict(path)
    own = model.state_dict()
    first = next(iter(own), None)
    if first is not None and first not in state:
        prefix = next((k[:-len(first)] for k in state if k.endswith("." + first)), "")
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    problems = {
        "missing keys": [k for k in own if k not in state],
        "unexpected keys": [k for k in state if k not in own],
        "shapes (file vs model)": [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                                   if k in state and state[k].shape != v.shape],
    }
    found = [f"{label}: {', '.join(items[:4])}{f' and {len(items) - 4} more' if len(items) > 4 else ''}"
             for label, items in problems.items() if items]
    if found:
        raise ValueError(f"weights file {path} does not fit {what}: {'; '.join(found)}")
    model.load_state_dict(state)


def load_described_network(out_dir: str | Path, stem: str, build: Callable[[dict], nn.Module],
                           trained_by: str) -> tuple[nn.Module, dict]:
    """Rebuild a network saved as ``out_dir/{stem}.json`` (its description) + ``{stem}.safetensors``.

    ``build(description)`` returns the untrained network; ``trained_by`` names the function that
    writes such a directory (for the error message). Returns the network in eval mode and the description.
    """
    out_dir = Path(out_dir)
    description_file = out_dir / f"{stem}.json"
    if not description_file.is_file():
        raise FileNotFoundError(f"{description_file} not found: train a {stem} with {trained_by} first")
    description = read_json(description_file, f"{stem} description")
    network = build(description)
    load_weights(network, out_dir / f"{stem}.safetensors", f"the {stem} described in {description_file}")
    return network.eval(), description
