"""COLMAP databases for COLMAP 3.x before 3.12 (Debian/Ubuntu apt, Homebrew, many GUI installs).

pycolmap 4 writes the schema of COLMAP >= 3.12 (rigs, frames, ...). COLMAP 3.8 prepares statements on columns
that schema no longer has (``images.prior_qw`` ...) and every command fails with ``SQL logic error``; pycolmap
cannot write the older schema, so this one module writes it with Python's ``sqlite3``. All other database access
goes through :mod:`matcher.colmap_db`, which also decides the content (cameras, the +0.5 keypoint offset, uint8
descriptors, pair orientation, F/H in COLMAP's pixel convention): this module only lays it out in tables.

The schema is COLMAP 3.8's, copied from ``Database::CreateTables`` (``src/base/database.cc``, COLMAP 3.8;
identical to what Debian's ``colmap`` 3.8 ``database_creator`` writes; stored as test data in
``tests/fixtures/colmap_3.8_schema.sql``). Where 3.x changed it:

* 3.8 and 3.9: the same six CREATE statements (3.9's ``src/colmap/scene/database.cc`` has 3.8's verbatim);
  ``images`` carries the pose prior columns ``prior_qw ... prior_tz`` and COLMAP's statements name them, so
  a database without them fails (what a pycolmap 4 database does to them);
* 3.10 and 3.11 moved the priors to a ``pose_priors`` table (3.11: with ``position_covariance``) and name only
  ``images(image_id, name, camera_id)``; their ``CreateTables`` (``CREATE TABLE IF NOT EXISTS``) and
  ``UpdateSchema`` (``ALTER TABLE ... ADD COLUMN``) add what an older database lacks, so the 3.8 layout serves
  them too (read in COLMAP's source; no 3.10/3.11 binary was run);
* 3.12 introduced rigs and frames (pycolmap 4's schema). pycolmap 4.2 opens a 3.8-layout database, adding
  its new tables (it rewrites the file: open a copy) but no rigs or frames, and its incremental mapper
  registers it (tested); ``matcher convert-db IN OUT --colmap-version 3.12`` also writes the rigs and frames.

So one legacy layout is written for every 3.x version asked for below 3.12. Blobs are as COLMAP writes them:
``rows``/``cols`` and row-major data (float32 keypoints N×4, uint8 descriptors N×128, uint32 matches M×2,
float64 3×3 F/E/H stored row-major, qvec (w, x, y, z) and tvec), ``pair_id = id1 · 2147483647 + id2`` with
``id1 < id2``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from matcher.config import ExportConfig
from matcher.errors import ConfigError
from matcher.storage import PairMatches

__all__ = [
    "LEGACY_SCHEMA_VERSION",
    "MAX_NUM_IMAGES",
    "parse_colmap_version",
    "is_legacy_version",
    "schema_name",
    "pair_id",
    "LegacyDatabase",
    "write_legacy_database",
    "convert_database",
]

LEGACY_SCHEMA_VERSION = (3, 8)
MAX_NUM_IMAGES = 2147483647  # COLMAP's kMaxNumImages (int32 max): pair ids and the images id check
_FIRST_MODERN = (3, 12)
_LEGACY_MAX_CAMERA_MODEL = 10  # THIN_PRISM_FISHEYE, the last camera model COLMAP 3.8 knows

# COLMAP 3.8, src/base/database.cc, Database::CreateTables (the CREATE TABLE statements, verbatim apart from
# "IF NOT EXISTS" and the images id bound, which COLMAP formats in).
SCHEMA_3_8 = f"""
CREATE TABLE cameras
   (camera_id            INTEGER  PRIMARY KEY AUTOINCREMENT  NOT NULL,
    model                INTEGER                             NOT NULL,
    width                INTEGER                             NOT NULL,
    height               INTEGER                             NOT NULL,
    params               BLOB,
    prior_focal_length   INTEGER                             NOT NULL);
