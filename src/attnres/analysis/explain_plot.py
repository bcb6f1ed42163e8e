"""Drawing for `explain`: heat-map overlays, the PNG files, and the grid with its titles and
colour bar.

Every map is drawn with one colour scale, jet from 0 to 1, shown by the grid's colour bar:
Grad-CAM maps arrive min-max scaled to [0, 1] per image (the `grad-cam` package's own
scaling, so their colours are relative), gates are sigmoid outputs in [0, 1] and are drawn
as they are, never rescaled, so a gate that barely varies looks uniform and its colour is
its value; the title of a gate's panel gives its range.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils import atomic_write

DISPLAY_SIZE = 160  # pixels per grid cell: small inputs (32 px) are shown enlarged
COLORMAP = "jet"    # matplotlib's name of the map `overlay` blends (OpenCV's COLORMAP_JET)
COLORBAR_LABEL = "map value: gates as they are (0-1); Grad-CAM scaled to 0-1 per image"


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of `(H, W, 3)` uint8 `image`, resized to `(size, size, 3)`."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float map to `(size, size)`."""
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """`heat` (H, W), values in [0, 1] (clipped), as a jet heat map blended half and half
    over `image` (H, W, 3) uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255,
                             np.clip(heat, 0.0, 1.0).astype(np.float32), use_rgb=True,
                             image_weight=0.5)


def save_png(array: np.ndarray, path: Path) -> None:
    """An `(H, W, 3)` uint8 array as a PNG, written atomically."""
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def label_line(true: str | None, pred: str, prob: float) -> str:
    """"true 3, pred 8 (0.91)"; "true ?" for images of unknown class."""
    return f"true {true if true is not None else '?'}, pred {pred} ({prob:.2f})"


def cam_title(model: str, true: str | None, pred: str, prob: float) -> str:
    return f"{model} Grad-CAM\n{label_line(true, pred, prob)}"


def gate_title(model: str, what: str, values: np.ndarray) -> str:
    """The title of a gate's panel: what it is and the range of its values."""
    return f"{model} {what}\ngate {float(values.min()):.2f}-{float(values.max()):.2f} of 0-1"


def draw_grid(images: Sequence[tuple[str, np.ndarray, str | None]],
              cells: Sequence[Sequence[tuple[str, np.ndarray]]], path: Path
              ) -> dict[str, Any]:
    """The grid PNG: a row per image `(name, (H, W, 3) uint8, true class or None)`, its
    panels `(title, RGB array)` after it, and one colour bar for every map. Returns the
    panels' titles row by row and the colour bar's label (what the picture says)."""
    # A bare Figure renders with Agg whatever pyplot backend the caller has chosen.
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rows, cols = len(images), 1 + max(len(c) for c in cells)
    fig = Figure(figsize=(2.3 * cols + 0.9, 2.7 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    titles: list[list[str]] = []
    for r, ((name, image, true), row_cells) in enumerate(zip(images, cells)):
        first = f"{name}\ntrue {true}" if true is not None else name
        panels = [(first, center_square(image, DISPLAY_SIZE)), *row_cells]
        titles.append([title for title, _ in panels])
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(panels):
                ax.imshow(panels[c][1])
                ax.set_title(panels[c][0], fontsize=8)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=COLORMAP), ax=axes,
                       shrink=min(0.9, 0.3 + 0.2 * rows), fraction=0.04, pad=0.02)
    bar.set_label(COLORBAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("Grad-CAM of the predicted class, and spatial attention gates (true and "
                 "predicted class, probability)", fontsize=10)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return {"titles": titles, "colorbar": COLORBAR_LABEL}


__all__ = ["COLORBAR_LABEL", "DISPLAY_SIZE", "center_square", "draw_grid", "gate_title",
           "overlay", "resize_map", "save_png"]
