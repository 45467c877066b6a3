"""``detection.max_orientations`` through the pipeline: pose AUC, inliers and time with 1 and 2 orientations.

1. Each preset runs with ``max_orientations`` 1 and 2 on each scene (all pairs, no SfM unless ``--reconstruct``),
   scored by ``matcher eval``'s pose protocol (:func:`matcher.evaluation.run.evaluate_scene`: an essential matrix
   from each pair's verified matches against the ground-truth cameras; failed pairs count). Each preset keeps its
   own keypoint budget (default 5,120, rootsift 4,096) unless ``--max-keypoints`` is given.
2. Time of extraction (detect + describe) and matching (mutual nearest neighbours, unverified) on ``--timing-images``
   photos of ``--timing-scene`` at 1,600 px, 1 and 2 orientations interleaved over ``--rounds`` rounds, as a ratio.

Why: 16-17 % of the kept DoG keypoints of an entry-P10 image are blobs with two or more orientation peaks, and the
one ``detect_keypoints`` keeps often differs between views (models/sdgmnet.md, "Why FPR95 is high").
Default scenes entry-P10 and buddha (held out from training). One torch / OpenCV thread.

    python bench/max_orientations.py
    python bench/max_orientations.py --presets default --scenes entry-P10 --timing-images 0
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from matcher.config import PipelineConfig, load_config
from matcher.evaluation.methods import EvalSettings, OursMethod
from matcher.evaluation.report import markdown_grid, pose_table, write_rows_json
from matcher.evaluation.run import evaluate_shared_scenes
from matcher.shared_data import shared_data_dir


class _Orientations(OursMethod):
    """A preset with ``detection.max_orientations`` set."""

    def __init__(self, settings: EvalSettings, preset: str, orientations: int) -> None:
        self.orientations = orientations
        super().__init__(settings, descriptor=None, name=f"{preset}, max_orientations {orientations}", preset=preset)

    def config(self) -> PipelineConfig:
        config = super().config()
        config.detection.max_orientations = self.orientations
        return config


def pose_rows(args: argparse.Namespace) -> list[dict]:
    methods, first_settings = [], None
    for preset in args.presets:
        budget = args.max_keypoints or load_config(preset).detection.max_keypoints
        settings = EvalSettings(max_edge=args.max_edge, max_keypoints=budget, num_threads=1)
        first_settings = first_settings or settings
        methods += [_Orientations(settings, preset, k) for k in (1, 2)]
    def progress(row: dict) -> None:
        print(row["scene"], row["method"], f"inliers {row.get('inliers', 0):.0f}",
              f"auc@5 {100 * row.get('auc@5', 0):.1f}", f"{row.get('time_s', 0):.0f} s", flush=True)

    return evaluate_shared_scenes(args.scenes, methods, first_settings, args.reconstruct, on_row=progress)


def timing(args: argparse.Namespace) -> list[list[str]]:
    """Extraction and matching seconds per image / pair for 1 and 2 orientations (the default preset's settings)."""
    from matcher.descriptors import build_descriptor
    from matcher.images import list_images
    from matcher.matching import mutual_nearest_neighbours
    from matcher.stages.extract import FeatureSettings, extract_image

    image_dir = shared_data_dir() / "scenes" / args.timing_scene / "images"
    names = list_images(image_dir)[: args.timing_images]
    base = load_config(args.presets[0], [{"images": {"max_edge": 1600}}])
    descriptor = build_descriptor(base.descriptor, base.patches)
    seconds = {1: [0.0, 0.0], 2: [0.0, 0.0]}
    counts = {}
    for _ in range(args.rounds):
        for k in (1, 2):
            config = dataclasses.replace(base, detection=dataclasses.replace(base.detection, max_orientations=k))
            settings = FeatureSettings.from_config(config)
            t0 = time.perf_counter()
            features = [extract_image(image_dir, n, settings, lambda: descriptor) for n in names]
            t1 = time.perf_counter()
            matched = 0
            for i in range(len(features) - 1):
                f1, f2 = features[i], features[i + 1]
                matched += len(mutual_nearest_neighbours(f1.descriptors, f2.descriptors, config.matching, f1.extras,
                                                         f2.extras)[0])
            t2 = time.perf_counter()
            seconds[k][0] += t1 - t0
            seconds[k][1] += t2 - t1
            counts[k] = (np.mean([len(f) for f in features]),
                         np.mean([0 if f.extras is None else len(f.extras[1]) for f in features]), matched)
    n_img, n_pair = args.rounds * len(names), args.rounds * (len(names) - 1)
    rows = []
    for k in (1, 2):
        ext, mat = seconds[k][0] / n_img, seconds[k][1] / n_pair
        rows.append([str(k), f"{counts[k][0]:.0f}", f"{counts[k][1]:.0f}", f"{ext:.2f}",
                     f"{ext / (seconds[1][0] / n_img):.2f}x", f"{mat:.3f}", f"{mat / (seconds[1][1] / n_pair):.2f}x",
                     f"{(ext + mat) / (seconds[1][0] / n_img + seconds[1][1] / n_pair):.2f}x", str(counts[k][2])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["entry-P10", "buddha"])
    parser.add_argument("--presets", nargs="+", default=["default", "rootsift"])
    parser.add_argument("--max-edge", type=int, default=1600)
    parser.add_argument("--max-keypoints", type=int, default=0, help="Every method's budget (0: each preset's own).")
    parser.add_argument("--reconstruct", action="store_true", help="Also run SfM (registered images).")
    parser.add_argument("--timing-scene", default="castle-P19")
    parser.add_argument("--timing-images", type=int, default=4, help="Photos timed (0: no timing).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-pose", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    rows = [] if args.skip_pose else pose_rows(args)
    if rows:
        print(pose_table(rows, args.reconstruct), flush=True)
    if args.timing_images:
        header = ["orientations", "keypoints", "extra rows", "extract s/img", "ratio", "match s/pair", "ratio",
                  "extract+match ratio", "matches (sum)"]
        print(f"\nTime on {args.timing_images} images of {args.timing_scene} ({args.presets[0]} preset, 1600 px, "
              f"{args.rounds} rounds)")
        print(markdown_grid(header, timing(args)))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        write_rows_json(args.json, rows)


if __name__ == "__main__":
    main()
