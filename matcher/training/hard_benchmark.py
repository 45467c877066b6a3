"""A hard, descriptor-independent patch benchmark on scenes with known cameras.

Positives are the descriptor-free tracks of :mod:`matcher.training.gt_tracks`: every pair of views of a track,
whether or not any descriptor would match it. Each positive pair (view a, keypoint p) ↔ (view b, keypoint q) is
binned by the **viewpoint angle** (the angle at the 3D point between the rays to the two camera centres) and by
the **scale ratio** of the two detected keypoints (larger σ / smaller σ). It is used in both directions.

For a directed pair p → view b, the candidates are *all* keypoints the detector found in view b (the matcher's
real competition), except those within ``max(exclusion_px, σ_q / 2)`` of q (the same blob). From them:

* **mAP**: the rank of q among the candidates by descriptor similarity; with one positive, AP = 1 / rank. The
  mean over a bin's directed pairs is its mAP (HPatches' matching task, with the detector's own keypoints).
* **FPR95**: verification pairs made of the bin's positives and, per positive, hard negatives: the
  ``spatial_negatives`` keypoints of view b nearest to q (descriptor-independent) and the most similar
  candidate by this descriptor (its own hardest negative). FPR at 95 % recall of the positives.

A descriptor is any function ``View -> (N, 128)`` unit rows for all keypoints of the view (see
:func:`patch_describer` and :func:`opencv_rootsift_describer`).

Two orientation protocols: **one** (published, 2026-12-01 06:50): each keypoint described at the one orientation
``detect_keypoints`` keeps. **peaks**: views detected with ``DetectionConfig.max_orientations`` k > 1, each keypoint
described at its orientation and its extra orientation peaks (``Keypoints.orientation_rows``), and the similarity
of two keypoints is the maximum over their rows (``score_pairs(..., owners=orientation_owner(...))``), as the
pipeline's matcher scores them with that setting. The same keypoints (the budget counts locations), tracks,
positives and negatives in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from matcher.descriptors.rootsift import RootSIFT
from matcher.detect import Keypoints
from matcher.patches import DEFAULT_MAGNIFICATION, extract_patches, lafs_from_keypoints
from matcher.training.gt_tracks import TrackConfig, Tracks, View, build_tracks, decoy_views
from matcher.training.metrics import fpr95

__all__ = [
    "ANGLE_BINS",
    "SCALE_BINS",
    "cached_tracks",
    "ChanceRate",
    "chance_rate",
    "PositivePairs",
    "positive_pairs",
    "DirectedScores",
    "score_pairs",
    "bin_metrics",
    "ratio_test_curve",
    "orientation_owner",
    "view_patches",
    "patch_describer",
    "opencv_rootsift_describer",
    "PairGeometry",
    "pair_geometry",
    "spatial_neighbours",
    "threshold_at_recall",
]

#: viewpoint-angle bins in degrees, [low, high).
ANGLE_BINS: tuple[tuple[float, float], ...] = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0))
#: scale-ratio bins (larger σ / smaller σ), [low, high).
SCALE_BINS: tuple[tuple[float, float], ...] = ((1.0, 1.25), (1.25, 2.0), (2.0, np.inf))

Describer = Callable[..., np.ndarray]


def orientation_owner(keypoints: Keypoints) -> np.ndarray:
    """(N + M,) int64: the keypoint described by each row of ``keypoints.orientation_rows()`` (the N keypoints, then
    their M extra orientations)."""
    extra = keypoints.extra_index if keypoints.num_extra else np.zeros(0, np.int64)
    return np.r_[np.arange(len(keypoints)), extra].astype(np.int64)


def cached_tracks(views: list[View], cache_file: Path | None, save: bool = False,
                  config: TrackConfig | None = None) -> Tracks:
    """A scene's benchmark tracks: read from ``cache_file`` (an ``.npz``) when it exists, else built from ``views``
    with ``config`` (and written there when ``save``). The file does not record the rule: keep one file per rule."""
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as f:
            return Tracks(f["points"], f["track"], f["view"], f["keypoint"])
    tracks = build_tracks(views, config)
    if save and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, points=tracks.points, track=tracks.track, view=tracks.view, keypoint=tracks.keypoint)
    return tracks


@dataclass
class PositivePairs:
    """Unordered positive pairs (M,): views ``view_a < view_b``, keypoints, ``angle`` (degrees) and
    ``scale_ratio`` (>= 1)."""

    view_a: np.ndarray
    kp_a: np.ndarray
    view_b: np.ndarray
    kp_b: np.ndarray
    angle: np.ndarray
    scale_ratio: np.ndarray

    def __len__(self) -> int:
        return int(self.view_a.size)


def positive_pairs(views: list[View], tracks: Tracks) -> PositivePairs:
    """Every pair of views of every track, with its viewpoint angle and scale ratio."""
    centres = np.stack([v.centre for v in views])
    cols: list[list[np.ndarray]] = [[] for _ in range(6)]
    starts = np.flatnonzero(np.r_[True, tracks.track[1:] != tracks.track[:-1]])
    starts = starts if tracks.track.size else starts[:0]
    ends = np.r_[starts[1:], tracks.track.size]
    lengths = ends - starts
    for length in np.unique(lengths):
        sel = starts[lengths == length]
        ia, ib = np.triu_indices(int(length), 1)
        rows_a = sel[:, None] + ia[None]
        rows_b = sel[:, None] + ib[None]
        X = tracks.points[tracks.track[sel]][:, None]  # (T, 1, 3)
        ra = centres[tracks.view[rows_a]] - X
        rb = centres[tracks.view[rows_b]] - X
        cos = (ra * rb).sum(-1) / (np.linalg.norm(ra, axis=-1) * np.linalg.norm(rb, axis=-1))
        sa = np.array([views[v].keypoints.scales[k] for v, k in zip(tracks.view[rows_a].ravel(),
                                                                     tracks.keypoint[rows_a].ravel())])
        sb = np.array([views[v].keypoints.scales[k] for v, k in zip(tracks.view[rows_b].ravel(),
                                                                     tracks.keypoint[rows_b].ravel())])
        cols[0].append(tracks.view[rows_a].ravel())
        cols[1].append(tracks.keypoint[rows_a].ravel())
        cols[2].append(tracks.view[rows_b].ravel())
        cols[3].append(tracks.keypoint[rows_b].ravel())
        cols[4].append(np.degrees(np.arccos(np.clip(cos, -1, 1))).ravel())
        cols[5].append((np.maximum(sa, sb) / np.minimum(sa, sb)).astype(np.float64))
    if not cols[0]:
        z = np.zeros(0, np.int64)
        return PositivePairs(z, z, z, z, np.zeros(0), np.zeros(0))
    return PositivePairs(*(np.concatenate(c) for c in cols))


@dataclass
class ChanceRate:
    """The track builder's null test on one scene: tracks and positive pairs per angle bin (:data:`ANGLE_BINS`,
    then all angles) from the real keypoints and from :func:`~matcher.training.gt_tracks.decoy_views`.
    ``decoy_pairs / real_pairs`` estimates the share of the real positives that are chance alignments (an upper
    estimate: on the real keypoints true tracks also claim keypoints a chance alignment would need)."""

    real_tracks: int
    decoy_tracks: int
    real_pairs: np.ndarray
    decoy_pairs: np.ndarray

    @property
    def share(self) -> np.ndarray:
        """(len(ANGLE_BINS) + 1,) decoy over real positive pairs per bin (NaN where no real pair)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.real_pairs > 0, self.decoy_pairs / np.maximum(self.real_pairs, 1), np.nan)


