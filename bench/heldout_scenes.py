"""RootSIFT against SDGMNet through the whole pipeline on held-out scenes: verified inliers and reconstruction.

Same keypoints (the pipeline's DoG), same matching (mutual NN + ratio), same verification and mapping; only the
descriptor differs. Prints a Markdown table per scene: verified pairs, inlier matches, registered images,
3D points, track length, reprojection error, and the rotation/position error against ground truth where the
scene has Strecha cameras.

    python bench/heldout_scenes.py --model models/sdgmnet.pt [--model models/sdgmnet-half.pt ...] [--scene entry-P10]
                                   [--no-rootsift]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pycolmap

from matcher.config import load_config
from matcher.evaluation.sfm import compare_to_strecha
from matcher.pipeline import run_match
from matcher.shared_data import shared_data_dir

SCENES = shared_data_dir("scenes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, action="append", help="SDGMNet weights (repeatable).")
    parser.add_argument("--no-rootsift", action="store_true", help="Only the --model descriptors.")
    parser.add_argument("--scene", action="append", default=None, help="Scene folder name (default entry-P10).")
    parser.add_argument("--ratio", type=float, default=None, help="Ratio test for both (default: the preset's).")
    args = parser.parse_args()
    print("| scene | descriptor | verified pairs | inlier matches | registered | 3D points | track length "
          "| reproj. error px | rotation error deg (median) | position error (median) | time s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scene in args.scene or ["entry-P10"]:
        images = SCENES / scene / "images"
        runs = [] if args.no_rootsift else [("rootsift", [{"descriptor": {"name": "rootsift"}}])]
        runs += [(Path(m).stem if len(args.model) > 1 else "sdgmnet",
                  [{"descriptor": {"name": "sdgmnet", "weights": m}}]) for m in args.model]
        for name, overrides in runs:
            if args.ratio is not None:
                overrides.append({"matching": {"ratio": args.ratio}})
            config = load_config("default", overrides + [{"mapping": {"num_threads": 2}}])
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                report = run_match(images, Path(tmp) / "db.db", config, reconstruct_dir=Path(tmp) / "sparse",
                                   progress=False)
                seconds = time.perf_counter() - t
                r = report.reconstruction
                gt = SCENES / scene / "gt_dense_cameras"
                errors = "- | -"
                if gt.is_dir() and r is not None and r.registered_images >= 3:
                    e = compare_to_strecha(pycolmap.Reconstruction(Path(tmp) / "sparse" / "0"), gt, robust=True)
                    errors = f"{e['rotation_error_deg_median']:.3f} | {e['position_error_median']:.4f}"
            d = report.database
            print(f"| {scene} | {name} | {d['verified_pairs']} | {d['inlier_matches']} | "
                  f"{r.registered_images}/{r.total_images} | {r.points3d} | {r.mean_track_length:.2f} | "
                  f"{r.mean_reprojection_error:.3f} | {errors} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
