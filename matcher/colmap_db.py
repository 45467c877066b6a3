"""The COLMAP database: the only module that talks to ``pycolmap.Database`` (pycolmap 4.x API).

What is written, for every usable image:

* a camera (``SIMPLE_RADIAL`` by default) of the size this tool decoded, with the focal length recorded at
  extraction by :func:`focal_prior` (``pycolmap.infer_camera_from_image``'s: the EXIF focal length when present,
  flagged ``has_prior_focal_length``, otherwise COLMAP's 1.2 × max(w, h) guess, unflagged; PIL's EXIF for files
  COLMAP's reader cannot open). No image file is read here, so a file COLMAP cannot decode does not fail the export;
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
does not exist. No ``DatabaseTransaction`` is used: when a write fails inside one (disk full), SQLite rolls
back, COLMAP's transaction then fails to commit in a destructor and the process aborts; without it the error is
an exception, the temporary file and its ``-wal``/``-shm`` are removed and :class:`StorageError` is raised (it
is as fast here: WAL mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pycolmap

from matcher.config import ExportConfig
from matcher.errors import ConfigError, StorageError
from matcher.storage import ImageFeatures, PairMatches

__all__ = [
    "DatabaseImage",
    "COLMAP_PIXEL_OFFSET",
    "ColmapPair",
    "write_database",
    "to_colmap_geometry",
    "camera_params",
    "focal_prior",
    "colmap_keypoints",
    "colmap_descriptors",
    "images_with_cameras",
    "colmap_pairs",
    "write_pairs",
    "partial_path",
    "new_counts",
]

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


def _jpeg_without_focal(path: Path) -> bool:
    """Whether ``path`` is a JPEG whose EXIF (read from the header, no decode) has no focal length tag."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            if img.format != "JPEG":
                return False
            exif = img.getexif().get_ifd(0x8769)  # the Exif sub-IFD
            return not exif.get(0x920A) and not exif.get(0xA405)  # FocalLength, FocalLengthIn35mmFilm
    except Exception:  # noqa: BLE001 (unreadable header: let COLMAP decide)
        return False


def focal_prior(path: Path, width: int, height: int) -> tuple[float, bool]:
    """(focal length in pixels, whether it is an EXIF prior) for an image of ``width`` x ``height`` pixels.

    COLMAP's own answer (``pycolmap.infer_camera_from_image``: EXIF focal length and its sensor database)
    where COLMAP's reader can open the file; otherwise (a format only PIL decodes, such as WebP or PCX) the
    EXIF 35 mm-equivalent focal length read by PIL, else COLMAP's guess 1.2 * max(width, height), unflagged.
    Called once per image at extraction; the result is stored with its features. A JPEG whose EXIF holds no
    focal length at all (neither FocalLength nor FocalLengthIn35mmFilm) gets COLMAP's guess without asking
    COLMAP, whose answer would be the same after decoding the whole image a second time (a quarter of the
    decode-and-detect time of an 800 px image here).
    """
    if _jpeg_without_focal(Path(path)):
        return 1.2 * max(width, height), False
    try:
        camera = pycolmap.infer_camera_from_image(Path(path), pycolmap.ImageReaderOptions())
        if camera.width > 0 and camera.height > 0:
            # Scaled to our raster in case COLMAP decoded another size (it keeps the focal in its own pixels).
            scale = max(width, height) / max(camera.width, camera.height)
            return float(camera.mean_focal_length() * scale), bool(camera.has_prior_focal_length)
    except Exception:  # noqa: BLE001 (COLMAP cannot read the file: fall back to PIL's EXIF)
        pass
    try:
        from PIL import Image

        with Image.open(path) as img:
            focal_35mm = float(img.getexif().get_ifd(0x8769).get(0xA405, 0) or 0)
        if focal_35mm > 0:
            return focal_35mm / 35.0 * max(width, height), True  # COLMAP's 35 mm rule
    except Exception:  # noqa: BLE001 (no EXIF)
        pass
    return 1.2 * max(width, height), False


def _camera(image: DatabaseImage, config: ExportConfig) -> pycolmap.Camera:
    """The camera of an image, from the size we decoded and the focal length recorded at extraction (no file
    is read here; features without a recorded focal length get :func:`focal_prior` of the file)."""
    w, h = image.features.width, image.features.height
    focal, prior = image.features.focal, image.features.focal_prior
    if focal <= 0:
        focal, prior = focal_prior(image.path, w, h)
    camera = pycolmap.Camera.create_from_model_name(0, config.camera_model, focal, w, h)
    camera.has_prior_focal_length = prior
    if config.camera_params:  # known intrinsics, as COLMAP's ImageReader applies --ImageReader.camera_params
        camera.params = camera_params(config.camera_model, config.camera_params)
        camera.has_prior_focal_length = True
    return camera


