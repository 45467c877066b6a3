"""Hard patch benchmark: FPR95 and mAP per viewpoint-angle and scale-ratio bin, on scenes with known cameras.

Tracks come from the cameras alone (matcher/training/gt_tracks.py), so no descriptor chose the positives; the
negatives are each anchor's spatial neighbours and its hardest candidate among all the keypoints of the other
view (matcher/training/hard_benchmark.py). Descriptors: SDGMNet weights given with --model, RootSIFT on our
patch (kornia), the pipeline's RootSIFT (OpenCV on the image), TFeat (../shared/data/weights/tfeat).

Held-out split (fixed, see models/sdgmnet.md): entry-P10 and buddha. castle-P19 and castle-P30 are training
scenes (castle-P30 shares 10 images and the courtyard with castle-P19).

    python bench/hard_patches.py --model models/sdgmnet.pt
    python bench/hard_patches.py --model models/sdgmnet.pt --model other.pt --scenes entry-P10 buddha --json out.json

``--diagnostics`` adds tables on why FPR95 is high (the published tables stay as they are): the positives'
orientation and scale consistency (matcher.training.hard_benchmark.pair_geometry), FPR95 on the
orientation-consistent positives, the share of positives scored like negatives and the FPR95 floor it implies,
and which negatives lie above the 95 %-recall threshold. ``--upright`` describes every keypoint at orientation 0
(``detection.upright``: the same keypoints and tracks, only the orientations change), a separate experiment.

``--orientations peaks`` (or ``both``: the published protocol ``one`` and ``peaks`` side by side) is the pipeline's
``detection.max_orientations = --max-peaks`` (default 2, as COLMAP's SIFT; at most 4): each keypoint described at
its orientation and up to ``--max-peaks`` − 1 further orientation peaks SIFT found at its location, two keypoints
scored by the maximum similarity over their orientations, for every descriptor (OpenCV RootSIFT too: it describes
several keypoints at one location). Same keypoints, tracks, positives and negatives.
``--per-scene`` adds each scene's tables to the pooled ones.

``--tracks clean`` builds the positives with the stricter track rule chosen by the track builder's null test
(``TRACK_RULES["clean"]``, models/sdgmnet.md "Cleaned tracks", bench/track_null.py) instead of the published one
(``--tracks published``, the default, which every table before 2026-12-01 21:00 used); its cache files are
``{scene}-tracks-clean.npz``, apart from the published ``{scene}-tracks.npz``.

    python bench/hard_patches.py --model models/sdgmnet-half.pt --model models/sdgmnet.pt --tfeat liberty \
        --orientations both --per-scene --cache data/hard-cache
    python bench/hard_patches.py --model models/sdgmnet-half.pt --model models/sdgmnet.pt --tfeat liberty \
        --orientations both --per-scene --ratios 0.8 --cache data/hard-clean --tracks clean
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from matcher.config import DetectionConfig
from matcher.descriptors import describe_patches, load_sdgmnet
from matcher.evaluation.report import markdown_grid
from matcher.shared_data import shared_data_dir
from matcher.training.baselines import describe_with_baseline
from matcher.training.gt_cameras import load_scene_cameras
from matcher.training.gt_tracks import TRACK_RULES, detect_views
from matcher.training.hard_benchmark import (
    ANGLE_BINS,
    SCALE_BINS,
    cached_tracks,
    DirectedScores,
    bin_metrics,
    opencv_rootsift_describer,
    orientation_owner,
    positive_pairs,
    pair_geometry,
    ratio_test_curve,
    score_pairs,
    spatial_neighbours,
    threshold_at_recall,
    view_patches,
)

SHARED = shared_data_dir()
HELDOUT_SCENES = ("entry-P10", "buddha")


PROTOCOLS = {"one": ("one",), "peaks": ("peaks",), "both": ("one", "peaks")}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=list(HELDOUT_SCENES))
    parser.add_argument("--model", action="append", default=[], help="SDGMNet weights (repeatable).")
    parser.add_argument("--no-baselines", action="store_true", help="Only the --model descriptors.")
    parser.add_argument("--json", type=Path, default=None, help="Write the table as JSON too.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratios", default="", help="Comma-separated ratio-test thresholds to tabulate.")
    parser.add_argument("--cache", type=Path, default=None,
                        help="Folder for the scenes' tracks (reused when present; keypoints are re-detected).")
    parser.add_argument("--diagnostics", action="store_true",
                        help="Also print why FPR95 is high: orientation/scale consistency of the positives, etc.")
    parser.add_argument("--upright", action="store_true",
                        help="Detect with detection.upright (every orientation 0); same keypoints and tracks.")
    parser.add_argument("--tfeat", nargs="*", default=None,
                        help="Only these TFeat weights (liberty, notredame, yosemite); default all.")
    parser.add_argument("--save-scores", type=Path, default=None,
                        help="Write every descriptor's directed scores, the bins' keys and the scene of each pair (.npz).")
    parser.add_argument("--orientations", choices=sorted(PROTOCOLS), default="one",
                        help="one: the orientation the detector keeps (published); peaks: every keypoint described at "
                             "up to --max-peaks orientation peaks, similarity = max over them; both.")
    parser.add_argument("--max-peaks", type=int, choices=(2, 3, 4), default=2,
                        help="Orientations per keypoint with 'peaks' (detection.max_orientations).")
    parser.add_argument("--no-opencv", action="store_true", help="Without the pipeline's RootSIFT (OpenCV).")
    parser.add_argument("--per-scene", action="store_true", help="Also each scene's tables (default: pooled only).")
    parser.add_argument("--tracks", choices=sorted(TRACK_RULES), default="published",
                        help="Track rule of the positives: published (every earlier table) or clean (null-tested).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocols = PROTOCOLS[args.orientations]
    if args.upright and "peaks" in protocols:
        parser.error("--upright has no orientation peaks")
    models = args.model or ["models/sdgmnet.pt"]

    patch_descriptors: dict[str, object] = {}
    for path in models:
        patch_descriptors[f"SDGMNet {Path(path).name}"] = load_sdgmnet(path)[0]
    if not args.no_baselines:
        patch_descriptors["RootSIFT (our patch, kornia)"] = "rootsift"
        for w in sorted((SHARED / "weights" / "tfeat").glob("tfeat-*.params")):
            if args.tfeat is not None and w.stem.split("-", 1)[1] not in args.tfeat:
                continue
            patch_descriptors[f"TFeat ({w.stem.split('-', 1)[1]})"] = f"tfeat:{w}"
    opencv = not (args.no_baselines or args.no_opencv)
    descriptor_names = list(patch_descriptors) + (["RootSIFT (pipeline, OpenCV on the image)"] if opencv else [])
    # one row of every table per descriptor and protocol; the published protocol keeps its plain names
    names = [n if protocol == "one" else f"{n}, peaks" for protocol in protocols for n in descriptor_names]

    scores: dict[str, list[DirectedScores]] = {n: [] for n in names}
    angle, ratio, counts, scene_of = [], [], {}, []
    geometry: list[tuple[np.ndarray, ...]] = []
    t0 = time.perf_counter()
    for scene in args.scenes:
        scene_dir = SHARED / "scenes" / scene
        detection = DetectionConfig(upright=args.upright,
                                    max_orientations=args.max_peaks if "peaks" in protocols else 1)
        views = detect_views(scene_dir / "images", load_scene_cameras(scene_dir), detection)
        cache_name = f"{scene}-tracks.npz" if args.tracks == "published" else f"{scene}-tracks-{args.tracks}.npz"
        tracks = cached_tracks(views, args.cache / cache_name if args.cache else None, save=True,
                               config=TRACK_RULES[args.tracks])
        pairs = positive_pairs(views, tracks)
        counts[scene] = {"views": len(views), "tracks": len(tracks), "observations": int(tracks.track.size),
                         "pairs": len(pairs)}
        print(f"{scene}: {counts[scene]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        angle.append(np.r_[pairs.angle, pairs.angle])
        ratio.append(np.r_[pairs.scale_ratio, pairs.scale_ratio])
        scene_of.append(np.full(2 * len(pairs), len(scene_of)))
        if args.diagnostics:
            g = pair_geometry(views, tracks, pairs)
            geometry.append((np.r_[g.orientation_error, -g.orientation_error], np.r_[g.scale_error, -g.scale_error],
                             *spatial_neighbours(views, pairs)))
        for protocol in protocols:
            peaks = protocol == "peaks"
            owners = [orientation_owner(v.patch_keypoints) for v in views] if peaks else None
            if peaks:
                print(f"  peaks: {np.mean([o.size / len(v.keypoints) for o, v in zip(owners, views)]):.3f} "
                      "orientations per keypoint", flush=True)
            suffix = ", peaks" if peaks else ""
            patches = [view_patches(v, all_orientations=peaks) for v in views]
            for name, how in patch_descriptors.items():
                if isinstance(how, str):
                    desc = [describe_with_baseline(how, p).numpy() for p in patches]
                else:
                    desc = [describe_patches(how, p).numpy() for p in patches]
                scores[name + suffix].append(score_pairs(views, pairs, desc, owners=owners))
            del patches
            if opencv:
                describe = opencv_rootsift_describer()
                scores[descriptor_names[-1] + suffix].append(
                    score_pairs(views, pairs, [describe(v, peaks) for v in views], owners=owners))
    angle_all, ratio_all = np.concatenate(angle), np.concatenate(ratio)
    pooled = {n: DirectedScores(*(np.concatenate([getattr(s, f) for s in scores[n]])
                                  for f in ("positive", "hardest", "spatial", "rank", "first",
                                                                   "second", "first_correct"))) for n in names}
    bins = [(f"{lo:g}-{hi:g}°", (angle_all >= lo) & (angle_all < hi)) for lo, hi in ANGLE_BINS]
    bins += [(f"scale {lo:g}-{hi:g}" if np.isfinite(hi) else f"scale ≥{lo:g}", (ratio_all >= lo) & (ratio_all < hi))
             for lo, hi in SCALE_BINS]
    result = {"scenes": counts, "tracks": args.tracks, "bins": {}, "seconds": time.perf_counter() - t0}
    for label, mask in bins:
        result["bins"][label] = {n: bin_metrics(pooled[n], mask) for n in names}
    scene_all = np.concatenate(scene_of)
    if args.per_scene:
        result["per_scene"] = {scene: {label: {n: bin_metrics(pooled[n], mask & (scene_all == i)) for n in names}
                                       for label, mask in bins} for i, scene in enumerate(args.scenes)}

    print(f"\nTrack rule: {args.tracks} ({TRACK_RULES[args.tracks]})")
    print(f"Scenes: {', '.join(args.scenes)}; directed positive pairs per bin: "
          + ", ".join(f"{label} {result['bins'][label][names[0]]['positives']:,}" for label, _ in bins))
    labels = [label for label, _ in bins]

    def table(title: str, cell: Callable[[dict], str], metrics: dict = result["bins"]) -> str:
        return markdown_grid(["descriptor"] + [f"{title} {label}" for label in labels],
                             [[n] + [cell(metrics[label][n]) for label in labels] for n in names])

    print("\n" + table("FPR95", lambda m: f"{100 * m['fpr95']:.1f}%"))
    print("\nFPR95 with the spatial-neighbour negatives only (the same negatives for every descriptor):\n")
    print(table("FPR95", lambda m: f"{100 * m['fpr95_spatial']:.1f}%"))
    print("\n" + table("mAP", lambda m: f"{m['map']:.3f}"))
    for scene, metrics in result.get("per_scene", {}).items():
        print(f"\n{scene} alone; directed positive pairs per bin: "
              + ", ".join(f"{label} {metrics[label][names[0]]['positives']:,}" for label in labels))
        print("\n" + table("FPR95", lambda m: f"{100 * m['fpr95']:.1f}%", metrics))
        print("\n" + table("mAP", lambda m: f"{m['map']:.3f}", metrics))
    if args.ratios:
        ratios = [float(r) for r in args.ratios.split(",")]
        print("\nNearest neighbour + ratio test over all directed pairs (recall / precision):\n")
        everything = np.ones(angle_all.size, bool)
        rows = []
        for n in names:
            curve = ratio_test_curve(pooled[n], everything, ratios)
            result.setdefault("ratio_test", {})[n] = curve
            rows.append([n] + [f"{100 * c['recall']:.1f}% / {100 * c['precision']:.1f}%" for c in curve])
        print(markdown_grid(["descriptor"] + [f"ratio {r:g}" for r in ratios], rows))
    if args.save_scores:
        arrays = {"angle": angle_all, "scale_ratio": ratio_all, "scene": scene_all,
                  "scenes": np.array(args.scenes), "names": np.array(names)}
        for i, n in enumerate(names):
            arrays.update({f"{i}/{f}": getattr(pooled[n], f) for f in DirectedScores.__dataclass_fields__})
        if args.diagnostics:
            arrays.update(zip(("orientation_error", "scale_error", "neighbour_distance", "neighbour_scale"),
                              (np.concatenate(c) for c in zip(*geometry))))
        np.savez_compressed(args.save_scores, **arrays)
    if args.diagnostics:
        result["diagnostics"] = print_diagnostics(names, pooled, bins, *(np.concatenate(c) for c in zip(*geometry)))
    print(f"\n{result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def print_diagnostics(names: list[str], pooled: dict[str, DirectedScores], bins: list[tuple[str, np.ndarray]],
                      orientation_error: np.ndarray, scale_error: np.ndarray, neighbour_distance: np.ndarray,
                      neighbour_scale: np.ndarray) -> dict:
    """Print (and return) the diagnostic tables; every array has one row per directed positive pair (2M)."""
    out: dict = {"geometry": {}, "descriptors": {}}
    labels = [label for label, _ in bins]
    err = np.abs(orientation_error)
    rows = []
    for label, mask in bins:
        e, s = err[mask], np.abs(scale_error[mask])
        g = {"positives": int(mask.sum()), "orientation_median": float(np.median(e)),
             **{f"orientation_over_{t}": float(np.mean(e > t)) for t in (15, 30, 60)},
             "scale_median_log2": float(np.median(s)), "scale_over_1.25": float(np.mean(s > np.log2(1.25)))}
        out["geometry"][label] = g
        rows.append([label, f"{g['positives']:,}", f"{g['orientation_median']:.1f}°"]
                    + [f"{100 * g[f'orientation_over_{t}']:.1f}%" for t in (15, 30, 60)]
                    + [f"{100 * g['scale_over_1.25']:.1f}%", f"{g['scale_median_log2']:.2f}"])
    print("\nDiagnostics. Orientation error of the positives (detected orientation relative to the epipolar direction,"
          "\nview b minus view a) and scale error (|log2| of σ_b/σ_a over the depth-predicted ratio):\n")
    print(markdown_grid(["bin", "directed pairs", "median |orientation error|", "> 15°", "> 30°", "> 60°",
                         "scale off > 1.25×", "median |log2 scale error|"], rows))

    consistent = err <= 30.0
    for title, keep in (("|orientation error| ≤ 30°", consistent), ("|orientation error| ≤ 15°", err <= 15.0)):
        print(f"\nFPR95 (published protocol) on the positives with {title} only:\n")
        print(markdown_grid(["descriptor"] + [f"FPR95 {label}" for label in labels],
                            [[n] + [f"{100 * bin_metrics(pooled[n], mask & keep)['fpr95']:.1f}%" for _, mask in bins]
                             for n in names]))

    # Positives scored like negatives: a fraction u of positives distributed as the negatives puts half of u below
    # the negatives' median (matchable positives almost never are), so u ≈ 2 P(positive < median negative), and
    # 95 % recall then needs 1 − 0.05/u of the negatives accepted.
    print("\nPositives scored like negatives: u ≈ 2 × share of positives below the median negative, the FPR95 floor"
          "\n1 − 0.05/u it implies, and u among orientation-consistent (≤ 30°) / inconsistent positives:\n")
    grid, breakdown = [], []
    bands = ((0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, np.inf))
    for n in names:
        sc = pooled[n]
        out["descriptors"][n] = {}
        cells = []
        for label, mask in bins:
            rows_ = np.flatnonzero(mask)
            spatial = sc.spatial[rows_]
            hardest = sc.hardest[rows_]
            negatives = np.r_[hardest[np.isfinite(hardest)], spatial[np.isfinite(spatial)]]
            median = float(np.median(negatives))
            below = sc.positive[rows_] < median
            u = 2 * float(below.mean())
            u_ok = 2 * float(below[consistent[rows_]].mean()) if consistent[rows_].any() else float("nan")
            u_bad = 2 * float(below[~consistent[rows_]].mean()) if (~consistent[rows_]).any() else float("nan")
            floor = max(0.0, 1 - 0.05 / u) if u > 0 else 0.0
            t = threshold_at_recall(sc.positive[rows_])
            dist = neighbour_distance[rows_]
            above = {"hardest": float(np.mean(hardest[np.isfinite(hardest)] >= t))}
            for lo, hi in bands:
                in_band = np.isfinite(spatial) & (dist >= lo) & (dist < hi)
                above[f"spatial {lo:g}-{hi:g}σ"] = (float(np.mean(spatial[in_band] >= t)) if in_band.any()
                                                   else float("nan"), int(in_band.sum()))
            fp = int((negatives >= t).sum())
            d = {"u": u, "u_consistent": u_ok, "u_inconsistent": u_bad, "floor": floor, "threshold": t,
                 "fpr_at_threshold": fp / negatives.size, "hardest_share_of_fp": int((hardest >= t).sum()) / max(fp, 1),
                 "above_threshold": above}
            out["descriptors"][n][label] = d
            cells.append(f"u {100 * u:.0f}% → ≥{100 * floor:.0f}% ({100 * u_ok:.0f}/{100 * u_bad:.0f}%)")
            breakdown.append([n, label, f"{t:.3f}", f"{100 * d['fpr_at_threshold']:.1f}%",
                              f"{100 * d['hardest_share_of_fp']:.0f}%", f"{100 * above['hardest']:.0f}%"]
                             + [f"{100 * above[k][0]:.0f}% of {above[k][1]:,}" for k in above if k != "hardest"])
        grid.append([n] + cells)
    print(markdown_grid(["descriptor"] + labels, grid))
    print("\nWhere the 95 %-recall threshold falls: share of each kind of negative at or above it (spatial neighbours"
          "\nby distance from the true keypoint in units of its σ; patches span ±6σ):\n")
    print(markdown_grid(["descriptor", "bin", "threshold", "FPR95", "hardest's share of FP", "hardest above"]
                        + [f"spatial {lo:g}-{hi:g}σ above" for lo, hi in bands],
                        [r for r in breakdown if "scale" not in r[1]]))
    return out


if __name__ == "__main__":
    main()