def _pairs_per_angle_bin(views: list[View], tracks: Tracks) -> np.ndarray:
    angle = positive_pairs(views, tracks).angle
    return np.array([np.sum((angle >= lo) & (angle < hi)) for lo, hi in ANGLE_BINS] + [angle.size], np.int64)


def chance_rate(views: list[View], config: TrackConfig | None = None, shift_px: float = 48.0, seed: int = 0,
                real: Tracks | None = None) -> ChanceRate:
    """Null test of :func:`~matcher.training.gt_tracks.build_tracks` with ``config``: the same build on decoy
    keypoints that keep each view's density and scales but no true correspondence (``shift_px``, ``seed``: see
    :func:`~matcher.training.gt_tracks.decoy_views`). ``real``: the real tracks if already built with ``config``."""
    real = build_tracks(views, config) if real is None else real
    decoys = decoy_views(views, shift_px, seed)
    decoy = build_tracks(decoys, config)
    return ChanceRate(len(real), len(decoy), _pairs_per_angle_bin(views, real), _pairs_per_angle_bin(decoys, decoy))


@dataclass
class DirectedScores:
    """Scores of the directed positive pairs (2M: a→b then b→a) for one descriptor.

    ``positive`` (2M,), ``hardest`` (2M,) the most similar non-matching candidate, ``spatial`` (2M, S) the
    spatial-neighbour negatives (NaN where view b has fewer), ``rank`` (2M,) rank of the positive (1 = first);
    for the ratio test, ``first``/``second`` (2M,) the two highest similarities over all of view b's keypoints
    and ``first_correct`` (2M,) whether the first lies in q's exclusion zone (a correct nearest neighbour).
    """

    positive: np.ndarray
    hardest: np.ndarray
    spatial: np.ndarray
    rank: np.ndarray
    first: np.ndarray
    second: np.ndarray
    first_correct: np.ndarray


