"""Figures for evaluation reports: accuracy curves (matplotlib, optional) and match drawings (OpenCV only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["draw_matches", "plot_accuracy_curves"]

_GREEN = (0, 200, 0)  # BGR
_RED = (0, 0, 255)
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions


def plot_accuracy_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "threshold [px]",
    ylabel: str = "accuracy",
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """Write a PNG with one line per method: ``curves = {label: (thresholds (T,), values (T,))}``.

    Needs matplotlib (optional dependency, ``pip install matcher[eval]``); uses the Agg canvas through
    the object-oriented API, so it never touches pyplot's global state or the user's backend.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_accuracy_curves needs matplotlib: pip install 'matcher[eval]' (or matplotlib)"
        ) from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(5.0, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (x, y) in curves.items():
        axes.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker="o", ms=3, label=label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    return path


def _to_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"images must be (H, W) or (H, W, 3), got shape {image.shape}")


def draw_matches(
    image1: np.ndarray,
    image2: np.ndarray,
    xy1: np.ndarray,
    xy2: np.ndarray,
    inlier_mask: np.ndarray | None,
    path: str | Path,
    max_draw: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Write a side-by-side PNG of matches: inliers green, rejected matches red (drawn underneath).

    image1, image2: (H, W) or (H, W, 3) uint8 in OpenCV's BGR order (as from cv2.imread).
    xy1, xy2: (M, 2) pixel coordinates (OpenCV centres); inlier_mask: (M,) bool or None (all inliers).
    At most ``max_draw`` matches are drawn (a seeded random subset; non-finite points are skipped). Returns the canvas (H, W1 + W2, 3).
    """
    left, right = _to_bgr(image1), _to_bgr(image2)
    xy1 = np.asarray(xy1, dtype=np.float64).reshape(-1, 2)
    xy2 = np.asarray(xy2, dtype=np.float64).reshape(-1, 2)
    if len(xy1) != len(xy2):
        raise ValueError(f"xy1 and xy2 differ in length: {len(xy1)} != {len(xy2)}")
    mask = np.ones(len(xy1), bool) if inlier_mask is None else np.asarray(inlier_mask, bool).ravel()
    if len(mask) != len(xy1):
        raise ValueError(f"inlier_mask has {len(mask)} entries for {len(xy1)} matches")
    height = max(left.shape[0], right.shape[0])
    canvas = np.zeros((height, left.shape[1] + right.shape[1], 3), np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] :] = right
    keep = np.flatnonzero(np.isfinite(xy1).all(axis=1) & np.isfinite(xy2).all(axis=1))
    if len(keep) > max_draw:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_draw, replace=False))
    offset = np.array([left.shape[1], 0.0])
    thickness = max(1, round(height / 800))
    for inlier_pass, colour in ((False, _RED), (True, _GREEN)):
        for i in keep[mask[keep] == inlier_pass]:
            p1 = tuple(int(v) for v in np.round(xy1[i] * (1 << _SHIFT)))
            p2 = tuple(int(v) for v in np.round((xy2[i] + offset) * (1 << _SHIFT)))
            cv2.line(canvas, p1, p2, colour, thickness, cv2.LINE_AA, _SHIFT)
            for p in (p1, p2):
                cv2.circle(canvas, p, (2 * thickness) << _SHIFT, colour, -1, cv2.LINE_AA, _SHIFT)
    label = f"{int(mask.sum())}/{len(mask)} inliers"
    font_scale = max(0.5, height / 1000)
    text_thickness = max(1, round(font_scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
    cv2.rectangle(canvas, (0, 0), (text_w + 12, text_h + baseline + 12), (0, 0, 0), -1)
    cv2.putText(canvas, label, (6, text_h + 6), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                text_thickness, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")
    return canvas
