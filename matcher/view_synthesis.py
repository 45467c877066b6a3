"""Affine view synthesis (ASIFT, Morel & Yu 2009): DoG keypoints of simulated oblique views, in original pixels.

A view of tilt ``t`` and longitude ``phi`` is the image rotated by ``phi`` (on a canvas that holds all of it),
blurred along x by a Gaussian of sigma ``0.8 * sqrt(t^2 - 1)`` (ASIFT's anti-aliasing) and shrunk along x by
``t``. The map from original to view pixels is one affine ``A = [M | b]`` (2x3), kept exactly, so keypoints
found on the view map back with ``A^-1``: a view keypoint with centre ``c'``, DoG sigma ``s'`` and orientation
``theta'`` has, in the original image, the centre ``M^-1 (c' - b)`` and the local affine frame
``M^-1 s' R(theta')``: an ellipse there, a circle in the view. Its descriptor can then be computed from the
original pixels through that frame (:func:`matcher.patches.lafs_from_keypoints` samples it), so the network
sees the same patch as on the view without the view's resampling losses.

Longitudes for a tilt ``t`` are ``0, step/t, 2 step/t, ... < 180`` degrees (ASIFT's ``step`` = 72): 5 views at
t = 2, 10 at t = 4, 20 at t = 8. The view's black border (outside the rotated image) is masked for the
detector, so no keypoints sit on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from matcher.config import DetectionConfig
from matcher.detect import Keypoints, detect_keypoints

__all__ = ["SyntheticView", "view_longitudes", "synthesize_view", "keypoints_to_original", "detect_on_views"]

ANTI_ALIAS = 0.8
"""ASIFT's anti-aliasing blur: sigma = ANTI_ALIAS * sqrt(t^2 - 1) along the compressed axis."""


@dataclass
class SyntheticView:
    """One simulated view: ``image`` (h, w) uint8, ``affine`` (2, 3) float64 original -> view pixels (pixel
    centres at integers in both), ``mask`` (h, w) uint8, 255 where the view shows the image."""

    tilt: float
    longitude: float
    image: np.ndarray
    affine: np.ndarray
    mask: np.ndarray


def view_longitudes(tilt: float, step: float = 72.0) -> list[float]:
    """Longitudes (degrees, [0, 180)) simulated for ``tilt``: multiples of ``step / tilt`` (a single 0 for t = 1)."""
    if tilt <= 1.0:
        return [0.0]
    delta = step / tilt
    return [k * delta for k in range(int(math.ceil(180.0 / delta - 1e-9)))]


def synthesize_view(gray: np.ndarray, tilt: float, longitude: float, mask: np.ndarray | None = None) -> SyntheticView:
    """Rotate ``gray`` (H, W) uint8 by ``longitude`` degrees (counter-clockwise on screen), blur and shrink x by ``tilt``.

    ``mask``: the image's own detection mask (H, W) uint8 (0: no keypoints), carried into the view.
    """
    h, w = gray.shape
    rotation = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), longitude, 1.0)
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    turned = corners @ rotation[:, :2].T + rotation[:, 2]
    rotation[:, 2] -= turned.min(axis=0)
    rw, rh = (int(math.ceil(v)) + 1 for v in turned.max(axis=0) - turned.min(axis=0))
    valid = np.full((h, w), 255, np.uint8) if mask is None else mask
    if longitude != 0.0:
        image = cv2.warpAffine(gray, rotation, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        valid = cv2.warpAffine(valid, rotation, (rw, rh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    else:
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        image, rw, rh = gray, w, h
    shrink = np.array([[1.0 / tilt, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if tilt > 1.0:
        sigma = ANTI_ALIAS * math.sqrt(tilt * tilt - 1.0)
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=1e-6)  # along x only
        vw = max(1, int(math.floor((rw - 1) / tilt)) + 1)
        image = cv2.warpAffine(image, shrink, (vw, rh), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
        valid = cv2.warpAffine(valid, shrink, (vw, rh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    # The border of the rotated image is an edge DoG responds to: keep detections a few pixels inside.
    valid = cv2.erode(valid, np.ones((7, 7), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    affine = _compose(shrink, rotation)
    return SyntheticView(float(tilt), float(longitude), image, affine, valid)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affines: x -> outer(inner(x))."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def keypoints_to_original(keypoints: Keypoints, affine: np.ndarray) -> Keypoints:
    """Keypoints detected on a view -> the same keypoints in the original image, with affine ``shapes``.

    Args:
        keypoints: N keypoints in the view's pixels (their ``shapes``, if any, are honoured).
        affine: (2, 3) original -> view pixels.

    Returns:
        N keypoints: centres ``M^-1 (c' - b)``, sigma ``s' sqrt|det M^-1|``, shapes ``M^-1 S'`` scaled to
        determinant 1 (``S'`` = the view frame's shape, ``R(orientation)`` when it has none), orientations
        the angle of each shape's first column. ``octaves`` are dropped (they describe the view's pyramid).
    """
    from matcher.affine_shape import orientations_from_shapes

    inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    linear = inverse[:, :2]
    xy = (keypoints.xy.astype(np.float64) @ linear.T + inverse[:, 2]).astype(np.float32)
    det_root = math.sqrt(abs(np.linalg.det(linear)))
    if keypoints.shapes is not None:
        view_shapes = keypoints.shapes.astype(np.float64)
    else:
        c, s = np.cos(keypoints.orientations.astype(np.float64)), np.sin(keypoints.orientations.astype(np.float64))
        view_shapes = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # kornia's laf_from_center_scale_ori
    shapes = (linear[None] @ view_shapes / det_root).astype(np.float32)
    return Keypoints(xy, (keypoints.scales * det_root).astype(np.float32), orientations_from_shapes(shapes),
                     keypoints.scores, None, shapes)


def detect_on_views(
    gray: np.ndarray, tilt: float, config: DetectionConfig, max_keypoints_per_view: int, step: float = 72.0,
    mask: np.ndarray | None = None,
) -> list[tuple[SyntheticView, Keypoints, Keypoints]]:
    """DoG on every view of ``tilt``: ``[(view, keypoints in view pixels, the same in original pixels)]``.

    The detector runs with ``config`` (``max_keypoints`` replaced by ``max_keypoints_per_view``; no affine shape
    estimation: the view's circle already is the affine frame).
    """
    view_config = replace(config, max_keypoints=max_keypoints_per_view, affine=False)
    out = []
    for longitude in view_longitudes(tilt, step):
        view = synthesize_view(gray, tilt, longitude, mask)
        found = detect_keypoints(view.image, view_config, view.mask)
        out.append((view, found, keypoints_to_original(found, view.affine)))
    return out
