"""Extreme viewpoint: homography accuracy @5 px per tilt band, time per pair and the step that solved each pair.

Pairs: shared photos seen under synthetic tilts (``matcher.evaluation.viewpoint.write_tilted_pairs``: tilt t,
random longitude, in-plane rotation and a mild perspective, ground-truth H known) and the HPatches sequence
``homography/v_churchill`` (pairs 1-k). Methods, in the same process: ``ours-viewpoint`` (the ``viewpoint``
preset: SDGMNet + matching on demand), ``ours-default`` (the plain default) and ``pycolmap-sift``. Each pair is
a two-image run; the homography is fitted to the method's own verified inliers. The same as
``matcher eval --viewpoint``; this script adds the machine notes.

    python bench/extreme_viewpoint.py --out /tmp/extreme [--tilts 2,3,4,5,6,8] [--photos 4] [--methods ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_notes, set_threads, shared_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tilts", default="2,3,4,5,6,8")
    parser.add_argument("--photos", type=int, default=4, help="how many of the shared photos (in the list's order)")
    parser.add_argument("--methods", default="ours-viewpoint,ours-default,pycolmap-sift")
    parser.add_argument("--no-hpatches", action="store_true", help="skip homography/v_churchill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from matcher.evaluation.methods import EvalSettings, build_methods
    from matcher.evaluation.viewpoint import run_viewpoint_eval

    methods, notes = build_methods(args.methods.split(","), settings=EvalSettings(seed=args.seed,
                                                                                  num_threads=args.threads))
    report, _ = run_viewpoint_eval(shared_data(), args.out, methods, [float(t) for t in args.tilts.split(",")],
                                   args.photos, args.seed, not args.no_hpatches, echo=print)
    text = report.read_text() + "\n" + "".join(f"note: {n}\n" for n in notes) + machine_notes() + "\n"
    report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
