"""The intermediate HDF5 files: the only module that reads or writes them.

``<db>.features.h5``, one group per image (its name, ``/`` escaped as ``%2F``, ``%`` as ``%25``):

    keypoints     (N, 2) float32  full-resolution pixels, centre of the top-left pixel = (0, 0)
    scales        (N,)   float32  DoG sigma in full-resolution pixels
    orientations  (N,)   float32  radians, counter-clockwise on screen (kornia's LAF convention)
    scores        (N,)   float32  DoG response
    descriptors   (N, D) float32  unit rows
    extra_orientations (M,) float32  further orientations (radians) of keypoints described at several
                                     (``detection.max_orientations`` > 1); the three ``extra_`` datasets are
                                     absent when M = 0 (files written before they existed: none)
    extra_index        (M,) int32    the keypoint each belongs to, ascending
    extra_descriptors  (M, D) float32 their descriptors, unit rows
    attrs: width, height (full resolution), descriptor (name), content (SHA-1 of the image file),
           focal (pixels; COLMAP's EXIF prior or its 1.2 * max(w, h) guess), focal_prior (bool: from EXIF),
           complete (written last)

``<db>.matches.h5``, one group per pair ``<name1>|<name2>`` (escaped names, ``name1`` < ``name2``):

    matches   (M, 2) int32   indices into the keypoints of name1 and name2 (mutual nearest neighbours)
    scores    (M,)   float32 descriptor similarity (cosine)
    inliers   (M,)   bool    RANSAC inliers of the verified model (all False when unverified)
    F         (3, 3) float64 fundamental matrix, x2^T F x1 = 0 (when fitted)
    H         (3, 3) float64 homography, x2 ~ H x1 (for "planar" pairs)
    attrs: model ("fundamental" | "planar" | "none"), num_inliers, content1, content2 (SHA-1 of the two image
           files), complete (written last)

A group without ``complete`` is a write that was interrupted: it is deleted and redone on the next run.
Every group is flushed to disk when written, so a killed run loses at most the group in progress.
Datasets carry HDF5 Fletcher-32 checksums, verified on read: a damaged group is dropped and recomputed
(:meth:`FeatureStore.usable`, :meth:`MatchStore.usable`), a damaged file is recreated, never read as data.
Before each group is written the free space (disk and the process's file-size limit) is checked, so a full
disk ends the run with :class:`matcher.errors.StorageError` and leaves the file consistent for a rerun.

Patch datasets (training), one file each, written whole and renamed into place:

    patches   (N, 32, 32) uint8   grey patches (x / 255 gives the network's [0, 1] input)
    labels    (N,)        int64   identity (3D point or warped keypoint)
    photo     (N,)        int64   index into attrs["names"] of the source image
    view      (N,)        int64   keypoint index in that image (or warp index for homography sets)
    rays      (N, 3)      float32 optional (camera-track sets): unit vector from the 3D point to the view's camera
    attrs: names (JSON list), source (free text), magnification
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from matcher.errors import IncompatibleDatabaseError, StorageError

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("matcher")

__all__ = [
    "ImageFeatures",
    "PairMatches",
    "FeatureStore",
    "MatchStore",
    "ViewStore",
    "escape_name",
    "pair_key",
    "write_patch_dataset",
    "read_patch_dataset",
    "ensure_space",
    "SPACE_MARGIN",
]

SPACE_MARGIN = 256 * 1024  # bytes kept free beyond a write's payload (HDF5/SQLite metadata, page flushes)


def ensure_space(path: Path, nbytes: int, what: str) -> None:
    """Raise StorageError unless ``nbytes`` (+ :data:`SPACE_MARGIN`) more can be written to ``path``: free disk
    space of its folder and the process's file-size limit (``RLIMIT_FSIZE``), checked before the libraries
    write, because HDF5 and SQLite do not recover from a write failing half-way (a damaged file, a crash)."""
    path = Path(path)
    need = int(nbytes) + SPACE_MARGIN
    room = shutil.disk_usage(path.parent).free
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            room = min(room, soft - (path.stat().st_size if path.exists() else 0))
    if room < need:
        raise StorageError(
            f"{path}: no space left to write {what} ({need / 2**20:.1f} MiB needed, {max(room, 0) / 2**20:.1f} MiB "
            "available: disk full or file-size limit); free some space and rerun to resume"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _chunks(data: np.ndarray) -> tuple[int, ...] | None:
    """Whole rows, at most 1024 per chunk (a checksum per chunk; a damaged chunk invalidates its group).

    None (contiguous, no checksum) for scalars and empty arrays: there is nothing to checksum, and HDF5 refuses
    a chunk larger than an empty dataset."""
    if data.ndim == 0 or data.size == 0:
        return None
    return (min(len(data), 1024), *data.shape[1:])


def escape_name(name: str) -> str:
    """Image name -> HDF5 group name (no ``/``), reversible."""
    return name.replace("%", "%25").replace("/", "%2F")


def pair_key(name1: str, name2: str) -> str:
    return f"{escape_name(name1)}|{escape_name(name2)}"


@dataclass
class ImageFeatures:
    """Features of one image in full-resolution coordinates (shapes in the module docstring)."""

    keypoints: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int
    focal: float = 0.0  # pixels; 0: unknown (COLMAP's 1.2 * max(width, height) guess is used)
    focal_prior: bool = False  # the focal length comes from EXIF (COLMAP's has_prior_focal_length)
    extra_orientations: np.ndarray | None = None  # (M,) float32: further orientations of some keypoints, or None
    extra_index: np.ndarray | None = None  # (M,) int, ascending: the keypoint of each extra row
    extra_descriptors: np.ndarray | None = None  # (M, D) float32: the extra rows' descriptors

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def extras(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(extra_descriptors (M, D), extra_index (M,)) for :func:`matcher.matching.mutual_nearest_neighbours`,
        None when the keypoints have no extra orientations."""
        if self.extra_index is None or len(self.extra_index) == 0 or self.extra_descriptors is None:
            return None
        return self.extra_descriptors, self.extra_index


