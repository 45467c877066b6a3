"""The intermediate HDF5 files: the only module that reads or writes them.

``<db>.features.h5``, one group per image (its name, ``/`` escaped as ``%2F``, ``%`` as ``%25``):

    keypoints     (N, 2) float32  full-resolution pixels, centre of the top-left pixel = (0, 0)
    scales        (N,)   float32  DoG sigma in full-resolution pixels
    orientations  (N,)   float32  radians, counter-clockwise on screen (kornia's LAF convention)
    scores        (N,)   float32  DoG response
    descriptors   (N, D) float32  unit rows
    attrs: width, height (full resolution), descriptor (name), complete (written last)

``<db>.matches.h5``, one group per pair ``<name1>|<name2>`` (escaped names, ``name1`` < ``name2``):

    matches   (M, 2) int32   indices into the keypoints of name1 and name2 (mutual nearest neighbours)
    scores    (M,)   float32 descriptor similarity (cosine)
    inliers   (M,)   bool    RANSAC inliers of the verified model (all False when unverified)
    F         (3, 3) float64 fundamental matrix, x2^T F x1 = 0 (when fitted)
    H         (3, 3) float64 homography, x2 ~ H x1 (for "planar" pairs)
    attrs: model ("fundamental" | "planar" | "none"), num_inliers, complete (written last)

A group without ``complete`` is a write that was interrupted: it is deleted and redone on the next run.
Every group is flushed to disk when written, so a killed run loses at most the group in progress.

Patch datasets (training), one file each, written whole and renamed into place:

    patches   (N, 32, 32) uint8   grey patches (x / 255 gives the network's [0, 1] input)
    labels    (N,)        int64   identity (3D point or warped keypoint)
    photo     (N,)        int64   index into attrs["names"] of the source image
    view      (N,)        int64   keypoint index in that image (or warp index for homography sets)
    attrs: names (JSON list), source (free text), magnification
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from matcher.errors import IncompatibleDatabaseError

__all__ = [
    "ImageFeatures",
    "PairMatches",
    "FeatureStore",
    "MatchStore",
    "escape_name",
    "pair_key",
    "write_patch_dataset",
    "read_patch_dataset",
]


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

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


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


class _Store:
    kind = ""

    def __init__(self, path: Path, mode: str = "a") -> None:
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, mode)
        except OSError as exc:
            raise IncompatibleDatabaseError(
                f"{self.path}: cannot open {self.kind} file ({str(exc).splitlines()[0]}); delete it to start over"
            ) from None
        if mode != "r":
            self._drop_incomplete()

    def _drop_incomplete(self) -> None:
        for key in list(self.file.keys()):
            if not self.file[key].attrs.get("complete", False):
                del self.file[key]

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class FeatureStore(_Store):
    """Per-image features in ``features.h5``."""

    kind = "features"

    def names(self) -> set[str]:
        return {k.replace("%2F", "/").replace("%25", "%") for k in self.file.keys()}

    def has(self, name: str) -> bool:
        key = escape_name(name)
        return key in self.file and bool(self.file[key].attrs.get("complete", False))

    def descriptor_of(self, name: str) -> str:
        return str(self.file[escape_name(name)].attrs["descriptor"])

    def write(self, name: str, features: ImageFeatures, descriptor: str) -> None:
        key = escape_name(name)
        if key in self.file:
            del self.file[key]
        group = self.file.create_group(key)
        group.create_dataset("keypoints", data=features.keypoints.astype(np.float32))
        group.create_dataset("scales", data=features.scales.astype(np.float32))
        group.create_dataset("orientations", data=features.orientations.astype(np.float32))
        group.create_dataset("scores", data=features.scores.astype(np.float32))
        group.create_dataset("descriptors", data=features.descriptors.astype(np.float32))
        group.attrs["width"] = features.width
        group.attrs["height"] = features.height
        group.attrs["descriptor"] = descriptor
        group.attrs["complete"] = True
        self.file.flush()

    def read(self, name: str) -> ImageFeatures:
        group = self.file[escape_name(name)]
        return ImageFeatures(
            keypoints=group["keypoints"][()],
            scales=group["scales"][()],
            orientations=group["orientations"][()],
            scores=group["scores"][()],
            descriptors=group["descriptors"][()],
            width=int(group.attrs["width"]),
            height=int(group.attrs["height"]),
        )

    def read_keypoints(self, name: str) -> np.ndarray:
        return self.file[escape_name(name)]["keypoints"][()]


class MatchStore(_Store):
    """Per-pair matches in ``matches.h5``."""

    kind = "matches"

    def has(self, name1: str, name2: str) -> bool:
        key = pair_key(name1, name2)
        return key in self.file and bool(self.file[key].attrs.get("complete", False))

    def write(self, name1: str, name2: str, pair: PairMatches) -> None:
        key = pair_key(name1, name2)
        if key in self.file:
            del self.file[key]
        group = self.file.create_group(key)
        group.create_dataset("matches", data=pair.matches.astype(np.int32).reshape(-1, 2))
        group.create_dataset("scores", data=pair.scores.astype(np.float32))
        group.create_dataset("inliers", data=pair.inliers.astype(bool))
        for key in ("F", "H"):
            value = getattr(pair, key)
            if value is not None:
                group.create_dataset(key, data=np.asarray(value, np.float64))
        group.attrs["model"] = pair.model
        group.attrs["num_inliers"] = pair.num_inliers
        group.attrs["complete"] = True
        self.file.flush()

    def read(self, name1: str, name2: str) -> PairMatches:
        group = self.file[pair_key(name1, name2)]
        return PairMatches(
            matches=group["matches"][()],
            scores=group["scores"][()],
            inliers=group["inliers"][()],
            F=group["F"][()] if "F" in group else None,
            H=group["H"][()] if "H" in group else None,
            model=str(group.attrs["model"]),
        )


def write_patch_dataset(
    path: Path,
    patches: np.ndarray,
    labels: np.ndarray,
    photo: np.ndarray,
    view: np.ndarray,
    names: list[str],
    source: str,
    magnification: float,
) -> None:
    """Write a patch dataset (layout in the module docstring); ``patches`` (N, 32, 32) uint8."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("patches", data=patches.astype(np.uint8), chunks=(min(len(patches), 4096), 32, 32))
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.create_dataset("photo", data=photo.astype(np.int64))
        f.create_dataset("view", data=view.astype(np.int64))
        f.attrs["names"] = json.dumps(list(names))
        f.attrs["source"] = source
        f.attrs["magnification"] = float(magnification)
    tmp.replace(path)


def read_patch_dataset(path: Path) -> dict:
    """Read a patch dataset: a dict of the arrays and the attributes (``names`` as a list)."""
    import json

    try:
        with h5py.File(Path(path), "r") as f:
            out = {key: f[key][()] for key in ("patches", "labels", "photo", "view")}
            out["names"] = json.loads(f.attrs["names"])
            out["source"] = str(f.attrs["source"])
            out["magnification"] = float(f.attrs["magnification"])
    except (OSError, KeyError) as exc:
        raise IncompatibleDatabaseError(f"{path}: not a patch dataset ({exc})") from None
    return out
