"""Hard patch benchmark with every orientation peak described: what keeping all of SIFT's orientations would give.

``detect_keypoints`` keeps one keypoint per location; at a blob where OpenCV's SIFT finds two or more orientation
peaks (>= 80 % of the highest) that is OpenCV's first, the smallest angle, which often differs between views
(models/sdgmnet.md, "Why FPR95 is high"). Here each such keypoint is described at every peak and the similarity of
two keypoints is the maximum over their orientations (a matcher keeping all orientations, as COLMAP's SIFT does,
would see that); ``single`` is the published protocol (one orientation, the numbers of bench/hard_patches.py).
Same tracks, positives and negatives as bench/hard_patches.py (matcher/training/hard_benchmark.py); FPR95 per
viewpoint-angle bin, per scene and pooled.

    python bench/orientation_peaks.py --cache data/hard-cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from matcher.config import DetectionConfig
from matcher.descriptors import describe_patches, load_sdgmnet
from matcher.evaluation.report import markdown_grid
from matcher.patches import extract_patches, lafs_from_keypoints
from matcher.shared_data import shared_data_dir
from matcher.training.baselines import describe_with_baseline
from matcher.training.gt_cameras import load_scene_cameras
from matcher.training.gt_tracks import View, detect_views
from matcher.training.hard_benchmark import (
    ANGLE_BINS,
    DirectedScores,
    PositivePairs,
    bin_metrics,
    cached_tracks,
    positive_pairs,
)


def orientation_peaks(view: View, detection: DetectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every orientation OpenCV found at each kept keypoint: (owner (K,) keypoint index, orientations (K,) radians),
    in OpenCV's order (the first of each keypoint is the one ``detect_keypoints`` keeps)."""
    sift = cv2.SIFT_create(nfeatures=0, nOctaveLayers=detection.n_octave_layers,
                           contrastThreshold=detection.contrast_threshold, edgeThreshold=detection.edge_threshold,
                           sigma=detection.sigma, enable_precise_upscale=True)
    peaks: dict[tuple[float, float], list[float]] = {}
    for k in sift.detect(view.gray, None):
        peaks.setdefault(k.pt, []).append(-np.deg2rad(k.angle))
    owner, angles = [], []
    for i, p in enumerate(map(tuple, view.keypoints.xy.astype(float))):
        for a in peaks[p]:
            owner.append(i)
            angles.append(a)
    return np.array(owner), np.array(angles, np.float32)