def camera_params(model: str, text: str) -> list[float]:
    """Parse COLMAP's ImageReader ``camera_params`` string for ``model`` (e.g. SIMPLE_RADIAL ``"f,cx,cy,k"``).

    Raises ConfigError naming the model's parameters when the count or a number is wrong.
    """
    try:
        camera = pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1)
    except Exception as exc:  # unknown model name
        raise ConfigError(f"unknown camera model '{model}' ({exc})") from None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != len(camera.params) or not all(np.isfinite(values)):
        raise ConfigError(
            f"--camera-params '{text}': a {model} camera takes {len(camera.params)} numbers: {camera.params_info}"
        )
    return values


def colmap_keypoints(features: ImageFeatures) -> np.ndarray:
    """(N, 4) float32 ``[x, y, scale, orientation]`` in COLMAP's convention (+0.5, clockwise orientation)."""
    keypoints = np.empty((len(features), 4), np.float32)
    keypoints[:, :2] = features.keypoints + COLMAP_PIXEL_OFFSET
    keypoints[:, 2] = features.scales
    keypoints[:, 3] = -features.orientations
    return keypoints


def colmap_descriptors(features: ImageFeatures) -> np.ndarray:
    """(N, D) uint8: COLMAP's SIFT conversion of unit float rows, ``round(512 · d)`` clipped to 255."""
    return np.clip(np.round(features.descriptors * 512.0), 0, 255).astype(np.uint8)


def images_with_cameras(
    images: Iterable[DatabaseImage], config: ExportConfig
) -> Iterator[tuple[DatabaseImage, pycolmap.Camera | None]]:
    """Each image with the camera to create for it, or None when it shares the previous one (``single_camera``).

    Raises ConfigError when ``single_camera`` is asked for images of different sizes.
    """
    first_size: tuple[int, int] | None = None
    for image in images:
        size = (image.features.width, image.features.height)
        if first_size is None or not config.single_camera:
            first_size = first_size or size
            yield image, _camera(image, config)
            continue
        if size != first_size:
            raise ConfigError(
                f"{image.path}: --single-camera needs images of one size, "
                f"got {size[0]}x{size[1]} and {first_size[0]}x{first_size[1]}"
            )
        yield image, None


@dataclass
class ColmapPair:
    """One pair as COLMAP stores it: ``id1 < id2``, matches column 0 indexing image ``id1``.

    ``matches`` (M, 2) uint32 raw matches; ``config``: a ``TwoViewGeometryConfiguration`` int, or None for an
    unverified pair; ``F``/``H`` (3, 3) in COLMAP's pixel convention mapping image id1 to id2 (or None);
    ``inlier_matches`` (K, 2) uint32 (empty when unverified).
    """

    id1: int
    id2: int
    matches: np.ndarray
    config: int | None
    F: np.ndarray | None
    H: np.ndarray | None
    inlier_matches: np.ndarray


def colmap_pairs(pairs: Iterable[tuple[str, str, PairMatches]], ids: dict[str, int]) -> Iterator[ColmapPair]:
    """Our pairs (by name, geometry in our pixel convention) as COLMAP stores them; pairs without matches are
    left out. F and H are converted with :func:`to_colmap_geometry` and re-oriented when the ids swap."""
    for name1, name2, pair in pairs:
        if len(pair.matches) == 0:
            continue
        id1, id2 = ids[name1], ids[name2]
        matches = pair.matches.astype(np.uint32)
        swapped = id1 > id2
        if swapped:
            id1, id2, matches = id2, id1, matches[:, ::-1]
        matches = np.ascontiguousarray(matches)
        if pair.model == "none":
            yield ColmapPair(id1, id2, matches, None, None, None, np.zeros((0, 2), np.uint32))
            continue
        F = H = None
        if pair.F is not None:
            F = to_colmap_geometry("fundamental", pair.F)
            F = F.T if swapped else F
        if pair.H is not None:
            H = to_colmap_geometry("homography", pair.H)
            H = np.linalg.inv(H) if swapped else H
        inliers = np.ascontiguousarray(matches[pair.inliers])
        yield ColmapPair(id1, id2, matches, int(_CONFIG_OF_MODEL[pair.model]), F, H, inliers)


