"""Hard patch benchmark: FPR95 and mAP per viewpoint-angle and scale-ratio bin, on scenes with known cameras.

Tracks come from the cameras alone (matcher/training/gt_tracks.py), so no descriptor chose the positives; the
negatives are each anchor's spatial neighbours and its hardest candidate among all the keypoints of the other
view (matcher/training/hard_benchmark.py). Descriptors: SDGMNet weights given with --model, RootSIFT on our
patch (kornia), the pipeline's RootSIFT (OpenCV on the image), TFeat (../shared/data/weights/tfeat).

Held-out split (fixed, see models/sdgmnet.md): entry-P10 and buddha. castle-P19 and castle-P30 are training
scenes (castle-P30 shares 10 images and the courtyard with castle-P19).

    python bench/hard_patches.py --model models/sdgmnet.pt
    python bench/hard_patches.py --model models/sdgmnet.pt --model other.pt --scenes entry-P10 buddha --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from matcher.descriptors import describe_patches, load_sdgmnet
from matcher.evaluation.report import markdown_grid
from matcher.shared_data import shared_data_dir
from matcher.training.baselines import describe_with_baseline
from matcher.training.gt_cameras import load_scene_cameras
from matcher.training.gt_tracks import Tracks, build_tracks, detect_views
from matcher.training.hard_benchmark import (
    ANGLE_BINS,
    SCALE_BINS,
    DirectedScores,
    bin_metrics,
    opencv_rootsift_describer,
    positive_pairs,
    ratio_test_curve,
    score_pairs,
    view_patches,
)

SHARED = shared_data_dir()
HELDOUT_SCENES = ("entry-P10", "buddha")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=list(HELDOUT_SCENES))
    parser.add_argument("--model", action="append", default=[], help="SDGMNet weights (repeatable).")
    parser.add_argument("--no-baselines", action="store_true", help="Only the --model descriptors.")
    parser.add_argument("--json", type=Path, default=None, help="Write the table as JSON too.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratios", default="", help="Comma-separated ratio-test thresholds to tabulate.")
    parser.add_argument("--cache", type=Path, default=None,
                        help="Folder for the scenes' tracks (reused when present; keypoints are re-detected).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or ["models/sdgmnet.pt"]

    patch_descriptors: dict[str, object] = {}
    for path in models:
        patch_descriptors[f"SDGMNet {Path(path).name}"] = load_sdgmnet(path)[0]
    if not args.no_baselines:
        patch_descriptors["RootSIFT (our patch, kornia)"] = "rootsift"
        for w in sorted((SHARED / "weights" / "tfeat").glob("tfeat-*.params")):
            patch_descriptors[f"TFeat ({w.stem.split('-', 1)[1]})"] = f"tfeat:{w}"
    names = list(patch_descriptors) + ([] if args.no_baselines else ["RootSIFT (pipeline, OpenCV on the image)"])

    scores: dict[str, list[DirectedScores]] = {n: [] for n in names}
    angle, ratio, counts = [], [], {}
    t0 = time.perf_counter()
    for scene in args.scenes:
        scene_dir = SHARED / "scenes" / scene
        views = detect_views(scene_dir / "images", load_scene_cameras(scene_dir))
        cached = args.cache / f"{scene}-tracks.npz" if args.cache else None
        if cached is not None and cached.is_file():
            with np.load(cached) as f:
                tracks = Tracks(f["points"], f["track"], f["view"], f["keypoint"])
        else:
            tracks = build_tracks(views)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, points=tracks.points, track=tracks.track, view=tracks.view, keypoint=tracks.keypoint)
        pairs = positive_pairs(views, tracks)
        counts[scene] = {"views": len(views), "tracks": len(tracks), "observations": int(tracks.track.size),
                         "pairs": len(pairs)}
        print(f"{scene}: {counts[scene]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        angle.append(np.r_[pairs.angle, pairs.angle])
        ratio.append(np.r_[pairs.scale_ratio, pairs.scale_ratio])
        patches = [view_patches(v) for v in views]
        for name, how in patch_descriptors.items():
            if isinstance(how, str):
                desc = [describe_with_baseline(how, p).numpy() for p in patches]
            else:
                desc = [describe_patches(how, p).numpy() for p in patches]
            scores[name].append(score_pairs(views, pairs, desc))
        if not args.no_baselines:
            describe = opencv_rootsift_describer()
            scores[names[-1]].append(score_pairs(views, pairs, [describe(v) for v in views]))
    angle_all, ratio_all = np.concatenate(angle), np.concatenate(ratio)
    pooled = {n: DirectedScores(*(np.concatenate([getattr(s, f) for s in scores[n]])
                                  for f in ("positive", "hardest", "spatial", "rank", "first",
                                                                   "second", "first_correct"))) for n in names}
    bins = [(f"{lo:g}-{hi:g}°", (angle_all >= lo) & (angle_all < hi)) for lo, hi in ANGLE_BINS]
    bins += [(f"scale {lo:g}-{hi:g}" if np.isfinite(hi) else f"scale ≥{lo:g}", (ratio_all >= lo) & (ratio_all < hi))
             for lo, hi in SCALE_BINS]
    result = {"scenes": counts, "bins": {}, "seconds": time.perf_counter() - t0}
    for label, mask in bins:
        result["bins"][label] = {n: bin_metrics(pooled[n], mask) for n in names}

    print(f"\nScenes: {', '.join(args.scenes)}; directed positive pairs per bin: "
          + ", ".join(f"{label} {result['bins'][label][names[0]]['positives']:,}" for label, _ in bins))
    labels = [label for label, _ in bins]

    def table(title: str, cell: Callable[[dict], str]) -> str:
        return markdown_grid(["descriptor"] + [f"{title} {label}" for label in labels],
                             [[n] + [cell(result["bins"][label][n]) for label in labels] for n in names])

    print("\n" + table("FPR95", lambda m: f"{100 * m['fpr95']:.1f}%"))
    print("\nFPR95 with the spatial-neighbour negatives only (the same negatives for every descriptor):\n")
    print(table("FPR95", lambda m: f"{100 * m['fpr95_spatial']:.1f}%"))
    print("\n" + table("mAP", lambda m: f"{m['map']:.3f}"))
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
    print(f"\n{result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