def score_max_over_orientations(views: list[View], pairs: PositivePairs, owners: list[np.ndarray],
                                descriptors: list[torch.Tensor], all_peaks: bool, exclusion_px: float = 3.0
                                ) -> DirectedScores:
    """:func:`~matcher.training.hard_benchmark.score_pairs` (positive, hardest, 4 spatial negatives) with the
    similarity of two keypoints = max over their described orientations (``all_peaks``) or the first only."""
    src_v, src_k = np.r_[pairs.view_a, pairs.view_b], np.r_[pairs.kp_a, pairs.kp_b]
    dst_v, dst_k = np.r_[pairs.view_b, pairs.view_a], np.r_[pairs.kp_b, pairs.kp_a]
    n = src_v.size
    positive, hardest, spatial = np.zeros(n), np.zeros(n), np.full((n, 4), np.nan)
    for b in np.unique(dst_v):
        rows = np.flatnonzero(dst_v == b)
        nb = len(views[b].keypoints)
        first_b = np.r_[True, owners[b][1:] != owners[b][:-1]]
        cols = torch.from_numpy(np.ones_like(first_b) if all_peaks else first_b)
        owner_b = torch.from_numpy(owners[b])[cols]
        desc_b = descriptors[b][cols]
        xy = torch.from_numpy(views[b].keypoints.xy)
        for start in range(0, rows.size, 1024):
            r = rows[start : start + 1024]
            sims = torch.full((r.size, nb), -np.inf)
            for j, (v, k) in enumerate(zip(src_v[r], src_k[r])):
                mine = np.flatnonzero(owners[v] == k)
                s = (descriptors[v][torch.from_numpy(mine if all_peaks else mine[:1])] @ desc_b.T).max(0).values
                sims[j] = torch.full((nb,), -np.inf).scatter_reduce(0, owner_b, s, "amax")
            q = torch.from_numpy(dst_k[r])
            positive[r] = sims[torch.arange(r.size), q].numpy()
            dist = torch.cdist(xy[q], xy)
            radius = np.maximum(exclusion_px, 0.5 * views[b].keypoints.scales[dst_k[r]])
            excluded = dist < torch.from_numpy(radius)[:, None]
            hardest[r] = sims.masked_fill(excluded, -np.inf).max(1).values.numpy()
            near = dist.masked_fill(excluded, np.inf).topk(min(4, nb), dim=1, largest=False)
            vals = sims.gather(1, near.indices)
            vals[~torch.isfinite(near.values)] = float("nan")
            spatial[r, : vals.shape[1]] = vals.numpy()
    return DirectedScores(positive, hardest, spatial, np.ones(n, np.int64), positive, positive, np.zeros(n, bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["entry-P10", "buddha"])
    parser.add_argument("--model", default="models/sdgmnet-half.pt", help="SDGMNet weights.")
    parser.add_argument("--cache", type=Path, default=None, help="The tracks folder of bench/hard_patches.py --cache.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    detection = DetectionConfig()
    describers = {f"SDGMNet {Path(args.model).name}": load_sdgmnet(args.model)[0],
                  "RootSIFT (our patch, kornia)": "rootsift"}
    scores: dict[tuple[str, str], list[DirectedScores]] = {}
    angle, scene_of = [], []
    t0 = time.perf_counter()
    for s, scene in enumerate(args.scenes):
        scene_dir = shared_data_dir() / "scenes" / scene
        views = detect_views(scene_dir / "images", load_scene_cameras(scene_dir), detection)
        tracks = cached_tracks(views, args.cache / f"{scene}-tracks.npz" if args.cache else None)
        pairs = positive_pairs(views, tracks)
        angle.append(np.r_[pairs.angle, pairs.angle])
        scene_of.append(np.full(2 * len(pairs), s))
        owners, peaks = zip(*(orientation_peaks(v, detection) for v in views))
        for name, how in describers.items():
            descriptors = []
            for v, own, ang in zip(views, owners, peaks):
                kps = v.keypoints.select(own)
                kps.orientations = ang
                patches = extract_patches(v.gray, lafs_from_keypoints(kps, 6.0))
                d = describe_with_baseline(how, patches) if isinstance(how, str) else describe_patches(how, patches)
                descriptors.append(torch.nn.functional.normalize(d.float(), dim=1))
            for mode in ("single", "all peaks"):
                scores.setdefault((name, mode), []).append(
                    score_max_over_orientations(views, pairs, list(owners), descriptors, mode == "all peaks"))
        print(f"{scene}: {len(pairs):,} pairs, {np.mean([len(o) / max(len(set(o)), 1) for o in owners]):.3f} "
              f"orientations per keypoint ({time.perf_counter() - t0:.0f} s)", flush=True)
    angle_all, scene_all = np.concatenate(angle), np.concatenate(scene_of)
    groups = [(scene, scene_all == s) for s, scene in enumerate(args.scenes)]
    groups.append(("pooled", np.ones(angle_all.size, bool)))
    rows = []
    for (name, mode), parts in scores.items():
        sc = DirectedScores(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in DirectedScores.__dataclass_fields__))
        for label, mask in groups:
            in_bins = [mask & (angle_all >= lo) & (angle_all < hi) for lo, hi in ANGLE_BINS]
            rows.append([name, mode, label] + [f"{100 * bin_metrics(sc, m)['fpr95']:.1f}%" for m in in_bins])
    header = ["descriptor", "orientations", "scenes"] + [f"FPR95 {lo:g}-{hi:g}°" for lo, hi in ANGLE_BINS]
    print("\n" + markdown_grid(header, rows))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