def partial_path(db_path: Path) -> Path:
    """Where a database is written before it is complete (renamed to ``db_path`` at the end)."""
    return db_path.with_name(db_path.name + ".partial")


def new_counts() -> dict[str, int]:
    """The counts a database writer returns, at zero."""
    return dict(images=0, cameras=0, keypoints=0, matched_pairs=0, verified_pairs=0, inlier_matches=0)


def write_pairs(
    pairs: Iterable[tuple[str, str, PairMatches]], ids: dict[str, int], counts: dict[str, int],
    write_matches: Callable[[int, int, np.ndarray], None], write_geometry: Callable[[ColmapPair], None],
) -> None:
    """Write every pair's raw matches and, where it is verified, its geometry (``write_geometry(pair)``), in
    :func:`colmap_pairs` order, counting ``matched_pairs``, ``verified_pairs`` and ``inlier_matches`` in
    ``counts``; the one loop of both database writers (this module's and :mod:`matcher.colmap_legacy_db`'s)."""
    for pair in colmap_pairs(pairs, ids):
        write_matches(pair.id1, pair.id2, pair.matches)
        counts["matched_pairs"] += 1
        if pair.config is None:
            continue
        write_geometry(pair)
        counts["verified_pairs"] += 1
        counts["inlier_matches"] += len(pair.inlier_matches)


def _two_view_geometry(pair: ColmapPair) -> pycolmap.TwoViewGeometry:
    tvg = pycolmap.TwoViewGeometry()
    tvg.config = pair.config
    if pair.F is not None:
        tvg.F = pair.F
    if pair.H is not None:
        tvg.H = pair.H
    tvg.inlier_matches = pair.inlier_matches
    return tvg


