"""Per-descriptor pipeline settings: ratio threshold, mutual check and keypoint budget, on TRAINING scenes with
ground-truth cameras (issue 11, item 4).

For each preset (``default`` = SDGMNet, ``rootsift``) and keypoint budget, the features of the scene are extracted
once with the pipeline's stage function (:func:`matcher.stages.extract_features`, cached in ``--work``); then
every image pair is matched under each (ratio, mutual) setting from one float32 similarity matrix per pair (the
nearest and second-nearest column of each row, the nearest row of each column: the decisions of
:func:`matcher.matching.mutual_nearest_neighbours`, checked against it on the first pair), and verified with the
pipeline's MAGSAC++ (:func:`matcher.stages.verify_matches`). Columns:

* verified pairs (at least ``verification.min_inliers`` inliers) and their mean inlier matches;
* how many verified pairs have a relative pose (below) more than 10° off: a proxy for wrongly verified pairs;
* relative-pose AUC@5° / @10° against the ground-truth cameras, the protocol of ``matcher eval``: an essential
  matrix (MAGSAC, 1 px) from each pair's matches, error = max(rotation, translation direction); failures count.

Budgets: ``4096`` (``max_keypoints`` 4,096 and ``contrast_threshold`` 0.02), ``5120-low``, ``6144-low`` and ``8192-low``
(5,120, 6,144 or 8,192 with the DoG threshold lowered to 0.01, so low-texture images fill the budget).

Only training scenes: castle-P19 (default) and castle-P30 have ground-truth cameras; entry-P10 and buddha are
the held-out scenes of models/sdgmnet.md and are refused.

    python bench/pipeline_settings.py --preset default --work data/settings
    python bench/pipeline_settings.py --preset rootsift --budgets 4096 8192-low --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from matcher.config import MatchingConfig, load_config
from matcher.evaluation.pose import estimate_relative_pose, pose_auc, read_strecha_camera, relative_pose, relative_pose_error
from matcher.evaluation.report import markdown_grid
from matcher.images import list_images
from matcher.matching import mutual_nearest_neighbours
from matcher.shared_data import shared_data_dir
from matcher.stages import FeatureSettings, extract_features, verify_matches
from matcher.storage import FeatureStore, ImageFeatures

HELDOUT_SCENES = ("entry-P10", "buddha")
BUDGETS = {
    "4096": {"max_keypoints": 4096, "contrast_threshold": 0.02},
    "5120-low": {"max_keypoints": 5120, "contrast_threshold": 0.01},
    "6144-low": {"max_keypoints": 6144, "contrast_threshold": 0.01},
    "8192-low": {"max_keypoints": 8192, "contrast_threshold": 0.01},
}
RATIOS = (0.0, 0.8, 0.85, 0.9, 0.95)  # 0: no ratio test


def nearest_tables(d1: np.ndarray, d2: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For unit descriptors d1 (N1, D), d2 (N2, D): each row's best two similarities (N1, 2), its nearest column
    (N1,), and each column's nearest row (N2,), from exact float32 products."""
    a, b = torch.from_numpy(d1.astype(np.float32)), torch.from_numpy(d2.astype(np.float32))
    top = np.zeros((len(a), 2), np.float32)
    col = np.zeros(len(a), np.int64)
    best_col_sim = torch.full((len(b),), -np.inf)
    best_col_row = torch.zeros(len(b), dtype=torch.int64)
    with torch.inference_mode():
        for start in range(0, len(a), block):
            sims = a[start : start + block] @ b.T
            values, index = sims.topk(min(2, len(b)), dim=1)
            top[start : start + block, : values.shape[1]] = values.numpy()
            if values.shape[1] == 1:
                top[start : start + block, 1] = -np.inf
            col[start : start + block] = index[:, 0].numpy()
            v, r = sims.max(0)
            better = v > best_col_sim
            best_col_sim = torch.where(better, v, best_col_sim)
            best_col_row = torch.where(better, r + start, best_col_row)
    return top, col, best_col_row.numpy()


