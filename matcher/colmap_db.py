"""The COLMAP database: the only module that talks to ``pycolmap.Database`` (pycolmap 4.x API).

What is written, for every usable image:

* a camera (``SIMPLE_RADIAL`` by default) from ``pycolmap.infer_camera_from_image``: the EXIF focal length is
  used when present and flagged ``has_prior_focal_length``; otherwise COLMAP's 1.2 × max(w, h) guess, unflagged;
* a trivial rig (the camera as reference sensor) and a frame holding the image, for every image or none
  (a mix crashes the mapper, colmap#3580);
* keypoints as N×4 ``[x, y, scale, orientation]`` in COLMAP's convention: the top-left pixel's centre is
  (0.5, 0.5), so +0.5 is added here and only here; scale is the DoG sigma; orientation is COLMAP's (clockwise
  on screen, the negative of ours);
* descriptors as COLMAP SIFT-type uint8 (``round(512 · d)`` clipped to 255, COLMAP's own conversion), so
  COLMAP's matchers and vocabulary trees can still use the database;
* raw matches of every pair with matches, and a two-view geometry for every verified pair: ``UNCALIBRATED``
  with F, or ``PLANAR_OR_PANORAMIC`` with F and H (see :mod:`matcher.verify`), converted to COLMAP's pixel
  convention.

The file is written under a temporary name and renamed when complete, so a database either is whole or
does not exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pycolmap

from matcher.config import ExportConfig
from matcher.errors import ConfigError
from matcher.storage import ImageFeatures, PairMatches

__all__ = ["DatabaseImage", "COLMAP_PIXEL_OFFSET", "write_database", "to_colmap_geometry"]

COLMAP_PIXEL_OFFSET = 0.5
_CONFIG_OF_MODEL = {
    "fundamental": pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED,
    "planar": pycolmap.TwoViewGeometryConfiguration.PLANAR_OR_PANORAMIC,
}


@dataclass
class DatabaseImage:
    """An image to export: its name, file path (for EXIF) and features."""

    name: str
    path: Path
    features: ImageFeatures


def to_colmap_geometry(model: str, geometry: np.ndarray) -> np.ndarray:
    """Re-express F or H from our pixel convention (centre of first pixel at 0) in COLMAP's (at 0.5).

    With ``x_ours = x_colmap - 0.5`` written as ``x_ours = T x_colmap``: ``F_colmap = Tᵀ F T`` and
    ``H_colmap = T⁻¹ H T``.
    """
    T = np.array([[1.0, 0.0, -COLMAP_PIXEL_OFFSET], [0.0, 1.0, -COLMAP_PIXEL_OFFSET], [0.0, 0.0, 1.0]])
    if model == "fundamental":
        return T.T @ geometry @ T
    if model == "homography":
        return np.linalg.inv(T) @ geometry @ T
    raise ValueError(f"unknown geometry model {model}")


def _camera(image: DatabaseImage, config: ExportConfig) -> pycolmap.Camera:
    options = pycolmap.ImageReaderOptions()
    options.camera_model = config.camera_model
    try:
        camera = pycolmap.infer_camera_from_image(image.path, options)
    except Exception as exc:  # pycolmap raises ValueError/RuntimeError for unknown models or unreadable EXIF
        raise ConfigError(f"{image.path}: cannot create a {config.camera_model} camera ({exc})") from None
    w, h = image.features.width, image.features.height
    if (camera.width, camera.height) != (w, h):
        # COLMAP decoded another raster size than we did: keep the focal guess, use our size.
        focal = camera.mean_focal_length()
        prior = camera.has_prior_focal_length
        camera = pycolmap.Camera.create_from_model_name(0, config.camera_model, focal, w, h)
        camera.has_prior_focal_length = prior
    return camera


def write_database(
    db_path: Path,
    images: Iterable[DatabaseImage],
    pairs: Iterable[tuple[str, str, PairMatches]],
    config: ExportConfig,
) -> dict[str, int]:
    """Write a complete COLMAP database at ``db_path`` (replacing any file there).

    Both inputs are streamed (one image, one pair in memory at a time).

    Args:
        images: images in the order their ids are assigned (1, 2, ...).
        pairs: ``(name1, name2, matches)`` with indices into name1's and name2's keypoints.

    Returns:
        counts: images, cameras, keypoints, matched_pairs, verified_pairs, inlier_matches.
    """
    db_path = Path(db_path)
    tmp_path = db_path.with_name(db_path.name + ".partial")
    if tmp_path.exists():
        tmp_path.unlink()
    ids: dict[str, int] = {}
    counts = dict(images=0, cameras=0, keypoints=0, matched_pairs=0, verified_pairs=0, inlier_matches=0)
    try:
        with pycolmap.Database.open(tmp_path) as db:
            with pycolmap.DatabaseTransaction(db):
                shared: tuple[int, int] | None = None
                first_size: tuple[int, int] | None = None
                for image in images:
                    size = (image.features.width, image.features.height)
                    first_size = first_size or size
                    if config.single_camera and size != first_size:
                        raise ConfigError(
                            f"{image.path}: --single-camera needs images of one size, "
                            f"got {size[0]}x{size[1]} and {first_size[0]}x{first_size[1]}"
                        )
                    if shared is None or not config.single_camera:
                        camera_id = db.write_camera(_camera(image, config))
                        rig = pycolmap.Rig()
                        rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id))
                        shared = (camera_id, db.write_rig(rig))
                        counts["cameras"] += 1
                    camera_id, rig_id = shared
                    image_id = db.write_image(pycolmap.Image(name=image.name, camera_id=camera_id))
                    frame = pycolmap.Frame()
                    frame.rig_id = rig_id
                    frame.add_data_id(db.read_image(image_id).data_id)
                    db.write_frame(frame)
                    ids[image.name] = image_id

                    f = image.features
                    keypoints = np.empty((len(f), 4), np.float32)
                    keypoints[:, :2] = f.keypoints + COLMAP_PIXEL_OFFSET
                    keypoints[:, 2] = f.scales
                    keypoints[:, 3] = -f.orientations
                    db.write_keypoints(image_id, keypoints)
                    sift_u8 = np.clip(np.round(f.descriptors * 512.0), 0, 255).astype(np.uint8)
                    db.write_descriptors(
                        image_id, pycolmap.FeatureDescriptors(type=pycolmap.FeatureExtractorType.SIFT, data=sift_u8)
                    )
                    counts["images"] += 1
                    counts["keypoints"] += len(f)

                for name1, name2, pair in pairs:
                    if len(pair.matches) == 0:
                        continue
                    id1, id2 = ids[name1], ids[name2]
                    matches = pair.matches.astype(np.uint32)
                    if id1 > id2:
                        id1, id2, matches = id2, id1, matches[:, ::-1]
                    db.write_matches(id1, id2, np.ascontiguousarray(matches))
                    counts["matched_pairs"] += 1
                    if pair.model == "none":
                        continue
                    swapped = ids[name1] > ids[name2]
                    tvg = pycolmap.TwoViewGeometry()
                    tvg.config = int(_CONFIG_OF_MODEL[pair.model])
                    if pair.F is not None:
                        F = to_colmap_geometry("fundamental", pair.F)
                        tvg.F = F.T if swapped else F
                    if pair.H is not None:
                        H = to_colmap_geometry("homography", pair.H)
                        tvg.H = np.linalg.inv(H) if swapped else H
                    tvg.inlier_matches = np.ascontiguousarray(matches[pair.inliers])
                    db.write_two_view_geometry(id1, id2, tvg)
                    counts["verified_pairs"] += 1
                    counts["inlier_matches"] += int(pair.inliers.sum())
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, db_path)
    return counts


# --- Reading matches back (evaluation and ``matcher show``) ------------------------------------------------


@dataclass
class DatabasePair:
    """Keypoints, raw matches and verified inliers of one image pair, read from any COLMAP database.

    ``keypoints1``/``keypoints2``: (N, 2) float64 in our pixel convention (COLMAP's 0.5 already subtracted);
    ``matches``: (M, 2) int64 raw matches, column 0 indexing ``keypoints1`` (the pair's first name);
    ``inliers``: (M,) bool, the matches kept by the pair's two-view geometry; ``config``: its
    ``TwoViewGeometryConfiguration`` as an int (0, UNDEFINED, when the pair has none);
    ``size1``/``size2``: (width, height) of the images' cameras.
    """

    name1: str
    name2: str
    keypoints1: np.ndarray
    keypoints2: np.ndarray
    matches: np.ndarray
    inliers: np.ndarray
    config: int
    size1: tuple[int, int]
    size2: tuple[int, int]

    @property
    def xy1(self) -> np.ndarray:
        """(M, 2) coordinates of the matched keypoints in image 1."""
        return self.keypoints1[self.matches[:, 0]]

    @property
    def xy2(self) -> np.ndarray:
        return self.keypoints2[self.matches[:, 1]]


def _open_existing(db_path: Path) -> pycolmap.Database:
    """Open a database that must exist (``Database.open`` would silently create a missing one)."""
    from matcher.errors import IncompatibleDatabaseError

    db_path = Path(db_path)
    if not db_path.is_file():
        raise IncompatibleDatabaseError(f"{db_path}: database not found")
    try:
        return pycolmap.Database.open(db_path)
    except Exception as exc:  # pycolmap raises RuntimeError for files that are not SQLite databases
        raise IncompatibleDatabaseError(f"{db_path}: not a COLMAP database ({exc})") from None


def read_image_names(db_path: Path) -> list[str]:
    """Names of the images in a database, sorted."""
    with _open_existing(db_path) as db:
        return sorted(image.name for image in db.read_all_images())


def _inlier_mask(raw: np.ndarray, inlier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(matches, mask): the raw matches flagged by membership in the inlier matches.

    Inlier matches missing from the raw ones (a database holding only two-view geometries) are appended.
    """
    raw = raw.astype(np.int64).reshape(-1, 2)
    inlier = inlier.astype(np.int64).reshape(-1, 2)
    if len(inlier) == 0:
        return raw, np.zeros(len(raw), bool)
    width = int(max(raw[:, 1].max(initial=0), inlier[:, 1].max(initial=0))) + 1
    raw_keys, inlier_keys = raw[:, 0] * width + raw[:, 1], inlier[:, 0] * width + inlier[:, 1]
    mask = np.isin(raw_keys, inlier_keys)
    extra = inlier[~np.isin(inlier_keys, raw_keys)]
    if len(extra):
        raw = np.concatenate([raw, extra])
        mask = np.concatenate([mask, np.ones(len(extra), bool)])
    return raw, mask


def read_pairs(db_path: Path, pairs: Iterable[tuple[str, str]]) -> Iterable[DatabasePair]:
    """Yield a :class:`DatabasePair` for each ``(name1, name2)``, in the order asked (either id order works).

    A pair without matches yields empty arrays. Raises IncompatibleDatabaseError for a missing database or
    an image name it does not hold (the message lists a few names it does hold).
    """
    from matcher.errors import IncompatibleDatabaseError

    with _open_existing(db_path) as db:
        images = {image.name: image for image in db.read_all_images()}
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
        keypoints: dict[str, np.ndarray] = {}

        def image_keypoints(name: str) -> np.ndarray:
            if name not in keypoints:
                image_id = images[name].image_id
                xy = (
                    db.read_keypoints(image_id)[:, :2].astype(np.float64)
                    if db.exists_keypoints(image_id)
                    else np.zeros((0, 2))
                )
                keypoints[name] = xy - COLMAP_PIXEL_OFFSET
            return keypoints[name]

        for name1, name2 in pairs:
            for name in (name1, name2):
                if name not in images:
                    known = sorted(images)
                    shown = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
                    raise IncompatibleDatabaseError(
                        f"{db_path}: no image named '{name}' in the database ({len(known)} images: {shown})"
                    )
            id1, id2 = images[name1].image_id, images[name2].image_id
            raw = db.read_matches(id1, id2) if db.exists_matches(id1, id2) else np.zeros((0, 2), np.uint32)
            config, inlier = 0, np.zeros((0, 2), np.uint32)
            if db.exists_two_view_geometry(id1, id2):
                tvg = db.read_two_view_geometry(id1, id2)  # pycolmap swaps to (id1, id2) order itself
                config, inlier = int(tvg.config), tvg.inlier_matches
            matches, mask = _inlier_mask(raw, inlier)
            c1, c2 = cameras[images[name1].camera_id], cameras[images[name2].camera_id]
            yield DatabasePair(
                name1, name2, image_keypoints(name1), image_keypoints(name2), matches, mask, config,
                (int(c1.width), int(c1.height)), (int(c2.width), int(c2.height)),
            )


def read_keypoints_and_matches(db_path: Path, name1: str, name2: str) -> DatabasePair:
    """Keypoints (our pixel convention), raw matches and verified inliers of one pair; see :func:`read_pairs`."""
    return next(iter(read_pairs(db_path, [(name1, name2)])))


__all__ += ["DatabasePair", "read_image_names", "read_pairs", "read_keypoints_and_matches"]