def _remove_partial(tmp_path: Path) -> None:
    """Delete a temporary database and SQLite's write-ahead log and shared-memory files beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(tmp_path) + suffix).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
    tmp_path = partial_path(db_path)
    _remove_partial(tmp_path)
    ids: dict[str, int] = {}
    counts = new_counts()
    try:
        with pycolmap.Database.open(tmp_path) as db:
            camera_id = rig_id = 0
            for image, camera in images_with_cameras(images, config):
                if camera is not None:
                    camera_id = db.write_camera(camera)
                    rig = pycolmap.Rig()
                    rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id))
                    rig_id = db.write_rig(rig)
                    counts["cameras"] += 1
                image_id = db.write_image(pycolmap.Image(name=image.name, camera_id=camera_id))
                frame = pycolmap.Frame()
                frame.rig_id = rig_id
                frame.add_data_id(db.read_image(image_id).data_id)
                db.write_frame(frame)
                ids[image.name] = image_id
                db.write_keypoints(image_id, colmap_keypoints(image.features))
                db.write_descriptors(
                    image_id,
                    pycolmap.FeatureDescriptors(
                        type=pycolmap.FeatureExtractorType.SIFT, data=colmap_descriptors(image.features)
                    ),
                )
                counts["images"] += 1
                counts["keypoints"] += len(image.features)

            write_pairs(pairs, ids, counts, db.write_matches,
                        lambda pair: db.write_two_view_geometry(pair.id1, pair.id2, _two_view_geometry(pair)))
    except BaseException as exc:
        _remove_partial(tmp_path)
        if isinstance(exc, RuntimeError) and ("SQLite" in str(exc) or "database" in str(exc)):  # disk full, I/O error, read-only folder
            raise StorageError(f"{db_path}: cannot write the database ({_first_line(exc)})") from None
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


# --- Reading a whole database back (``matcher convert-db``) -----------------------------------------------


@dataclass
class DatabaseGeometry:
    """A verified pair as stored: ``id1 < id2``; F/E/H (3, 3) or None; ``qvec`` (w, x, y, z) and ``tvec`` (3,)
    of the relative pose cam2_from_cam1, or None; ``inlier_matches`` (K, 2) uint32, column 0 indexing id1."""

    id1: int
    id2: int
    config: int
    inlier_matches: np.ndarray
    F: np.ndarray | None
    E: np.ndarray | None
    H: np.ndarray | None
    qvec: np.ndarray | None
    tvec: np.ndarray | None


def _check_sqlite_file(db_path: Path) -> None:
    """One-line errors for a missing file or a file that is not SQLite, without opening it (pycolmap would
    migrate it)."""
    from matcher.errors import IncompatibleDatabaseError

    if not db_path.is_file():
        raise IncompatibleDatabaseError(f"{db_path}: database not found")
    with open(db_path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise IncompatibleDatabaseError(f"{db_path}: not a COLMAP database (not an SQLite file)")


def read_database_records(db_path: Path) -> Iterator[tuple]:
    """Every record of a COLMAP database of any schema pycolmap opens, for copying it into another layout.

    Yields, in this order: ``("camera", camera_id, model_id, width, height, params, has_prior_focal_length)``;
    ``("image", image_id, name, camera_id)``; ``("keypoints", image_id, (N, C) float32)``;
    ``("descriptors", image_id, (N, D) array, type_name)``; ``("matches", id1, id2, (M, 2) uint32)`` with
    ``id1 < id2``; ``("geometry", DatabaseGeometry)``.

    pycolmap migrates an older database when it opens it (rewriting the file), so a temporary copy is opened
    and ``db_path`` is left as it is.
    """
    import shutil
    import tempfile

    db_path = Path(db_path)
    _check_sqlite_file(db_path)
    with tempfile.TemporaryDirectory(prefix="matcher-read-") as tmp:
        copy = Path(tmp) / db_path.name
        shutil.copyfile(db_path, copy)
        with pycolmap.Database.open(copy) as db:
            for camera in sorted(db.read_all_cameras(), key=lambda c: c.camera_id):
                yield ("camera", int(camera.camera_id), int(camera.model), int(camera.width), int(camera.height),
                       np.asarray(camera.params, np.float64), bool(camera.has_prior_focal_length))
            images = sorted(db.read_all_images(), key=lambda i: i.image_id)
            for image in images:
                yield ("image", int(image.image_id), image.name, int(image.camera_id))
            for image in images:
                if db.exists_keypoints(image.image_id):
                    yield ("keypoints", int(image.image_id), np.asarray(db.read_keypoints(image.image_id), np.float32))
                if db.exists_descriptors(image.image_id):
                    descriptors = db.read_descriptors(image.image_id)
                    yield ("descriptors", int(image.image_id), np.asarray(descriptors.data), descriptors.type.name)
            pair_ids, all_matches = db.read_all_matches()
            for pair_id, matches in sorted(zip(pair_ids, all_matches), key=lambda item: item[0]):
                id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
                yield ("matches", int(id1), int(id2), np.asarray(matches, np.uint32).reshape(-1, 2))
            pair_ids, geometries = db.read_two_view_geometries()
            for pair_id, tvg in sorted(zip(pair_ids, geometries), key=lambda item: item[0]):
                id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
                pose = tvg.cam2_from_cam1
                qvec = tvec = None
                if pose is not None:
                    x, y, z, w = pose.rotation.quat  # Eigen order
                    qvec, tvec = np.array([w, x, y, z]), np.asarray(pose.translation, np.float64)
                yield ("geometry", DatabaseGeometry(
                    int(id1), int(id2), int(tvg.config), np.asarray(tvg.inlier_matches, np.uint32).reshape(-1, 2),
                    None if tvg.F is None else np.asarray(tvg.F, np.float64),
                    None if tvg.E is None else np.asarray(tvg.E, np.float64),
                    None if tvg.H is None else np.asarray(tvg.H, np.float64),
                    qvec, tvec,
                ))


def upgrade_database(in_path: Path, out_path: Path) -> None:
    """Copy a database of any schema pycolmap opens to ``out_path`` in pycolmap's own schema (COLMAP >= 3.12).

    pycolmap adds the new tables when it opens the copy; a database without frames (COLMAP 3.x) then gets what
    ``match`` writes: a trivial rig per camera and a frame per image. Written under a temporary name and
    renamed; ``in_path`` is left as it is.
    """
    import shutil

    _check_sqlite_file(Path(in_path))
    out_path = Path(out_path)
    tmp_path = partial_path(out_path)
    shutil.copyfile(in_path, tmp_path)
    try:
        with pycolmap.Database.open(tmp_path) as db:
            if db.num_frames() == 0 and db.num_images() > 0:
                with pycolmap.DatabaseTransaction(db):
                    rig_of_camera = {}
                    for camera in db.read_all_cameras():
                        rig = pycolmap.Rig()
                        rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera.camera_id))
                        rig_of_camera[camera.camera_id] = db.write_rig(rig)
                    for image in sorted(db.read_all_images(), key=lambda i: i.image_id):
                        frame = pycolmap.Frame()
                        frame.rig_id = rig_of_camera[image.camera_id]
                        frame.add_data_id(image.data_id)
                        db.write_frame(frame)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, out_path)


__all__ += ["DatabaseGeometry", "read_database_records", "upgrade_database"]
