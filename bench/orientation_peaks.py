"""Hard patch benchmark with every orientation peak described: what keeping all of SIFT's orientations would give.

``detect_keypoints`` keeps one keypoint per location; at a blob where OpenCV's SIFT finds two or more orientation
peaks (>= 80 % of the highest) that is OpenCV's first, the smallest angle, which often differs between views
(models/sdgmnet.md, "Why FPR95 is high"). Describing each keypoint at every peak, with the similarity of two
keypoints the maximum over their orientations, is the ``peaks`` protocol of bench/hard_patches.py
(``--orientations``, matcher/training/hard_benchmark.py). This script runs it with the settings of the
2026-12-01 15:11 measurement in models/sdgmnet.md: one SDGMNet and RootSIFT on our patch, the published protocol
(one orientation) and every peak (``--max-peaks 4``, the detector's limit; that measurement took all peaks, which
differ from 4 at very few locations), each scene and pooled. Other options of hard_patches.py pass through (e.g.
``--max-peaks 2``, the default preset's candidate ``detection.max_orientations = 2``).

    python bench/orientation_peaks.py --cache data/hard-cache
    # the same as:
    python bench/hard_patches.py --model models/sdgmnet-half.pt --tfeat --no-opencv --orientations both \
        --max-peaks 4 --per-scene --cache data/hard-cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hard_patches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sdgmnet-half.pt", help="SDGMNet weights.")
    args, rest = parser.parse_known_args()
    hard_patches.main(["--model", args.model, "--tfeat", "--no-opencv", "--orientations", "both", "--max-peaks", "4",
                       "--per-scene", *rest])


if __name__ == "__main__":
    main()