CREATE TABLE images
   (image_id   INTEGER  PRIMARY KEY AUTOINCREMENT  NOT NULL,
    name       TEXT                                NOT NULL UNIQUE,
    camera_id  INTEGER                             NOT NULL,
    prior_qw   REAL,
    prior_qx   REAL,
    prior_qy   REAL,
    prior_qz   REAL,
    prior_tx   REAL,
    prior_ty   REAL,
    prior_tz   REAL,
CONSTRAINT image_id_check CHECK(image_id >= 0 and image_id < {MAX_NUM_IMAGES}),
FOREIGN KEY(camera_id) REFERENCES cameras(camera_id));
CREATE UNIQUE INDEX index_name ON images(name);
CREATE TABLE keypoints
   (image_id  INTEGER  PRIMARY KEY  NOT NULL,
    rows      INTEGER               NOT NULL,
    cols      INTEGER               NOT NULL,
    data      BLOB,
FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE descriptors
   (image_id  INTEGER  PRIMARY KEY  NOT NULL,
    rows      INTEGER               NOT NULL,
    cols      INTEGER               NOT NULL,
    data      BLOB,
FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE matches
   (pair_id  INTEGER  PRIMARY KEY  NOT NULL,
    rows     INTEGER               NOT NULL,
    cols     INTEGER               NOT NULL,
    data     BLOB);
CREATE TABLE two_view_geometries
   (pair_id  INTEGER  PRIMARY KEY  NOT NULL,
    rows     INTEGER               NOT NULL,
    cols     INTEGER               NOT NULL,
    data     BLOB,
    config   INTEGER               NOT NULL,
    F        BLOB,
    E        BLOB,
    H        BLOB,
    qvec     BLOB,
    tvec     BLOB);
PRAGMA user_version = 3800;
"""


def parse_colmap_version(text: str) -> tuple[int, int] | None:
    """``"3.8"``, ``"3.9.1"``, ``"4.0"`` -> (major, minor); ``""`` -> None (the installed pycolmap's schema).

    Raises ConfigError for anything else, or a COLMAP before 3.0.
    """
    text = str(text).strip()
    if text == "":
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?(?:-\S+)?", text)
    if match is None:
        raise ConfigError(f"export.colmap_version: expected a COLMAP version such as 3.8 or 3.12, got '{text}'")
    version = (int(match.group(1)), int(match.group(2)))
    if version < (3, 0):
        raise ConfigError(f"export.colmap_version: COLMAP {text} is not supported (3.0 or newer)")
    return version


def is_legacy_version(text: str) -> bool:
    """True when COLMAP ``text`` needs the legacy (3.8) layout, i.e. 3.x before 3.12."""
    version = parse_colmap_version(text)
    return version is not None and version < _FIRST_MODERN


def schema_name(text: str) -> str:
    """Which schema a ``colmap_version`` setting writes, for summaries: e.g. ``COLMAP 3.8 schema (for 3.9)``."""
    if not is_legacy_version(text):
        import pycolmap

        return f"COLMAP >= 3.12 schema (pycolmap {pycolmap.__version__})"
    version = parse_colmap_version(text)
    asked = f"{version[0]}.{version[1]}"
    legacy = f"{LEGACY_SCHEMA_VERSION[0]}.{LEGACY_SCHEMA_VERSION[1]}"
    return f"COLMAP {legacy} schema" + ("" if asked == legacy else f" (for COLMAP {asked})")


def pair_id(image_id1: int, image_id2: int) -> int:
    """COLMAP's pair id: the smaller image id first."""
    id1, id2 = min(image_id1, image_id2), max(image_id1, image_id2)
    return id1 * MAX_NUM_IMAGES + id2


def _blob(array: np.ndarray, dtype: type) -> tuple[int, int, bytes]:
    array = np.ascontiguousarray(array, dtype=dtype)
    return int(array.shape[0]), int(array.shape[1]), array.tobytes()


class LegacyDatabase:
    """A COLMAP 3.8-layout database being written (a new file; ids are given by the caller).

    Use as a context manager: the transaction is committed on a clean exit and rolled back otherwise.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(self.path)
        self.connection = sqlite3.connect(self.path)
        self.connection.executescript(SCHEMA_3_8)
        self.connection.execute("BEGIN")

    def __enter__(self) -> "LegacyDatabase":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.connection.commit()
        else:
            self.connection.rollback()
        self.connection.close()

    def write_camera(
        self, camera_id: int, model_id: int, width: int, height: int, params: np.ndarray, prior_focal_length: bool
    ) -> None:
        """One camera row: COLMAP's model id (0 SIMPLE_PINHOLE ... 10 THIN_PRISM_FISHEYE), params float64."""
        if not 0 <= model_id <= _LEGACY_MAX_CAMERA_MODEL:
            raise ConfigError(
                f"camera model id {model_id} is newer than COLMAP 3.8 (which knows ids 0-{_LEGACY_MAX_CAMERA_MODEL}); "
                "choose another --camera-model"
            )
        self.connection.execute(
            "INSERT INTO cameras(camera_id, model, width, height, params, prior_focal_length) VALUES(?,?,?,?,?,?)",
            (camera_id, model_id, width, height, np.asarray(params, np.float64).tobytes(), int(prior_focal_length)),
        )

    def write_image(self, image_id: int, name: str, camera_id: int) -> None:
        """One image row; the pose prior columns are left NULL (COLMAP reads NULL as 'no prior')."""
        self.connection.execute(
            "INSERT INTO images(image_id, name, camera_id) VALUES(?,?,?)", (image_id, name, camera_id)
        )

    def write_keypoints(self, image_id: int, keypoints: np.ndarray) -> None:
        """(N, 4) ``[x, y, scale, orientation]`` in COLMAP's convention, stored as float32."""
        self.connection.execute(
            "INSERT INTO keypoints(image_id, rows, cols, data) VALUES(?,?,?,?)",
            (image_id, *_blob(keypoints, np.float32)),
        )

    def write_descriptors(self, image_id: int, descriptors: np.ndarray) -> None:
        """(N, D) uint8 descriptors."""
        if descriptors.dtype != np.uint8:
            raise ConfigError(f"{self.path}: COLMAP 3.x stores uint8 descriptors, got {descriptors.dtype}")
        self.connection.execute(
            "INSERT INTO descriptors(image_id, rows, cols, data) VALUES(?,?,?,?)",
            (image_id, *_blob(descriptors, np.uint8)),
        )

    def write_matches(self, image_id1: int, image_id2: int, matches: np.ndarray) -> None:
        """(M, 2) matches, column 0 indexing ``image_id1``'s keypoints (swapped here when ids are not in order)."""
        matches = np.asarray(matches).reshape(-1, 2)
        if image_id1 > image_id2:
            matches = matches[:, ::-1]
        self.connection.execute(
            "INSERT INTO matches(pair_id, rows, cols, data) VALUES(?,?,?,?)",
            (pair_id(image_id1, image_id2), *_blob(matches, np.uint32)),
        )

    def write_two_view_geometry(
        self,
        image_id1: int,
        image_id2: int,
        config: int,
        inlier_matches: np.ndarray,
        F: np.ndarray | None = None,
        E: np.ndarray | None = None,
        H: np.ndarray | None = None,
        qvec: np.ndarray | None = None,
        tvec: np.ndarray | None = None,
    ) -> None:
        """A verified pair, arrays oriented from ``image_id1`` to ``image_id2`` (re-oriented here if needed).

        Like COLMAP 3.8's ``WriteTwoViewGeometry``: 3×3 matrices row-major, zeros for a matrix not estimated,
        identity qvec (w, x, y, z) and zero tvec when there is no relative pose.
        """
        inliers = np.asarray(inlier_matches).reshape(-1, 2)
        F = np.zeros((3, 3)) if F is None else np.asarray(F, np.float64)
        E = np.zeros((3, 3)) if E is None else np.asarray(E, np.float64)
        H = np.zeros((3, 3)) if H is None else np.asarray(H, np.float64)
        qvec = np.array([1.0, 0.0, 0.0, 0.0]) if qvec is None else np.asarray(qvec, np.float64)
        tvec = np.zeros(3) if tvec is None else np.asarray(tvec, np.float64)
        if image_id1 > image_id2:  # COLMAP 3.8: transpose F and E, invert H and the relative pose
            inliers = inliers[:, ::-1]
            F, E = F.T, E.T
            H = np.linalg.inv(H) if np.any(H) else H
            w, x, y, z = qvec
            R = _rotation(qvec)
            qvec, tvec = np.array([w, -x, -y, -z]), -R.T @ tvec
        self.connection.execute(
            "INSERT INTO two_view_geometries(pair_id, rows, cols, data, config, F, E, H, qvec, tvec) "
            "VALUES(?,?,?,?,?,?,?,?,?,?)",
            (
                pair_id(image_id1, image_id2),
                *_blob(inliers, np.uint32),
                int(config),
                np.ascontiguousarray(F).tobytes(),  # C order = row-major
                np.ascontiguousarray(E).tobytes(),
                np.ascontiguousarray(H).tobytes(),
                np.ascontiguousarray(qvec).tobytes(),
                np.ascontiguousarray(tvec).tobytes(),
            ),
        )


def _rotation(qvec: np.ndarray) -> np.ndarray:
    """3×3 rotation of a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(qvec, np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def write_legacy_database(
    db_path: Path,
    images: Iterable["DatabaseImage"],  # noqa: F821 (matcher.colmap_db.DatabaseImage)
    pairs: Iterable[tuple[str, str, PairMatches]],
    config: ExportConfig,
) -> dict[str, int]:
    """:func:`matcher.colmap_db.write_database` in the COLMAP 3.8 layout: same arguments, content and counts.

    Written under a temporary name and renamed when complete.
    """
    from matcher.colmap_db import (
        colmap_descriptors,
        colmap_keypoints,
        images_with_cameras,
        new_counts,
        partial_path,
        write_pairs,
    )

    db_path = Path(db_path)
    tmp_path = partial_path(db_path)
    _discard(tmp_path)
    ids: dict[str, int] = {}
    counts = new_counts()
    try:
        with LegacyDatabase(tmp_path) as db:
            camera_id = 0
            for image_id, (image, camera) in enumerate(images_with_cameras(images, config), start=1):
                if camera is not None:
                    camera_id += 1
                    db.write_camera(
                        camera_id, int(camera.model), int(camera.width), int(camera.height), camera.params,
                        bool(camera.has_prior_focal_length),
                    )
                    counts["cameras"] += 1
                db.write_image(image_id, image.name, camera_id)
                ids[image.name] = image_id
                db.write_keypoints(image_id, colmap_keypoints(image.features))
                db.write_descriptors(image_id, colmap_descriptors(image.features))
                counts["images"] += 1
                counts["keypoints"] += len(image.features)
            write_pairs(pairs, ids, counts, db.write_matches, lambda pair: db.write_two_view_geometry(
                pair.id1, pair.id2, pair.config, pair.inlier_matches, F=pair.F, H=pair.H))
    except BaseException as exc:
        _discard(tmp_path)
        _raise_storage_error(exc, db_path)
        raise
    os.replace(tmp_path, db_path)
    return counts


def _discard(tmp_path: Path) -> None:
    """Remove a partial database and SQLite's files beside it (as :mod:`matcher.colmap_db` does)."""
    from matcher.colmap_db import _remove_partial  # one home for the list of SQLite's side files

    _remove_partial(tmp_path)


def _raise_storage_error(exc: BaseException, db_path: Path) -> None:
    """A failed write (disk full, I/O error, read-only folder) as one line, like ``write_database``."""
    from matcher.errors import StorageError

    if isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, FileExistsError):
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"{db_path}: cannot write the database ({text})") from None


def convert_database(in_path: Path, out_path: Path, colmap_version: str, overwrite: bool = False) -> str:
    """Write the database ``in_path`` (any schema pycolmap opens; read through :mod:`matcher.colmap_db`) to
    ``out_path`` for COLMAP ``colmap_version``: the 3.8 layout before 3.12, pycolmap's schema otherwise.

    Ids, cameras, keypoints, descriptors, matches and two-view geometries are copied as they are; rigs, frames
    and pose priors are not (COLMAP 3.8 has none). ``in_path`` is not modified. Returns the schema written
    (:func:`schema_name`).
    """
    from matcher.colmap_db import partial_path, read_database_records, upgrade_database
    from matcher.errors import DatabaseExistsError

    in_path, out_path = Path(in_path), Path(out_path)
    schema = schema_name(colmap_version)
    if out_path.exists() and not overwrite:
        raise DatabaseExistsError(f"{out_path}: database exists; pass --overwrite to replace it")
    if out_path.resolve() == in_path.resolve():
        raise DatabaseExistsError(f"{out_path}: the output must be another file than the input")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not is_legacy_version(colmap_version):
        upgrade_database(in_path, out_path)
        return schema
    tmp_path = partial_path(out_path)
    _discard(tmp_path)
    try:
        with LegacyDatabase(tmp_path) as db:
            for record in read_database_records(in_path):
                kind = record[0]
                if kind == "camera":
                    db.write_camera(*record[1:])
                elif kind == "image":
                    db.write_image(*record[1:])
                elif kind == "keypoints":
                    image_id, keypoints = record[1:]
                    if keypoints.shape[1] == 6:  # affine shape a11 a12 a21 a22 (COLMAP >= 3.12 SIFT): scale, angle
                        a11, a21 = keypoints[:, 2], keypoints[:, 4]
                        keypoints = np.stack(
                            [keypoints[:, 0], keypoints[:, 1], np.hypot(a11, a21), np.arctan2(a21, a11)], 1
                        )
                    elif keypoints.shape[1] == 2:  # positions only: COLMAP reads scale 1, orientation 0
                        keypoints = np.concatenate([keypoints, np.tile([1.0, 0.0], (len(keypoints), 1))], 1)
                    db.write_keypoints(image_id, keypoints)
                elif kind == "descriptors":
                    image_id, descriptors, type_name = record[1:]
                    if descriptors.dtype != np.uint8:
                        raise ConfigError(
                            f"{in_path}: image {image_id} has {type_name} {descriptors.dtype} descriptors; "
                            "COLMAP 3.x stores uint8 SIFT descriptors only"
                        )
                    db.write_descriptors(image_id, descriptors)
                elif kind == "matches":
                    db.write_matches(*record[1:])
                elif kind == "geometry":
                    g = record[1]
                    db.write_two_view_geometry(g.id1, g.id2, g.config, g.inlier_matches, g.F, g.E, g.H, g.qvec, g.tvec)
    except BaseException as exc:
        _discard(tmp_path)
        _raise_storage_error(exc, out_path)
        raise
    os.replace(tmp_path, out_path)
    return schema
