"""Pictures: heat-map overlays, segmentation colours and labelled grids (numpy/PIL, no figures needed)."""
from __future__ import annotations

from collections.abc import Sequence

import io

import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from saliencylab.types import VOID

PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
], dtype=np.uint8)


def to_uint8_image(image: Tensor) -> np.ndarray:
    """(3,H,W) float in [0,1] -> (H,W,3) uint8."""
    return (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(heatmap: Tensor, cmap: str = "jet") -> np.ndarray:
    """(H,W) map in [0,1] -> (H,W,3) uint8 through a matplotlib colour map; NaN is drawn grey."""
    values = heatmap.detach().cpu().float().numpy()
    rgb = matplotlib.colormaps[cmap](np.nan_to_num(values, nan=0.0).clip(0, 1))[..., :3]
    rgb[np.isnan(values)] = 0.5
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a (H,W) map in [0,1] over an image (3,H,W) in [0,1]: (H,W,3) uint8."""
    base = to_uint8_image(image).astype(np.float32)
    return (alpha * colorize(heatmap, cmap) + (1 - alpha) * base).round().astype(np.uint8)


def segmentation_to_rgb(segmentation: Tensor) -> np.ndarray:
    """(H,W) class map with BACKGROUND / VOID -> (H,W,3) uint8: black background, white void."""
    seg = segmentation.detach().cpu().numpy()
    rgb = np.zeros((*seg.shape, 3), dtype=np.uint8)
    objects = seg >= 0
    rgb[objects] = PALETTE[seg[objects] % len(PALETTE)]
    rgb[seg == VOID] = 255
    return rgb


def draw_boxes(tile: np.ndarray, boxes: Tensor, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of a (H,W,3) uint8 tile with half-open boxes (N,4) x0,y0,x1,y1 in pixels outlined in ``color``."""
    picture = Image.fromarray(tile)
    draw = ImageDraw.Draw(picture)
    for x0, y0, x1, y1 in boxes.detach().cpu().reshape(-1, 4).tolist():
        if x1 > x0 and y1 > y0:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color)
    return np.asarray(picture).copy()


def grid(tiles: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str] = (),
         scale: int = 2, pad: int = 4) -> Image.Image:
    """Arrange rows of equally sized (h,w,3) uint8 tiles into one image, titles above the columns."""
    if not tiles or not tiles[0]:
        raise ValueError("grid() needs at least one row with one tile")
    h, w = tiles[0][0].shape[:2]
    h, w = h * scale, w * scale
    columns = max(len(row) for row in tiles)
    title_height = 14 if column_titles else 0
    canvas = Image.new("RGB", (columns * (w + pad) + pad, title_height + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(column_titles):
        draw.text((pad + col * (w + pad), 1), title[: max(w // 6, 4)], fill="black")
    for row, row_tiles in enumerate(tiles):
        for col, tile in enumerate(row_tiles):
            picture = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            canvas.paste(picture, (pad + col * (w + pad), title_height + pad + row * (h + pad)))
    return canvas


def matrix_heatmap(matrix: Tensor, row_labels: Sequence[str], column_labels: Sequence[str], title: str = "",
                   vmax: float = 100.0) -> Image.Image:
    """A (R,C) matrix as an annotated heat map (values printed in the cells; NaN left blank)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    values = matrix.detach().cpu().float().numpy()
    figure = Figure(figsize=(0.9 * len(column_labels) + 1.6, 0.55 * len(row_labels) + 1.2), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=vmax)
    axes.set_xticks(range(len(column_labels)), column_labels, rotation=45, ha="right")
    axes.set_yticks(range(len(row_labels)), row_labels)
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            axes.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if value < 0.6 * vmax else "black")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(buffer).convert("RGB")
