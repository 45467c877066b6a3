"""Keypoint detection: OpenCV's DoG (SIFT) detector with scale and orientation.

Conventions (shared by every stage, see ``matcher.features``):

* coordinates: pixel centres at integers, the centre of the top-left pixel is (0, 0) (OpenCV/kornia);
* ``scales``: the DoG blob's sigma in pixels, i.e. OpenCV's ``KeyPoint.size / 2``;
* ``orientations``: radians, counter-clockwise on screen (image y pointing down), the angle kornia's
  ``laf_from_center_scale_ori`` takes (in degrees). OpenCV's ``KeyPoint.angle`` turns the other way
  (clockwise on screen), so ``orientation = -radians(angle)``; COLMAP's keypoint orientation (the angle of
  its affine shape's first column) is OpenCV's, i.e. ``-orientation``. Checked by rotating an image.

SIFT assigns a second orientation to a blob whose histogram has two strong peaks (within 80 % of the highest),
which yields two keypoints at the same location; tracks then count the same observation twice (colmap#293). We
keep one keypoint per location: the one with the strongest response (the first orientation in OpenCV's order,
on ties; the peaks' responses are equal, and OpenCV's first is the smallest angle). With
``DetectionConfig.max_orientations`` k > 1 the location's further peaks (up to k - 1, in OpenCV's order) are kept
as *extra orientations* of that keypoint (``Keypoints.extra_orientations`` / ``extra_index``): described as extra
rows and matched with the maximum similarity over a keypoint's orientations (:mod:`matcher.matching`), so the
location stays one keypoint. 16-17 % of an entry-P10 image's kept keypoints have such peaks, and the first one is
often a different peak in another view (models/sdgmnet.md, "Why FPR95 is high"). The budget counts locations.

OpenCV's SIFT doubles the image before its first octave; without ``enable_precise_upscale`` its keypoints
sit +0.25 px off the pixel-centre convention in x and y (measured here: detections on a mirrored image land
0.5 px from the mirrored detections, at every octave; 0.0 px with it). It is on.

When there are more than ``max_keypoints``, the largest scales are kept by default (``selection = "scale"``),
as COLMAP does by dropping the finest octaves first: fine-scale blobs on foliage, gravel and noise are the
least repeatable (measured against ``selection = "response"``: docs/eval.md, "Why the defaults").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from matcher.config import DetectionConfig
from matcher.errors import ConfigError
from matcher.images import rescale_pixels

__all__ = ["DetectionConfig", "Keypoints", "detect_keypoints"]


@dataclass
class Keypoints:
    """Keypoints of one image, in the pixel coordinates of the image they were detected on.

    Shapes: ``xy`` (N, 2) float32, ``scales`` (N,) float32 sigma in pixels, ``orientations`` (N,) float32
    radians, ``scores`` (N,) float32 DoG response, ``octaves`` (N,) int32 OpenCV's packed octave/layer
    (lets OpenCV describe the keypoints on the right pyramid level; meaningful only in the detection frame).
    ``shapes`` (N, 2, 2) float32 or None: each keypoint's affine shape with determinant 1, orientation
    included, so that its local affine frame is ``[magnification * scale * shape | xy]`` (kornia's LAF);
    None: the similarity frame ``scale * R(orientation)`` (see :mod:`matcher.affine_shape`).
    ``extra_orientations`` (M,) float32 radians and ``extra_index`` (M,) int64, or None (none): further
    orientations of keypoint ``extra_index[m]`` (sorted ascending; ``DetectionConfig.max_orientations``), each
    differing from that keypoint's ``orientations`` entry.
    """

    xy: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    scores: np.ndarray
    octaves: np.ndarray | None = None
    shapes: np.ndarray | None = None
    extra_orientations: np.ndarray | None = None
    extra_index: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def num_extra(self) -> int:
        """M, the number of extra orientation rows."""
        return 0 if self.extra_index is None else int(len(self.extra_index))

    def select(self, index: np.ndarray) -> "Keypoints":
        """Return the keypoints at ``index`` (bool mask or integer array), with their extra orientations."""
        extra_orientations = extra_index = None
        if self.num_extra:
            chosen = np.arange(len(self))[index]
            new_position = np.full(len(self), -1, np.int64)
            new_position[chosen] = np.arange(len(chosen))
            owner = new_position[self.extra_index]
            order = np.argsort(owner, kind="stable")
            order = order[owner[order] >= 0]
            extra_orientations, extra_index = self.extra_orientations[order], owner[order]
        return Keypoints(
            self.xy[index],
            self.scales[index],
            self.orientations[index],
            self.scores[index],
            None if self.octaves is None else self.octaves[index],
            None if self.shapes is None else self.shapes[index],
            extra_orientations,
            extra_index,
        )

    def orientation_rows(self) -> "Keypoints":
        """Every described row: the N keypoints, then the M extra orientations (each a copy of its keypoint with
        the other angle), without extras of their own: N + M keypoints for a descriptor."""
        if not self.num_extra:
            return self
        if self.shapes is not None:
            raise ValueError("extra orientations of keypoints with affine shapes are not supported")
        rows = np.r_[np.arange(len(self)), self.extra_index]
        orientations = np.r_[self.orientations, self.extra_orientations].astype(np.float32)
        return Keypoints(self.xy[rows], self.scales[rows], orientations, self.scores[rows],
                         None if self.octaves is None else self.octaves[rows])

    def rescaled(self, sx: float, sy: float) -> "Keypoints":
        """Map to an image resized by (sx, sy): pixel centres scale as ``(x + 0.5) * s - 0.5``."""
        xy = rescale_pixels(self.xy, sx, sy)
        scale_factor = float(np.sqrt(sx * sy))
        scales = (self.scales * scale_factor).astype(np.float32)
        shapes = None
        if self.shapes is not None:  # diag(sx, sy) A / sqrt(sx sy): the same image region, determinant 1 again
            shapes = (np.diag([sx, sy]).astype(np.float32) @ self.shapes / scale_factor).astype(np.float32)
        return Keypoints(xy, scales, self.orientations, self.scores, self.octaves, shapes, self.extra_orientations,
                         self.extra_index)


def _empty() -> Keypoints:
    z = np.zeros((0,), np.float32)
    return Keypoints(np.zeros((0, 2), np.float32), z, z.copy(), z.copy(), np.zeros((0,), np.int32))


def _extra_orientations(keep: np.ndarray, location: np.ndarray, angle: np.ndarray, per_keypoint: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The other orientations OpenCV found at the kept locations, at most ``per_keypoint`` each, in OpenCV's order.

    Args:
        keep: (N,) indices of the kept detections (the keypoints, in output order).
        location: (K,) location id of every detection; angle: (K,) OpenCV's clockwise degrees.

    Returns:
        extra_orientations (M,) float32 radians (counter-clockwise), extra_index (M,) int64 sorted ascending.
    """
    owner = np.full(int(location.max()) + 1, -1, np.int64)
    owner[location[keep]] = np.arange(len(keep))
    candidate = np.flatnonzero(owner[location] >= 0)  # detections at a kept location, in (stable) sorted order
    candidate = candidate[~np.isin(candidate, keep)]
    candidate = candidate[angle[candidate] != angle[keep][owner[location[candidate]]]]  # a different angle
    index = owner[location[candidate]]
    order = np.argsort(index, kind="stable")  # by keypoint, OpenCV's order within one
    candidate, index = candidate[order], index[order]
    rank = np.arange(len(index)) - np.searchsorted(index, index, side="left")
    chosen = rank < per_keypoint
    return np.deg2rad(-angle[candidate[chosen]]).astype(np.float32), index[chosen]


def detect_keypoints(
    gray: np.ndarray, config: DetectionConfig | None = None, mask: np.ndarray | None = None
) -> Keypoints:
    """Detect DoG keypoints with scale and orientation, at most one per location.

    Args:
        gray: image (H, W) uint8.
        config: detector settings; defaults to :class:`DetectionConfig`.
        mask: (H, W) uint8 or None; keypoints whose rounded location is 0 there are dropped before the
            ``max_keypoints`` selection (OpenCV's detector mask), so the budget goes to the unmasked area.

    Returns:
        :class:`Keypoints` sorted by decreasing response, at most ``config.max_keypoints`` of them, with up to
        ``config.max_orientations - 1`` extra orientations each (none when ``upright``).
    """
    config = config or DetectionConfig()
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"detect_keypoints expects a (H, W) uint8 image, got {gray.shape} {gray.dtype}")
    # Ask OpenCV for more than we keep: duplicates (second orientations) are removed afterwards.
    sift = cv2.SIFT_create(
        nfeatures=0,
        nOctaveLayers=config.n_octave_layers,
        contrastThreshold=config.contrast_threshold,
        edgeThreshold=config.edge_threshold,
        sigma=config.sigma,
        enable_precise_upscale=True,
    )
    cv_kps = sift.detect(gray, mask)
    if not cv_kps:
        return _empty()
    xy = np.array([k.pt for k in cv_kps], np.float32).reshape(-1, 2)
    size = np.array([k.size for k in cv_kps], np.float32)
    angle = np.array([k.angle for k in cv_kps], np.float32)
    response = np.array([k.response for k in cv_kps], np.float32)
    octave = np.array([k.octave for k in cv_kps], np.int32)

    # Strongest first; a stable sort keeps OpenCV's order (first orientation first) among equal responses.
    order = np.argsort(-response, kind="stable")
    xy, size, angle, response, octave = xy[order], size[order], angle[order], response[order], octave[order]
    # One keypoint per location: OpenCV emits the extra orientations with identical coordinates.
    _, first, location = np.unique(xy, axis=0, return_index=True, return_inverse=True)
    location = location.reshape(-1)
    unique = np.sort(first)  # strongest first
    if config.selection == "scale":
        keep = unique[np.argsort(-size[unique], kind="stable")[: config.max_keypoints]]
        keep = keep[np.argsort(-response[keep], kind="stable")]
    elif config.selection == "response":
        keep = unique[: config.max_keypoints]
    else:
        raise ConfigError(f"detection.selection must be 'scale' or 'response', got '{config.selection}'")

    orientations = np.zeros(len(keep), np.float32) if config.upright else np.deg2rad(-angle[keep]).astype(np.float32)
    keypoints = Keypoints(
        xy=np.ascontiguousarray(xy[keep]),
        scales=(size[keep] / 2.0).astype(np.float32),
        orientations=orientations,
        scores=response[keep],
        octaves=octave[keep],
    )
    if config.max_orientations > 1 and not config.upright:
        keypoints.extra_orientations, keypoints.extra_index = _extra_orientations(
            keep, location, angle, config.max_orientations - 1)
    if config.affine:
        from matcher.affine_shape import estimate_affine_shapes  # torch and kornia: only when asked for

        keypoints = estimate_affine_shapes(gray, keypoints, upright=config.upright)
    return keypoints
