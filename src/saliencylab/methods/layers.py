"""Feature-layer outputs as (B,C,h,w) grids: CNN maps, channels-last maps (Swin) and ViT/DeiT tokens.

A CAM method captures the raw output of one module and its gradient, then reads both through
:func:`to_grid`, so the gradient is always reshaped exactly like the activation. The layout of a
layer is ``Classifier.layer_layout(name)``: ``"auto"`` (default) infers it from the output's
dimensions and the model's attributes; ``"nchw"``, ``"nhwc"`` or ``"tokens"`` force it
(``Classifier(..., layouts={"<layer name or path>": "tokens"})``).
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from saliencylab.models.classifier import LAYOUTS


def infer_layout(output: Tensor, model: nn.Module) -> str:
    """``"tokens"`` for (B,N,D); for 4D ``"nhwc"`` when the model says so (timm's ``output_fmt="NHWC"``, Swin), else ``"nchw"``."""
    if output.dim() == 3:
        return "tokens"
    if output.dim() == 4:
        return "nhwc" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "nchw"
    raise ValueError(f"a CAM layer must output a (B,C,h,w) map, a channels-last (B,h,w,C) map or (B,N,D) tokens, "
                     f"got shape {tuple(output.shape)}")


def token_grid(tokens: int, model: nn.Module) -> tuple[int, int, int]:
    """(prefix tokens, h, w) for a sequence of ``tokens``: timm's ``num_prefix_tokens`` (class and
    distillation tokens) come first; the patches form ``patch_embed.grid_size`` or else a square."""
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        prefix = tokens - math.isqrt(tokens) ** 2  # no attribute: the tokens beyond the largest square
    patches = tokens - prefix
    grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", ()) or ())
    if len(grid) == 2 and grid[0] * grid[1] == patches:
        return prefix, int(grid[0]), int(grid[1])
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"cannot lay {patches} patch tokens (after {prefix} prefix tokens) on a grid: not a square "
                         "and the model's patch_embed.grid_size does not match; use a square input")
    return prefix, side, side


def to_grid(output: Tensor, layout: str, model: nn.Module) -> Tensor:
    """A layer output (or its gradient) as a (B,C,h,w) grid; ``layout`` one of LAYOUTS."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = infer_layout(output, model)
    expected_dims = 3 if layout == "tokens" else 4
    if output.dim() != expected_dims:
        raise ValueError(f"layout {layout!r} needs a {expected_dims}D layer output, got shape {tuple(output.shape)}")
    if layout == "nchw":
        return output
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    prefix, height, width = token_grid(output.shape[1], model)
    return output[:, prefix:].transpose(1, 2).reshape(output.shape[0], output.shape[2], height, width)
