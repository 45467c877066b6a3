"""``detection.upright`` through the pipeline: relative-pose AUC and inliers with and without keypoint orientation.

Each preset runs twice on each scene, as shipped and with ``detection.upright = true`` (every keypoint described
at orientation 0, the same keypoints), scored by ``matcher eval``'s protocol (:func:`matcher.evaluation.run.
evaluate_scene`: an essential matrix from each pair's verified matches against the ground-truth cameras, AUC of
max(rotation, translation-direction error); failed pairs count). Why: the hard patch benchmark's positives at
wide angles often carry a detector orientation 90-180° off (models/sdgmnet.md, "Why FPR95 is high"); upright
keypoints avoid that on photo collections taken without camera roll.

Default scene: entry-P10 (held out from training). One torch / OpenCV thread.

    python bench/upright_pipeline.py
    python bench/upright_pipeline.py --scenes entry-P10 buddha --presets default rootsift --reconstruct
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import torch

from matcher.config import PipelineConfig
from matcher.evaluation.methods import EvalSettings, OursMethod
from matcher.evaluation.report import pose_table, write_rows_json
from matcher.evaluation.run import evaluate_shared_scenes


class _Upright(OursMethod):
    """A preset with ``detection.upright`` set."""

    def config(self) -> PipelineConfig:
        config = super().config()
        config.detection.upright = True
        return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["entry-P10"])
    parser.add_argument("--presets", nargs="+", default=["default"], help="Pipeline presets (default, sdgmnet, rootsift).")
    parser.add_argument("--max-edge", type=int, default=1600, help="The pipeline's images.max_edge (default preset: 1600).")
    parser.add_argument("--max-keypoints", type=int, default=4096,
                        help="Keypoint budget of every method (matcher eval's --max-keypoints; overrides the presets').")
    parser.add_argument("--reconstruct", action="store_true", help="Also run SfM (registered images).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    settings = EvalSettings(max_edge=args.max_edge, max_keypoints=args.max_keypoints, num_threads=1)
    methods = []
    for preset in args.presets:
        methods.append(OursMethod(settings, descriptor=None, name=f"{preset}", preset=preset))
        methods.append(_Upright(settings, descriptor=None, name=f"{preset} + upright", preset=preset))
    t0 = time.perf_counter()
    rows = evaluate_shared_scenes(args.scenes, methods, settings, args.reconstruct)
    print(pose_table(rows, args.reconstruct))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        write_rows_json(args.json, rows)


if __name__ == "__main__":
    main()
