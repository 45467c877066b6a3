"""Extreme viewpoint: homography accuracy @5 px per tilt band, time per pair and the step that solved each pair.

Pairs: shared photos seen under synthetic tilts (``matcher.evaluation.viewpoint.write_tilted_pairs``: tilt t,
random longitude, in-plane rotation and a mild perspective, ground-truth H known) and the HPatches sequence
``homography/v_churchill`` (pairs 1-k). Methods, in the same process: ``ours-viewpoint`` (the ``viewpoint``
preset: SDGMNet + matching on demand), ``ours-sdgmnet`` (the plain default) and ``pycolmap-sift``. Each pair is
a two-image run; the homography is fitted to the method's own verified inliers.

    python bench/extreme_viewpoint.py --out /tmp/extreme [--tilts 2,3,4,5,6,8] [--photos 4] [--methods ...]

Prints (and writes to OUT/report.md) the per-band table and the per-pair table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_notes, set_threads, shared_data  # noqa: E402

PHOTOS = (  # one photo per shared scene, textured planar-ish content and clutter alike
    "scenes/castle-P19/images/0005.jpg",
    "scenes/entry-P10/images/0003.jpg",
    "scenes/buddha/images/00010._c.jpg",
    "scenes/monstree/images/IMG_1027.jpg",
    "scenes/lund/images/03.jpg",
    "scenes/cyprus/images/DSC_6467.JPG",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tilts", default="2,3,4,5,6,8")
    parser.add_argument("--photos", type=int, default=4, help="how many of the shared photos (in the list's order)")
    parser.add_argument("--methods", default="ours-viewpoint,ours-sdgmnet,pycolmap-sift")
    parser.add_argument("--no-hpatches", action="store_true", help="skip homography/v_churchill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from matcher.evaluation.methods import EvalSettings, build_methods
    from matcher.evaluation.report import markdown_grid
    from matcher.evaluation.viewpoint import band_table, evaluate_pairs, hpatches_pairs, pair_table, write_tilted_pairs

    data = shared_data()
    photos = []
    for relative in PHOTOS:
        path = data / relative
        if path.is_file():
            photos.append(path)
        if len(photos) == args.photos:
            break
    tilts = [float(t) for t in args.tilts.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = write_tilted_pairs(photos, args.out / "pairs", tilts, seed=args.seed)
    settings = EvalSettings(seed=args.seed, num_threads=args.threads)
    methods, notes = build_methods(args.methods.split(","), settings=settings)
    t0 = time.perf_counter()
    outcomes = evaluate_pairs(pairs, methods, args.out, images_root=args.out / "pairs", echo=print)
    churchill = data / "homography" / "v_churchill"
    if not args.no_hpatches and churchill.is_dir():
        outcomes += evaluate_pairs(hpatches_pairs(churchill), methods, args.out, echo=print)
    elapsed = time.perf_counter() - t0

    bands = markdown_grid(["tilt band", "method", "pairs", "acc@5px", "median s/pair", "solved by (acc@5)"],
                          band_table(outcomes))
    per_pair = markdown_grid(["pair", "tilt", "method", "corner err px", "inliers", "step", "s"], pair_table(outcomes))
    report = "\n\n".join([
        "# Extreme viewpoint benchmark",
        f"command: `python bench/extreme_viewpoint.py {' '.join(sys.argv[1:])}`",
        machine_notes(),
        f"{len(pairs)} synthetic pairs from {len(photos)} photos ({', '.join(p.parent.parent.name for p in photos)}), "
        f"tilts {args.tilts}; total {elapsed / 60:.1f} min",
        *[f"note: {n}" for n in notes],
        bands, per_pair,
    ])
    (args.out / "report.md").write_text(report + "\n")
    (args.out / "results.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1, default=str))
    print(report)


if __name__ == "__main__":
    main()