@dataclass
class PairMatches:
    """Matches of one pair (shapes in the module docstring)."""

    matches: np.ndarray
    scores: np.ndarray
    inliers: np.ndarray
    F: np.ndarray | None
    H: np.ndarray | None
    model: str

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


METADATA_CACHE_BYTES = 4 * 2**20
"""Upper bound of HDF5's metadata cache per open file. HDF5's default (adaptive, up to 32 MiB of entries) held
215 MiB of RSS after reading 6,000 pairs of a matches file, kept until the process ends; bounded, reading
stays flat (+15 MiB) and is no slower (bench/RESULTS.md, "Memory at 1,000 views")."""


def _open_h5(path: Path, mode: str) -> h5py.File:
    """``h5py.File`` without a chunk cache (every group is read once) and with a bounded metadata cache."""
    file = h5py.File(path, mode, rdcc_nbytes=0)
    config = file.id.get_mdc_config()
    config.set_initial_size, config.initial_size = True, METADATA_CACHE_BYTES // 4
    config.min_size, config.max_size = METADATA_CACHE_BYTES // 4, METADATA_CACHE_BYTES
    file.id.set_mdc_config(config)
    return file


class _Store:
    kind = ""

    def __init__(self, path: Path, mode: str = "a") -> None:
        self.path = Path(path)
        try:
            self.file = _open_h5(self.path, mode)
            if mode != "r":
                self._drop_incomplete()
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            if mode == "r" or "unable to lock" in str(exc).lower() or not self.path.is_file():
                raise IncompatibleDatabaseError(
                    f"{self.path}: cannot open {self.kind} file ({_first_line(exc)})"
                ) from None
            # A cache damaged beyond its groups (a crash while the disk was full, zeroed metadata): start afresh.
            log.warning("%s: damaged %s file (%s): recomputing it", self.path, self.kind, _first_line(exc))
            if getattr(self, "file", None) is not None and self.file.id.valid:
                self.close()
            self.path.unlink()
            self.file = _open_h5(self.path, mode)

    def _drop_incomplete(self) -> None:
        for key in list(self.file.keys()):
            try:
                complete = bool(self.file[key].attrs.get("complete", False))
            except (OSError, RuntimeError, KeyError, ValueError):
                complete = False
            if not complete:
                del self.file[key]

    def _write_group(self, key: str, what: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        """Write one group whole (``complete`` last) and flush; on any failure drop it and raise StorageError."""
        ensure_space(self.path, sum(a.nbytes for a in arrays.values()) + 16384, what)
        failure = None
        try:
            if key in self.file:
                del self.file[key]
            group = self.file.create_group(key)
            for name, data in arrays.items():
                chunks = _chunks(data)
                group.create_dataset(name, data=data, chunks=chunks, fletcher32=chunks is not None)
            group.attrs.update(attrs)
            group.attrs["complete"] = True
            self.file.flush()
        except (OSError, RuntimeError, ValueError) as exc:
            failure = _first_line(exc)
        group = None  # noqa: F841
        if failure is not None:
            # Out of the except block, so the exception's traceback, which holds the failed dataset open, is
            # gone: HDF5 segfaults flushing a dataset whose write failed. Then the half-written group goes
            # (else the next flush writes its metadata and damages the file).
            try:
                del self.file[key]
            except Exception:  # noqa: BLE001 (the file is then recreated on the next run)
                pass
            raise StorageError(f"{self.path}: cannot write {what} ({failure}); rerun to resume")

    def _damaged(self, key: str, what: str) -> str | None:
        """Read every dataset of ``key`` (checksums are verified on read): None if intact, else the reason."""
        try:
            group = self.file[key]
            for name in group:
                group[name][()]
            return None
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            return _first_line(exc)

    def _drop_damaged(self, key: str, what: str, reason: str) -> None:
        log.warning("%s: damaged %s (%s): recomputing", self.path, what, reason)
        try:
            del self.file[key]
        except (OSError, RuntimeError, KeyError) as exc:
            raise StorageError(f"{self.path}: damaged {self.kind} file ({_first_line(exc)}); delete it to recompute") from None

    def _read_group(self, key: str, what: str) -> h5py.Group:
        try:
            return self.file[key]
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise StorageError(f"{self.path}: cannot read {what} ({_first_line(exc)}); rerun to recompute") from None

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            try:
                self.file.close()
            except (OSError, RuntimeError) as exc:  # a full disk: the write that failed has already been reported
                log.warning("%s: not closed cleanly (%s)", self.path, _first_line(exc))


class FeatureStore(_Store):
    """Per-image features in ``features.h5``."""

    kind = "features"

    def names(self) -> set[str]:
        return {k.replace("%2F", "/").replace("%25", "%") for k in self.file.keys()}

    def has(self, name: str, content: str | None = None) -> bool:
        """A complete group for ``name`` (and, given ``content``, computed from a file with that SHA-1)."""
        key = escape_name(name)
        if key not in self.file:
            return False
        attrs = self.file[key].attrs
        return bool(attrs.get("complete", False)) and (content is None or attrs.get("content", "") == content)

    def usable(self, name: str, content: str | None = None) -> bool:
        """:meth:`has`, and every dataset reads back with a valid checksum (a damaged group is dropped, with a
        warning, so the caller recomputes it)."""
        if not self.has(name, content):
            return False
        reason = self._damaged(escape_name(name), f"features of {name}")
        if reason is not None:
            self._drop_damaged(escape_name(name), f"features of {name}", reason)
            return False
        return True

    def descriptor_of(self, name: str) -> str:
        return str(self.file[escape_name(name)].attrs["descriptor"])

    def write(self, name: str, features: ImageFeatures, descriptor: str, content: str = "") -> None:
        """Write (replace) the group of ``name``; ``content``: SHA-1 of the image file. Raises StorageError."""
        arrays = {
            "keypoints": features.keypoints.astype(np.float32),
            "scales": features.scales.astype(np.float32),
            "orientations": features.orientations.astype(np.float32),
            "scores": features.scores.astype(np.float32),
            "descriptors": features.descriptors.astype(np.float32),
        }
        if features.extras is not None:
            arrays.update(extra_orientations=np.asarray(features.extra_orientations, np.float32),
                          extra_index=np.asarray(features.extra_index, np.int32),
                          extra_descriptors=np.asarray(features.extra_descriptors, np.float32))
        attrs = {"width": features.width, "height": features.height, "descriptor": descriptor, "content": content,
                 "focal": float(features.focal), "focal_prior": bool(features.focal_prior)}
        self._write_group(escape_name(name), f"features of {name}", arrays, attrs)

    def read(self, name: str) -> ImageFeatures:
        """Raises StorageError when the group cannot be read back (checksum, damaged file)."""
        group = self._read_group(escape_name(name), f"features of {name}")
        try:
            return ImageFeatures(
                keypoints=group["keypoints"][()],
                scales=group["scales"][()],
                orientations=group["orientations"][()],
                scores=group["scores"][()],
                descriptors=group["descriptors"][()],
                width=int(group.attrs["width"]),
                height=int(group.attrs["height"]),
                focal=float(group.attrs.get("focal", 0.0)),
                focal_prior=bool(group.attrs.get("focal_prior", False)),
                **({key: group[key][()] for key in ("extra_orientations", "extra_index", "extra_descriptors")}
                   if "extra_index" in group else {}),
            )
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise StorageError(
                f"{self.path}: cannot read features of {name} ({_first_line(exc)}); rerun to recompute"
            ) from None

    def read_keypoints(self, name: str) -> np.ndarray:
        return self.file[escape_name(name)]["keypoints"][()]


class MatchStore(_Store):
    """Per-pair matches in ``matches.h5``."""

    kind = "matches"

    def has(self, name1: str, name2: str, content: tuple[str, str] | None = None) -> bool:
        """A complete group (and, given ``content``, matched from image files with these two SHA-1s)."""
        key = pair_key(name1, name2)
        if key not in self.file:
            return False
        attrs = self.file[key].attrs
        return bool(attrs.get("complete", False)) and (
            content is None or (attrs.get("content1", ""), attrs.get("content2", "")) == tuple(content)
        )

    def usable(self, name1: str, name2: str, content: tuple[str, str] | None = None) -> bool:
        """:meth:`has`, and the group reads back with valid checksums (a damaged one is dropped, with a warning)."""
        if not self.has(name1, name2, content):
            return False
        key, what = pair_key(name1, name2), f"matches of {name1} {name2}"
        reason = self._damaged(key, what)
        if reason is not None:
            self._drop_damaged(key, what, reason)
            return False
        return True

    def write(self, name1: str, name2: str, pair: PairMatches, content: tuple[str, str] = ("", "")) -> None:
        """Write (replace) the pair's group; ``content``: SHA-1s of the two image files. Raises StorageError."""
        attrs = {"model": pair.model, "num_inliers": pair.num_inliers, "content1": content[0], "content2": content[1]}
        self._write_group(pair_key(name1, name2), f"matches of {name1} {name2}", _pair_arrays(pair), attrs)

    def verified_inliers(self, name1: str, name2: str) -> int:
        """Inliers of the pair's verified model, 0 when it has none (from the group's attributes, no data read)."""
        attrs = self._read_group(pair_key(name1, name2), f"matches of {name1} {name2}").attrs
        return int(attrs.get("num_inliers", 0)) if str(attrs.get("model", "none")) != "none" else 0

    def read(self, name1: str, name2: str) -> PairMatches:
        """Raises StorageError when the group cannot be read back (checksum, damaged file)."""
        what = f"matches of {name1} {name2}"
        return _read_pair(self.path, self._read_group(pair_key(name1, name2), what), what)


class ViewStore(_Store):
    """Keypoints found on demand on synthesised views (:mod:`matcher.on_demand`), in ``views.h5``.

    A group per image and step, ``<name>@<step>`` (step 1, 2, ...: one tilt each), with the datasets of a features
    group (full-resolution pixels) plus ``shapes`` (n, 2, 2) float32, the affine frames' shapes (determinant 1);
    attrs ``tilt``, ``content`` (SHA-1 of the image file). An image's keypoints in the database are its features
    followed by its steps 1, 2, ... in order, so the indices of matches found at step k stay valid when later
    steps are added. A group per pair solved on demand, ``solved|<name1>|<name2>``, laid out as a pair of the
    matches file (its matches index the appended keypoints), plus attr ``step``. The matches file itself keeps
    the normal pass's results only, so a run without matching on demand can reuse it.
    """

    kind = "view features"

    @staticmethod
    def _step_key(name: str, step: int) -> str:
        return f"{escape_name(name)}@{step}"

    def usable_step(self, name: str, step: int, content: str | None = None) -> bool:
        """The group of ``name`` at ``step`` is complete, from this image content, and reads back intact."""
        key = self._step_key(name, step)
        if key not in self.file or (content is not None and self.file[key].attrs.get("content", "") != content):
            return False
        reason = self._damaged(key, f"view features of {name} step {step}")
        if reason is not None:
            self._drop_damaged(key, f"view features of {name} step {step}", reason)
            return False
        return True

    def steps(self, name: str) -> list[int]:
        """The steps stored for ``name`` from 1 on without a gap (a later step after a gap is not used)."""
        found, step = [], 1
        while self._step_key(name, step) in self.file:
            found.append(step)
            step += 1
        return found

    def write_step(self, name: str, step: int, tilt: float, features: ImageFeatures, shapes: np.ndarray,
                   content: str = "") -> None:
        """Write (replace) the keypoints of ``name`` found at ``step``. Raises StorageError."""
        arrays = {
            "keypoints": features.keypoints.astype(np.float32).reshape(-1, 2),
            "scales": features.scales.astype(np.float32),
            "orientations": features.orientations.astype(np.float32),
            "scores": features.scores.astype(np.float32),
            "descriptors": features.descriptors.astype(np.float32),
            "shapes": shapes.astype(np.float32).reshape(-1, 2, 2),
        }
        attrs = {"tilt": float(tilt), "content": content, "width": features.width, "height": features.height}
        self._write_group(self._step_key(name, step), f"view features of {name} step {step}", arrays, attrs)

    def read_step(self, name: str, step: int) -> tuple[ImageFeatures, np.ndarray]:
        """(features, shapes (n, 2, 2)) of ``name`` at ``step``. Raises StorageError."""
        what = f"view features of {name} step {step}"
        group = self._read_group(self._step_key(name, step), what)
        try:
            features = ImageFeatures(
                keypoints=group["keypoints"][()], scales=group["scales"][()],
                orientations=group["orientations"][()], scores=group["scores"][()],
                descriptors=group["descriptors"][()], width=int(group.attrs["width"]),
                height=int(group.attrs["height"]),
            )
            return features, group["shapes"][()]
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise StorageError(f"{self.path}: cannot read {what} ({_first_line(exc)}); rerun to recompute") from None

    def write_solved(self, name1: str, name2: str, step: int, pair: PairMatches,
                     content: tuple[str, str] = ("", "")) -> None:
        """Keep the pair's matches found on demand at ``step`` (indices into the images' appended keypoints), as
        :meth:`MatchStore.write` keeps a pair's. Raises StorageError."""
        arrays = _pair_arrays(pair)
        attrs = {"model": pair.model, "num_inliers": pair.num_inliers, "step": int(step),
                 "content1": content[0], "content2": content[1]}
        self._write_group(f"solved|{pair_key(name1, name2)}", f"on-demand matches of {name1} {name2}", arrays, attrs)

    def solved_step(self, name1: str, name2: str, content: tuple[str, str] | None = None) -> int:
        """The step at which the pair was solved on demand, 0 if it was not (or not from this content)."""
        key = f"solved|{pair_key(name1, name2)}"
        if key not in self.file:
            return 0
        attrs = self.file[key].attrs
        if content is not None and (attrs.get("content1", ""), attrs.get("content2", "")) != tuple(content):
            return 0
        return int(attrs.get("step", 0))

    def forget_solved(self, name1: str, name2: str) -> None:
        """Drop the pair solved on demand (its step keypoints of an image are gone, so its indices are stale)."""
        key = f"solved|{pair_key(name1, name2)}"
        if key in self.file:
            self._drop_damaged(key, f"on-demand matches of {name1} {name2}", "an image's step keypoints were lost")

    def read_solved(self, name1: str, name2: str) -> PairMatches:
        """The pair's matches found on demand. Raises StorageError."""
        what = f"on-demand matches of {name1} {name2}"
        return _read_pair(self.path, self._read_group(f"solved|{pair_key(name1, name2)}", what), what)


def _pair_arrays(pair: PairMatches) -> dict[str, np.ndarray]:
    arrays = {
        "matches": pair.matches.astype(np.int32).reshape(-1, 2),
        "scores": pair.scores.astype(np.float32),
        "inliers": pair.inliers.astype(bool),
    }
    for name in ("F", "H"):
        value = getattr(pair, name)
        if value is not None:
            arrays[name] = np.asarray(value, np.float64)
    return arrays


def _read_pair(path: Path, group: h5py.Group, what: str) -> PairMatches:
    try:
        return PairMatches(
            matches=group["matches"][()], scores=group["scores"][()], inliers=group["inliers"][()],
            F=group["F"][()] if "F" in group else None, H=group["H"][()] if "H" in group else None,
            model=str(group.attrs["model"]),
        )
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise StorageError(f"{path}: cannot read {what} ({_first_line(exc)}); rerun to recompute") from None


def write_patch_dataset(
    path: Path,
    patches: np.ndarray,
    labels: np.ndarray,
    photo: np.ndarray,
    view: np.ndarray,
    names: list[str],
    source: str,
    magnification: float,
    rays: np.ndarray | None = None,
) -> None:
    """Write a patch dataset (layout in the module docstring); ``patches`` (N, 32, 32) uint8, ``rays`` (N, 3)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("patches", data=patches.astype(np.uint8),
                         chunks=(min(len(patches), 4096), *patches.shape[1:]))
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.create_dataset("photo", data=photo.astype(np.int64))
        f.create_dataset("view", data=view.astype(np.int64))
        if rays is not None:
            f.create_dataset("rays", data=np.asarray(rays, np.float32).reshape(-1, 3))
        f.attrs["names"] = json.dumps(list(names))
        f.attrs["source"] = source
        f.attrs["magnification"] = float(magnification)
    tmp.replace(path)


def read_patch_dataset(path: Path) -> dict:
    """Read a patch dataset: a dict of the arrays (``rays`` None where not stored) and the attributes (``names``
    as a list)."""
    import json

    try:
        with h5py.File(Path(path), "r") as f:
            out = {key: f[key][()] for key in ("patches", "labels", "photo", "view")}
            out["rays"] = f["rays"][()] if "rays" in f else None
            out["names"] = json.loads(f.attrs["names"])
            out["source"] = str(f.attrs["source"])
            out["magnification"] = float(f.attrs["magnification"])
    except (OSError, KeyError) as exc:
        raise IncompatibleDatabaseError(f"{path}: not a patch dataset ({exc})") from None
    return out
