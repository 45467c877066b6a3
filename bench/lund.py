"""The whole ``match`` pipeline on scenes/lund (29 photos, 1024x768) against pycolmap's own SIFT, in one process.

``--scene castle-P30`` (30 photos, 1600x1067) or any folder of ``scenes/`` runs the same comparison there.

For each of ``--rounds`` rounds (the order of the methods reverses every other round, A B C then C B A, so load
drift on the shared machine hits all of them alike):

* ours: ``matcher.pipeline.run_match`` with ``load_config(preset)`` (default ``rootsift``), images -> features.h5
  -> matches.h5 -> verified COLMAP database; torch and OpenCV at ``--threads`` threads;
* pycolmap: :func:`matcher.evaluation.methods.colmap_sift_database` (the baseline of ``matcher eval``):
  ``pycolmap.extract_features`` (CPU SIFT, ``num_threads``, ``max_image_size`` 1600, ``sift.max_num_features``
  4096, COLMAP's camera grouping) + ``pycolmap.match_exhaustive`` (CPU, ``FeatureMatchingOptions`` default but
  ``num_threads``, default ``TwoViewGeometryOptions``): images -> verified database.

Times are wall clock around those calls; peak memory is the process's RSS high-water mark during the call
(``common.PeakRSS``: absolute, and above the RSS before the call). Then each database of the last round is
mapped by the pipeline's mapping (:func:`matcher.mapping.reconstruct`, ``MappingConfig`` defaults, seed 0,
``num_threads``), once per ``--mapping`` variant: incremental mapping as configured (``default``) or with the
initial-pair conditions relaxed for forward motion (``forward``), and global mapping (``global``). The largest
model is summarised. Database numbers: verified pairs = two-view geometries with at least one inlier, inlier
matches = their sum.

``--variants preset fp32 serial`` adds runs of ours with float32 candidate proposals (the path of CPUs without
native bfloat16), with one matching worker (pairs one after the other), with the torch engine (``torch``) and with
torch's matching on the OpenVINO path (``torch-matching``: what that path matched with before its numpy engine);
see ``OURS_VARIANTS``. cProfile (on unless ``--no-profile``) runs around the first variant's run of the
last round (about 6e5 Python calls, so the overhead is negligible next to the run time) and prints the top
functions.

Run from the repository root:  python bench/lund.py [--rounds 3] [--preset default] [--scene castle-P30]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from matcher.colmap_log import quiet_colmap  # noqa: E402

# Mapping variants (MappingConfig overrides), applied identically to both databases. "default": the pipeline's. "forward": lund is a
# street walked forwards; COLMAP's initial-pair search rejects pairs whose motion is mostly forward
# (init_max_forward_motion 0.95) and asks a 16 degree triangulation angle, so with the defaults neither
# database gives a model of more than 2 images. "forward" lifts the first and halves the second.
# "global": pycolmap.global_mapping (GLOMAP), which needs no initial pair (the pipeline's mapping.mapper option).
MAPPING_VARIANTS: dict[str, dict[str, float]] = {
    "default": {},
    "forward": {"init_max_forward_motion": 1.0, "init_min_tri_angle": 8.0},
    "global": {},
}


# Variants of our run, all with the same preset; "preset": as shipped. "fp32": matching.precision = "fp32" (what
# a CPU without native bfloat16 runs). "serial": matching.workers = 1 (one pair at a time, same results).
# "torch": descriptor.engine = "torch" (SDGMNet run by torch instead of the auto engine, OpenVINO when installed).
OURS_VARIANTS = ("preset", "fp32", "serial", "torch", "torch-matching")


def run_ours(image_dir: Path, workdir: Path, preset: str, threads: int, profile: bool,
             variant: str = "preset") -> dict[str, Any]:
    import torch

    from matcher.config import load_config
    from matcher.pipeline import run_match

    config = load_config(preset)
    config.mapping.num_threads = threads
    if variant == "fp32":
        config.matching.precision = "fp32"
    elif variant == "serial":
        config.matching.workers = 1
    elif variant == "torch":
        config.descriptor.engine = "torch"
    elif variant == "torch-matching":  # the OpenVINO path's numpy matching replaced by torch's (bf16 proposals)
        config.matching.engine = "torch"
    workdir.mkdir(parents=True)  # fresh folder: cached features.h5/matches.h5 of an earlier run must not be reused
    db = workdir / "ours.db"
    profiler = cProfile.Profile() if profile else None
    with common.PeakRSS() as mem:
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        try:
            report = run_match(image_dir, db, config, overwrite=True, progress=False)
        finally:
            if profiler:
                profiler.disable()
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - t0
    return dict(
        seconds=seconds, stages=dict(report.timings), db=db, peak=mem.peak, delta=mem.delta,
        pairs=report.pairs, profiler=profiler,
    )


def run_pycolmap(image_dir: Path, workdir: Path, threads: int, max_image_size: int, max_features: int) -> dict[str, Any]:
    from matcher.evaluation.methods import colmap_sift_database

    workdir.mkdir(parents=True)
    db = workdir / "pycolmap.db"
    with common.PeakRSS() as mem:
        stages = colmap_sift_database(db, image_dir, max_image_size, max_features, threads, per_image_cameras=False)
    return dict(seconds=sum(stages.values()), stages=stages, db=db, peak=mem.peak, delta=mem.delta)


def database_stats(db: Path) -> dict[str, Any]:
    import pycolmap

    with pycolmap.Database.open(db) as d:
        images = d.read_all_images()
        _, geometries = d.read_two_view_geometries()
        verified = [g for g in geometries if len(g.inlier_matches) > 0]
        configs = collections.Counter(pycolmap.TwoViewGeometryConfiguration(int(g.config)).name for g in verified)
        raw_matches = d.num_matches()
        stats = dict(
            images=len(images),
            cameras=d.num_cameras(),
            keypoints=d.num_keypoints(),
            keypoints_per_image=d.num_keypoints() / max(1, len(images)),
            matched_pairs=d.num_matched_image_pairs(),
            raw_matches=raw_matches,
            verified_pairs=len(verified),
            inlier_matches=int(sum(len(g.inlier_matches) for g in verified)),
            configs=dict(configs),
        )
    return stats


def run_mapping(db: Path, image_dir: Path, out: Path, threads: int, variant: str) -> dict[str, Any]:
    """The pipeline's mapping (:func:`matcher.mapping.reconstruct`, seed 0) with the variant's options."""
    import pycolmap

    from matcher.config import MappingConfig
    from matcher.mapping import model_path, reconstruct

    config = MappingConfig(mapper="global" if variant == "global" else "incremental", num_threads=threads, seed=0,
                           **MAPPING_VARIANTS[variant])
    t0 = time.perf_counter()
    best, summary = reconstruct(db, image_dir, out, config)
    seconds = time.perf_counter() - t0
    sizes = [pycolmap.Reconstruction(model_path(out, i)).num_reg_images() for i in range(summary.num_models)]
    return dict(
        seconds=seconds, models=summary.num_models, sizes=sizes, registered=summary.registered_images,
        points3d=summary.points3d, track_length=summary.mean_track_length,
        reprojection_error=summary.mean_reprojection_error,
        observations_per_image=best.compute_mean_observations_per_reg_image() if best and best.num_points3D() else 0.0,
    )


def profile_report(profiler: cProfile.Profile, top: int = 18) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n---- by cumulative time ----\n")
    stats.sort_stats("cumulative").print_stats(top)
    text = out.getvalue()
    return "\n".join(line for line in text.splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="lund", help="a scene of ../shared/data/scenes (lund, castle-P30, ...)")
    parser.add_argument("--images", type=Path, default=None, help="an image folder (overrides --scene)")
    parser.add_argument("--preset", default="rootsift", help="our preset (rootsift, sdgmnet, or a .toml file)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all methods, order rotating (default 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-image-size", type=int, default=1600, help="pycolmap extraction max_image_size")
    parser.add_argument("--max-features", type=int, default=4096, help="pycolmap sift.max_num_features")
    parser.add_argument("--mapping", nargs="*", default=list(MAPPING_VARIANTS), choices=list(MAPPING_VARIANTS))
    parser.add_argument("--variants", nargs="+", default=["preset"], choices=list(OURS_VARIANTS),
                        help="our run variants (fp32: float32 proposals; serial: one matching worker; torch: the "
                             "torch descriptor engine; torch-matching: matching.engine = torch)")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args()
    args.images = args.images or common.shared_data() / "scenes" / args.scene / "images"
    with quiet_colmap(1):  # COLMAP's INFO lines per image/pair: off for both pipelines
        compare(args)


def compare(args: argparse.Namespace) -> None:
    from matcher.config import load_config
    from matcher.descriptors import resolve_weights
    from matcher.errors import ModelWeightsError

    config = load_config(args.preset)
    if config.descriptor.name == "sdgmnet":
        try:
            resolve_weights(config.descriptor.weights)
        except ModelWeightsError as exc:
            print(f"SKIPPED: preset '{args.preset}' uses SDGMNet but no weights are available ({exc}).")
            return

    common.set_threads(args.threads)
    print(common.machine_notes(), flush=True)
    if config.descriptor.name == "sdgmnet":  # untimed: a first run converts the network for its engine (cached)
        from matcher.descriptors import build_descriptor

        t0 = time.perf_counter()
        engine = build_descriptor(config.descriptor, config.patches).engine
        print(f"descriptor engine: {engine.name} {engine.precision}, set up in {time.perf_counter() - t0:.1f} s "
              f"(cache {'hit' if getattr(engine, 'cache_hit', True) else 'miss: converted now'})", flush=True)
    start = time.perf_counter()
    methods = [f"ours:{v}" for v in args.variants] + ["pycolmap"]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_lund_") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            last = r == args.rounds - 1
            order = methods if r % 2 == 0 else methods[::-1]  # A B C, then C B A (balances linear load drift)
            for method in order:
                loads.append(f"{method}: {common.load_average()}")
                folder = work / f"{method.replace(':', '_')}{r}"
                if method == "pycolmap":
                    result = run_pycolmap(args.images, folder, args.threads, args.max_image_size, args.max_features)
                else:
                    variant = method.split(":", 1)[1]
                    profile = args.profile and last and variant == args.variants[0]
                    result = run_ours(args.images, folder, args.preset, args.threads, profile, variant)
                runs[method].append(result)
                print(f"[round {r + 1}] {method} {result['seconds']:.1f} s {result['stages']}", file=sys.stderr, flush=True)
        stats = {m: database_stats(runs[m][-1]["db"]) for m in methods}
        maps: dict[str, dict[str, Any]] = {}
        for variant in args.mapping:
            for m in methods:
                maps[f"{m}/{variant}"] = run_mapping(runs[m][-1]["db"], args.images,
                                                     work / f"sparse_{m.replace(':', '_')}_{variant}", args.threads, variant)
                print(f"[mapping {variant}] {m}: {maps[f'{m}/{variant}']}", file=sys.stderr, flush=True)
    total = time.perf_counter() - start

    median = {m: statistics.median(x["seconds"] for x in runs[m]) for m in methods}
    base = median["pycolmap"]

    def per_stage(m: str, key: str) -> str:
        if m == "pycolmap":
            key = {"match": "match+verify"}.get(key, key)
            if key == "export":
                return "(in matching)"
        return common.fmt_s(statistics.median(x["stages"][key] for x in runs[m]))

    def mem(m: str) -> str:
        return f"{common.fmt_mib(max(x['peak'] for x in runs[m]))} / +{common.fmt_mib(max(x['delta'] for x in runs[m]))}"

    def configs(m: str) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(stats[m]["configs"].items()))

    rows = [
        ["**images -> verified database (s), median**", *[f"**{common.fmt_s(median[m])}**" for m in methods]],
        ["**ratio to pycolmap** (median of per-round ratios)", *[
            f"**{statistics.median(a['seconds'] / b['seconds'] for a, b in zip(runs[m], runs['pycolmap'])):.2f}**"
            for m in methods]],
        ["  per run (s)", *[" / ".join(common.fmt_s(x["seconds"]) for x in runs[m]) for m in methods]],
        ["  extraction (s)", *[per_stage(m, "extract") for m in methods]],
        ["  matching + verification (s)", *[per_stage(m, "match") for m in methods]],
        ["  database export (s)", *[per_stage(m, "export") for m in methods]],
        ["peak RSS during the call (MiB, absolute / above RSS before)", *[mem(m) for m in methods]],
        ["keypoints per image", *[f"{stats[m]['keypoints_per_image']:.0f}" for m in methods]],
        ["pairs with raw matches / raw matches", *[f"{stats[m]['matched_pairs']} / {stats[m]['raw_matches']}" for m in methods]],
        ["verified pairs (>= 1 inlier)", *[stats[m]["verified_pairs"] for m in methods]],
        ["inlier matches", *[stats[m]["inlier_matches"] for m in methods]],
        ["verified pair types", *[configs(m) for m in methods]],
    ]
    for variant in args.mapping:
        mp = {m: maps[f"{m}/{variant}"] for m in methods}
        rows += [
            [f"mapping `{variant}`: time (s)", *[common.fmt_s(mp[m]["seconds"]) for m in methods]],
            ["  registered images, largest model (model sizes)",
             *[f"{mp[m]['registered']}/{stats[m]['images']} ({mp[m]['sizes']})" for m in methods]],
            ["  3D points", *[mp[m]["points3d"] for m in methods]],
            ["  mean track length", *[f"{mp[m]['track_length']:.2f}" for m in methods]],
            ["  mean reprojection error (px)", *[f"{mp[m]['reprojection_error']:.3f}" for m in methods]],
        ]
    print(f"\ncommand: `{common.command_line()}` (total {total:.0f} s)")
    print(f"images: {args.images} ({stats['pycolmap']['images']}); preset: {args.preset}; threads: {args.threads}")
    print("load average at the start of each run: " + "; ".join(loads))
    mapping_desc = "; ".join(
        f"`{k}`: " + ("global_mapping (GLOMAP), defaults" if k == "global" else f"incremental_mapping, {v or 'defaults'}")
        for k, v in MAPPING_VARIANTS.items() if k in args.mapping
    )
    print(f"mapping variants (num_threads {args.threads}, random_seed 0, every database): {mapping_desc}\n")
    headers = [""] + [f"ours ({args.preset}{'' if m == 'ours:preset' else ', ' + m.split(':')[1]})"
                      if m.startswith("ours") else "pycolmap SIFT" for m in methods]
    print(common.markdown_table(headers, rows))
    first = runs[methods[0]][-1]
    if args.profile and first.get("profiler") is not None:
        print(f"\ncProfile of the last run of {methods[0]} ({common.fmt_s(first['seconds'])} s, {first['pairs']} pairs):\n```")
        print(profile_report(first["profiler"]))
        print("```")


if __name__ == "__main__":
    main()