def score_pairs(
    views: list[View],
    pairs: PositivePairs,
    descriptors: list[np.ndarray],
    spatial_negatives: int = 4,
    exclusion_px: float = 3.0,
    chunk: int = 2048,
    owners: list[np.ndarray] | None = None,
) -> DirectedScores:
    """Score both directions of every positive pair against all keypoints of the target view.

    Args:
        views: the views (keypoints give the exclusion zone and spatial neighbours).
        pairs: :func:`positive_pairs`.
        descriptors: per view, (N_v, D) unit rows for all its keypoints, or (K_v, D) rows owned by ``owners``.
        owners: per view, (K_v,) the keypoint of each descriptor row, every keypoint at least once, in any order
            (:func:`orientation_owner`); the similarity of two keypoints is then the maximum over their rows.
            None: one row per keypoint.
    """
    src_v = np.r_[pairs.view_a, pairs.view_b]
    src_k = np.r_[pairs.kp_a, pairs.kp_b]
    dst_v = np.r_[pairs.view_b, pairs.view_a]
    dst_k = np.r_[pairs.kp_b, pairs.kp_a]
    n = src_v.size
    positive = np.zeros(n)
    hardest = np.full(n, -np.inf)
    spatial = np.full((n, spatial_negatives), np.nan)
    rank = np.ones(n, np.int64)
    first = np.zeros(n)
    second = np.zeros(n)
    first_correct = np.zeros(n, bool)
    desc = [torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)) for d in descriptors]
    if owners is None:
        owners = [np.arange(len(v.keypoints)) for v in views]
    else:  # each keypoint's rows together
        order = [np.argsort(o, kind="stable") for o in owners]
        desc = [d[torch.from_numpy(i)] for d, i in zip(desc, order)]
        owners = [o[i] for o, i in zip(owners, order)]
    all_desc = torch.cat(desc)
    kp_offset = np.r_[0, np.cumsum([len(v.keypoints) for v in views])]
    row_offset = np.r_[0, np.cumsum([d.shape[0] for d in desc])]
    row_start = np.concatenate([np.searchsorted(o, np.arange(len(v.keypoints))) + row_offset[i]
                                for i, (v, o) in enumerate(zip(views, owners))] + [row_offset[-1:]]).astype(np.int64)
    for b in np.unique(dst_v):
        rows_all = np.flatnonzero(dst_v == b)
        xy_b = torch.from_numpy(views[b].keypoints.xy.astype(np.float32))
        for start in range(0, rows_all.size, chunk):
            rows = rows_all[start : start + chunk]
            sims = _keypoint_similarities(all_desc, row_start, kp_offset[src_v[rows]] + src_k[rows], desc[b], owners[b],
                                          len(views[b].keypoints))  # (R, N_b)
            q = torch.from_numpy(dst_k[rows])
            pos = sims[torch.arange(rows.size), q]
            radius = torch.from_numpy(np.maximum(exclusion_px, 0.5 * views[b].keypoints.scales[dst_k[rows]]))
            dist = torch.cdist(xy_b[q], xy_b)  # (R, N_b)
            excluded = dist < radius[:, None].float()
            sims_neg = sims.masked_fill(excluded, -np.inf)
            positive[rows] = pos.numpy()
            hardest[rows] = sims_neg.max(1).values.numpy()
            rank[rows] = 1 + (sims_neg > pos[:, None]).sum(1).numpy()
            top = sims.topk(min(2, sims.shape[1]), dim=1)
            first[rows] = top.values[:, 0].numpy()
            second[rows] = top.values[:, -1].numpy()
            first_correct[rows] = excluded.gather(1, top.indices[:, :1])[:, 0].numpy()
            k = min(spatial_negatives, xy_b.shape[0])
            nearest = dist.masked_fill(excluded, np.inf).topk(k, dim=1, largest=False)
            vals = sims.gather(1, nearest.indices)
            vals[~torch.isfinite(nearest.values)] = float("nan")
            spatial[rows, :k] = vals.numpy()
    return DirectedScores(positive, hardest, spatial, rank, first, second, first_correct)