def select_matches(top: np.ndarray, col: np.ndarray, col_row: np.ndarray, ratio: float, mutual: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) matches and (M,) scores under a ratio threshold (0: none) and optional mutual check."""
    keep = np.ones(len(col), bool)
    if ratio > 0:
        keep &= np.maximum(2 - 2 * top[:, 0], 0) <= ratio**2 * np.maximum(2 - 2 * top[:, 1], 0)
    if mutual:
        keep &= col_row[col] == np.arange(len(col))
    rows = np.flatnonzero(keep)
    return np.stack([rows, col[rows]], 1).astype(np.int32), top[rows, 0]


def scene_cameras(scene_dir: Path) -> dict:
    """{image name: StrechaCamera} of a Strecha-layout scene."""
    out = {}
    for name in list_images(scene_dir / "images"):
        path = scene_dir / "gt_dense_cameras" / f"{name}.camera"
        if path.is_file():
            out[name] = read_strecha_camera(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["castle-P19"])
    parser.add_argument("--preset", default="default", help="default (SDGMNet) or rootsift")
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--work", type=Path, default=Path("data/pipeline_settings"),
                        help="Folder for the features files (reused when present).")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mutual", choices=["both", "yes"], default="both",
                        help="both: with and without the mutual check; yes: with it only.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for scene in args.scenes:
        if scene in HELDOUT_SCENES:
            parser.error(f"{scene} is a held-out scene (models/sdgmnet.md): settings are not tuned on it")

    shared = shared_data_dir()
    rows, results = [], []
    t0 = time.perf_counter()
    for budget in args.budgets:
        config = load_config(args.preset, [{"detection": BUDGETS[budget]}])
        stats: dict[tuple[float, bool], dict[str, list]] = {
            (r, m): {"verified": [], "inliers": [], "errors": [], "matches": []}
            for r in args.ratios for m in ((True, False) if args.mutual == "both" else (True,))}
        keypoints = []
        for scene in args.scenes:
            scene_dir = shared / "scenes" / scene
            cameras = scene_cameras(scene_dir)
            names = sorted(cameras)
            features_path = args.work / f"{scene}-{args.preset}-{budget}.features.h5"
            features_path.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            extract_features(scene_dir / "images", features_path, names, FeatureSettings.from_config(config))
            print(f"{scene} {args.preset} {budget}: features {time.perf_counter() - t:.0f} s", flush=True)
            with FeatureStore(features_path, "r") as store:
                feats: dict[str, ImageFeatures] = {n: store.read(n) for n in names}
            keypoints += [len(f) for f in feats.values()]
            checked = False
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    fa, fb = feats[a], feats[b]
                    top, col, col_row = nearest_tables(fa.descriptors, fb.descriptors)
                    if not checked:  # the same decisions as the pipeline's matcher (float32 proposals)
                        ref, _ = mutual_nearest_neighbours(fa.descriptors, fb.descriptors,
                                                           MatchingConfig(ratio=0.8, precision="fp32"))
                        mine, _ = select_matches(top, col, col_row, 0.8, True)
                        print(f"  check against the pipeline's matcher on {a}-{b}: {len(mine)} / {len(ref)} matches, "
                              f"{len({tuple(m) for m in mine} & {tuple(m) for m in ref})} identical", flush=True)
                        checked = True
                    R, tr = relative_pose(cameras[a].R, cameras[a].t, cameras[b].R, cameras[b].t)
                    for (ratio, mutual), s in stats.items():
                        matches, scores = select_matches(top, col, col_row, ratio, mutual)
                        pair = verify_matches(fa, fb, matches, scores, config.verification, config.images.max_edge)
                        n_in = int(pair.inliers.sum())
                        s["matches"].append(len(matches))
                        s["verified"].append(n_in >= config.verification.min_inliers)
                        s["inliers"].append(n_in)
                        xy1 = fa.keypoints[matches[:, 0]].astype(np.float64)
                        xy2 = fb.keypoints[matches[:, 1]].astype(np.float64)
                        est = estimate_relative_pose(xy1, xy2, cameras[a].K, cameras[b].K, threshold_px=1.0)
                        e_r, e_t = relative_pose_error(*(est[:2] if est else (None, None)), R, tr)
                        s["errors"].append(max(e_r, e_t))
            print(f"  matched and verified ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        for (ratio, mutual), s in stats.items():
            verified = np.array(s["verified"])
            auc = pose_auc(s["errors"], (5, 10))
            row = {"preset": args.preset, "budget": budget, "ratio": ratio, "mutual": mutual,
                   "keypoints": float(np.mean(keypoints)), "pairs": len(verified),
                   "verified_pairs": int(verified.sum()), "matches": float(np.mean(s["matches"])),
                   "verified_off_10deg": int((verified & ~(np.array(s["errors"]) <= 10.0)).sum()),
                   "inliers_per_verified_pair": float(np.mean(np.array(s["inliers"])[verified])) if verified.any() else 0.0,
                   "auc@5": auc[5], "auc@10": auc[10]}
            results.append(row)
            rows.append([args.preset, budget, f"{row['keypoints']:.0f}", f"{ratio:g}" if ratio else "off",
                         "yes" if mutual else "no", f"{row['verified_pairs']}/{row['pairs']}",
                         str(row["verified_off_10deg"]), f"{row['matches']:.0f}",
                         f"{row['inliers_per_verified_pair']:.0f}", f"{100 * row['auc@5']:.1f}",
                         f"{100 * row['auc@10']:.1f}"])
    print(f"\nScenes: {', '.join(args.scenes)} (training scenes; ground-truth cameras); {time.perf_counter() - t0:.0f} s\n")
    print(markdown_grid(["preset", "budget", "keypoints/image", "ratio", "mutual", "verified pairs",
                         "of them pose error > 10°", "matches/pair",
                         "inliers/verified pair", "AUC@5", "AUC@10"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
