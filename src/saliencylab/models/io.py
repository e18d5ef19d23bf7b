"""Safe weight files: safetensors or ``torch.load(weights_only=True)``; never arbitrary unpickling."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


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
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return path