def _keypoint_similarities(all_desc: torch.Tensor, row_start: np.ndarray, anchors: np.ndarray, desc_b: torch.Tensor,
                           owner_b: np.ndarray, n_b: int) -> torch.Tensor:
    """(R, n_b) similarity of each anchor keypoint to every keypoint of a view b: the maximum over both keypoints'
    descriptor rows (a plain matrix product when every keypoint has one row).

    ``all_desc`` (rows of all views, D); ``row_start`` (keypoints of all views + 1,) the first row of each keypoint
    (CSR); ``anchors`` (R,) the anchors' keypoint indices in that concatenation; ``desc_b`` (K_b, D) and
    ``owner_b`` (K_b,) view b's rows and their keypoints.
    """
    lo = row_start[anchors]
    count = row_start[anchors + 1] - lo
    if (count == 1).all():
        sims = all_desc[torch.from_numpy(lo)] @ desc_b.T
    else:
        anchor_of_row = torch.from_numpy(np.repeat(np.arange(anchors.size), count))
        rows = np.repeat(lo - np.r_[0, np.cumsum(count)[:-1]], count) + np.arange(int(count.sum()))
        per_row = all_desc[torch.from_numpy(rows)] @ desc_b.T
        index = anchor_of_row[:, None].expand(-1, desc_b.shape[0])
        sims = torch.full((anchors.size, desc_b.shape[0]), -torch.inf).scatter_reduce(0, index, per_row, "amax")
    if desc_b.shape[0] != n_b:
        index = torch.from_numpy(owner_b).expand(sims.shape[0], -1)
        sims = torch.full((sims.shape[0], n_b), -torch.inf).scatter_reduce(1, index, sims, "amax")
    return sims


def ratio_test_curve(scores: DirectedScores, in_bin: np.ndarray, ratios: Sequence[float]) -> list[dict[str, float]]:
    """Nearest-neighbour matching with Lowe's ratio test (distance ratio of the first to the second nearest
    keypoint of view b, unit descriptors: d² = 2 − 2s) for the directed pairs of ``in_bin``.

    Returns:
        per ratio: ``recall`` (correct first neighbours that pass / pairs) and ``precision`` (correct / passing).
    """
    rows = np.flatnonzero(in_bin)
    d1 = np.sqrt(np.maximum(2.0 - 2.0 * scores.first[rows], 0.0))
    d2 = np.sqrt(np.maximum(2.0 - 2.0 * scores.second[rows], 1e-12))
    ratio = d1 / d2
    correct = scores.first_correct[rows]
    out = []
    for r in ratios:
        passing = ratio < r
        n = int(passing.sum())
        out.append({"ratio": float(r), "recall": float((passing & correct).sum() / max(rows.size, 1)),
                    "precision": float((passing & correct).sum() / n) if n else float("nan")})
    return out


def bin_metrics(scores: DirectedScores, in_bin: np.ndarray) -> dict[str, float]:
    """FPR95 and mAP of the directed pairs selected by ``in_bin`` (2M,) bool.

    Returns:
        {"fpr95", "fpr95_spatial" (the spatial negatives only: the same negatives for every descriptor), "map",
        "positives" (directed pairs), "negatives"}; NaN metrics when the bin is empty.
    """
    rows = np.flatnonzero(in_bin)
    if rows.size == 0:
        return {"fpr95": float("nan"), "fpr95_spatial": float("nan"), "map": float("nan"), "positives": 0,
                "negatives": 0}
    negatives = np.concatenate([scores.hardest[rows][np.isfinite(scores.hardest[rows])],
                                scores.spatial[rows][np.isfinite(scores.spatial[rows])]])
    labels = np.r_[np.ones(rows.size), np.zeros(negatives.size)]
    values = np.r_[scores.positive[rows], negatives]
    spatial = scores.spatial[rows][np.isfinite(scores.spatial[rows])]
    return {
        "fpr95": fpr95(labels, values),
        "fpr95_spatial": fpr95(np.r_[np.ones(rows.size), np.zeros(spatial.size)], np.r_[scores.positive[rows], spatial]),
        "map": float(np.mean(1.0 / scores.rank[rows])),
        "positives": int(rows.size),
        "negatives": int(negatives.size),
    }


