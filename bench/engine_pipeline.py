"""The default pipeline with each SDGMNet engine x precision on a held-out scene with ground-truth cameras.

Same images, keypoints, matching, verification and mapping (incremental, 2 threads, seed 0); only
``descriptor.engine`` and ``descriptor.precision`` differ. Prints verified pairs, inlier matches, registered
images, 3D points, reprojection error, the median rotation/position error against the Strecha cameras after a
robust similarity alignment, and the run time (images -> database, and mapping).

    python bench/engine_pipeline.py [--scene entry-P10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pycolmap

from matcher.config import load_config
from matcher.evaluation.sfm import compare_to_strecha
from matcher.pipeline import run_match

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="entry-P10")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    common.set_threads(args.threads)
    print(common.machine_notes(), flush=True)
    scene = common.shared_data() / "scenes" / args.scene
    rows = []
    for engine, precision in VARIANTS:
        config = load_config("default", [{"descriptor": {"engine": engine, "precision": precision},
                                          "mapping": {"num_threads": args.threads}}])
        load = common.load_average()
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            report = run_match(scene / "images", Path(tmp) / "db.db", config, reconstruct_dir=Path(tmp) / "sparse",
                               progress=False)
            seconds = time.perf_counter() - t
            r = report.reconstruction
            errors = ["-", "-"]
            if (scene / "gt_dense_cameras").is_dir() and r is not None and r.registered_images >= 3:
                e = compare_to_strecha(pycolmap.Reconstruction(Path(tmp) / "sparse" / "0"), scene / "gt_dense_cameras",
                                       robust=True)
                errors = [f"{e['rotation_error_deg_median']:.3f}", f"{e['position_error_median']:.4f}"]
        d = report.database
        rows.append([f"{engine} {precision}", d["verified_pairs"], d["inlier_matches"],
                     f"{r.registered_images}/{r.total_images}", r.points3d, f"{r.mean_reprojection_error:.3f}", *errors,
                     f"{report.timings['extract']:.1f}", f"{seconds - report.timings.get('map', 0.0):.1f}",
                     f"{report.timings.get('map', 0.0):.1f}", load])
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"\ncommand: `{common.command_line()}`; scene {args.scene}\n")
    print(common.markdown_table(
        ["engine, precision", "verified pairs", "inlier matches", "registered", "3D points", "reproj. error px",
         "rotation error deg (median)", "position error m (median)", "extraction s", "images -> database s",
         "mapping s", "load average at start"], rows))


if __name__ == "__main__":
    main()