def view_patches(view: View, magnification: float = DEFAULT_MAGNIFICATION,
                 all_orientations: bool = False) -> torch.Tensor:
    """(N, 1, 32, 32) patches of all keypoints of ``view``, cut by the pipeline's code where they were detected
    (``view.patch_keypoints``: lens distortion left in when the cameras come from a reconstruction);
    ``all_orientations``: (N + M, 1, 32, 32), also at the M extra orientations (``Keypoints.orientation_rows``)."""
    keypoints = view.patch_keypoints.orientation_rows() if all_orientations else view.patch_keypoints
    return extract_patches(view.gray, lafs_from_keypoints(keypoints, magnification))


def patch_describer(describe: Callable[[torch.Tensor], torch.Tensor], magnification: float = DEFAULT_MAGNIFICATION) -> Describer:
    """A describer from a patch descriptor ``(N, 1, 32, 32) -> (N, D)`` (e.g. SDGMNet, kornia RootSIFT, TFeat):
    ``run(view, all_orientations=False)`` -> (N, D) unit rows, or (N + M, D) as :func:`view_patches`."""

    def run(view: View, all_orientations: bool = False) -> np.ndarray:
        patches = view_patches(view, magnification, all_orientations)
        return torch.nn.functional.normalize(describe(patches).float(), dim=1).numpy()

    return run


def opencv_rootsift_describer() -> Describer:
    """The pipeline's RootSIFT: OpenCV SIFT on the image at the detected keypoints, RootSIFT-normalised:
    ``run(view, all_orientations=False)`` -> (N, 128), or (N + M, 128) also at the extra orientations (OpenCV
    describes several keypoints at one location)."""
    rootsift = RootSIFT()

    def run(view: View, all_orientations: bool = False) -> np.ndarray:
        keypoints = view.patch_keypoints.orientation_rows() if all_orientations else view.patch_keypoints
        return rootsift.describe(view.gray, keypoints)

    return run


# --- Diagnostics of the positives (why FPR95 is high); the metrics above do not use them. ---


@dataclass
class PairGeometry:
    """Descriptor-independent geometry of the unordered positive pairs (M,) of :func:`positive_pairs`.

    ``orientation_error`` (degrees, [-180, 180)): the change of the detected orientation measured from the
    epipolar direction at each keypoint, ``(θ_b − φ_b) − (θ_a − φ_a)``. The local map from view a to view b
    takes the epipolar line through p to the one through q, and with ``φ`` the direction of the tangent
    ``u_a − u_b`` (u: unit vectors from the point to the camera centres) as projected into each view, it takes
    ``φ_a`` to ``φ_b`` with the sign kept for any surface both cameras see. For a near-similarity local map the
    difference is the error of the detector's orientation; for a tilted one it also holds the map's shear (up to
    ~19° at tilt 2, i.e. 60° off a plane's normal).
    ``scale_error``: log2 of the detected σ_b/σ_a over the depth-predicted ratio (f_b/z_b)/(f_a/z_a) (the tracks
    keep |scale_error| < log2 1.5).
    """

    orientation_error: np.ndarray
    scale_error: np.ndarray


def _epipolar_direction(P: np.ndarray, X: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Angles (radians, counter-clockwise on screen) of the 3D directions D (M, 3) at points X (M, 3) projected
    by the projection matrices P (M, 3, 4)."""
    h = np.einsum("mij,mj->mi", P[:, :, :3], X) + P[:, :, 3]
    z = h[:, 2:3]
    xy = h[:, :2] / z
    J = (P[:, :2, :3] - xy[:, :, None] * P[:, 2:3, :3]) / z[:, :, None]  # (M, 2, 3) Jacobian of the projection
    d = np.einsum("mij,mj->mi", J, D)
    return np.arctan2(-d[:, 1], d[:, 0])  # image y points down


def pair_geometry(views: list[View], tracks: Tracks, pairs: PositivePairs) -> PairGeometry:
    """Orientation and scale consistency of every positive pair (see :class:`PairGeometry`)."""
    track_of = [np.full(len(v.keypoints), -1, np.int64) for v in views]
    for t, v, k in zip(tracks.track, tracks.view, tracks.keypoint):
        track_of[v][k] = t
    X = tracks.points[np.array([track_of[v][k] for v, k in zip(pairs.view_a, pairs.kp_a)], np.int64)]
    P = np.stack([v.P for v in views])
    centres = np.stack([v.centre for v in views])
    u_a = centres[pairs.view_a] - X
    u_b = centres[pairs.view_b] - X
    D = u_a / np.linalg.norm(u_a, axis=1, keepdims=True) - u_b / np.linalg.norm(u_b, axis=1, keepdims=True)
    phi_a = _epipolar_direction(P[pairs.view_a], X, D)
    phi_b = _epipolar_direction(P[pairs.view_b], X, D)
    theta_a = np.array([views[v].keypoints.orientations[k] for v, k in zip(pairs.view_a, pairs.kp_a)], np.float64)
    theta_b = np.array([views[v].keypoints.orientations[k] for v, k in zip(pairs.view_b, pairs.kp_b)], np.float64)
    err = np.degrees((theta_b - phi_b) - (theta_a - phi_a))
    err = (err + 180.0) % 360.0 - 180.0
    sigma_a = np.array([views[v].keypoints.scales[k] for v, k in zip(pairs.view_a, pairs.kp_a)], np.float64)
    sigma_b = np.array([views[v].keypoints.scales[k] for v, k in zip(pairs.view_b, pairs.kp_b)], np.float64)
    z_a = np.einsum("mj,mj->m", P[pairs.view_a, 2, :3], X) + P[pairs.view_a, 2, 3]
    z_b = np.einsum("mj,mj->m", P[pairs.view_b, 2, :3], X) + P[pairs.view_b, 2, 3]
    focal = np.array([v.focal for v in views])
    expected = (focal[pairs.view_b] / z_b) / (focal[pairs.view_a] / z_a)
    return PairGeometry(err, np.log2(sigma_b / sigma_a / expected))


def spatial_neighbours(views: list[View], pairs: PositivePairs, spatial_negatives: int = 4,
                       exclusion_px: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Where the spatial negatives of :func:`score_pairs` lie (same order: 2M directed pairs × S neighbours).

    Returns:
        ``distance`` (2M, S) from the true keypoint q in units of σ_q, and ``scale_ratio`` (2M, S) σ_neighbour /
        σ_q; NaN where view b has fewer keypoints.
    """
    dst_v = np.r_[pairs.view_b, pairs.view_a]
    dst_k = np.r_[pairs.kp_b, pairs.kp_a]
    distance = np.full((dst_v.size, spatial_negatives), np.nan)
    ratio = np.full((dst_v.size, spatial_negatives), np.nan)
    for b in np.unique(dst_v):
        rows = np.flatnonzero(dst_v == b)
        xy_b = torch.from_numpy(views[b].keypoints.xy.astype(np.float32))
        sigma = views[b].keypoints.scales.astype(np.float64)
        q = torch.from_numpy(dst_k[rows])
        radius = torch.from_numpy(np.maximum(exclusion_px, 0.5 * sigma[dst_k[rows]]))
        dist = torch.cdist(xy_b[q], xy_b)
        dist = dist.masked_fill(dist < radius[:, None].float(), np.inf)
        k = min(spatial_negatives, xy_b.shape[0])
        nearest = dist.topk(k, dim=1, largest=False)
        found = torch.isfinite(nearest.values).numpy()
        s_q = sigma[dst_k[rows]][:, None]
        d = nearest.values.double().numpy() / s_q
        r = sigma[nearest.indices.numpy()] / s_q
        distance[rows, :k] = np.where(found, d, np.nan)
        ratio[rows, :k] = np.where(found, r, np.nan)
    return distance, ratio


def threshold_at_recall(positive: np.ndarray, recall: float = 0.95) -> float:
    """The similarity threshold at which ``recall`` of the positives (P,) are accepted (FPR95's threshold)."""
    ordered = np.sort(positive)[::-1]
    return float(ordered[int(np.ceil(recall * ordered.size - 1e-9)) - 1])
