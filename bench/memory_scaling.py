"""Does peak memory of ``run_match`` grow with the number of images? N = 5, 10, 20, 29 photos of scenes/lund.

Each N runs in a fresh spawned interpreter (so nothing is shared between runs): the first N images (name order)
are copied to a temporary folder and ``matcher.pipeline.run_match`` runs on them with the ``rootsift`` preset and
no reconstruction. Reported per N:

* whole-run peak RSS of the child (``VmHWM``, imports of torch/kornia/pycolmap included) and the RSS right
  before ``run_match`` (the fixed cost of the interpreter and libraries);
* per phase (extract_features, match_features, export_database, wrapped in the child only to measure): the peak RSS during
  the phase (the high-water mark is reset at its start) and the RSS right after it. After match_features the child
  also runs ``gc.collect()`` + glibc ``malloc_trim(0)`` and reads RSS again ("live"): memory still in use, as
  opposed to freed heap memory the allocator kept. Phase peaks do not add up: each is an absolute RSS;
* sizes of features.h5, matches.h5 and the database.

Extra runs to explain growth: ``--small-cache-ns`` repeats some N with the pipeline's feature LRU
(``matcher.stages.match.FeatureCache``, 16 images by default) limited to 4 images, patched in the child;
``--fixed-mmap-ns`` repeats some N with ``MALLOC_MMAP_THRESHOLD_=1048576`` in the child's environment (glibc then
serves every block above 1 MiB with its own mmap and unmaps it on free, instead of raising the threshold
dynamically and recycling big freed blocks inside a fragmenting heap).

Run from the repository root:  python bench/memory_scaling.py [--ns 5 10 20 29]
    [--small-cache-ns 29] [--fixed-mmap-ns 29]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def child(image_dir: str, workdir: str, threads: int, cache_capacity: int | None) -> dict[str, Any]:
    """Runs in a fresh process: run_match with per-phase RSS probes."""
    common.set_threads(threads)
    import matcher.pipeline as pipeline
    from matcher.config import load_config

    phases: dict[str, dict[str, float]] = {}
    peaks_between: list[float] = []  # high-water marks read just before each reset, so no interval is lost

    def probe(name: str, fn):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            peaks_between.append(common.peak_rss_mib())
            common.reset_peak()
            before = common.rss_mib()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = dict(
                    before=before, peak=common.peak_rss_mib(), after=common.rss_mib(), seconds=time.perf_counter() - t0
                )
                if name == "match":  # live memory: what is left once freed heap pages go back to the kernel
                    common.release_memory()
                    phases[name]["live"] = common.rss_mib()

        return wrapper

    import matcher.stages.match as match_stage

    pipeline.extract_features = probe("extract", pipeline.extract_features)
    pipeline.match_features = probe("match", pipeline.match_features)
    pipeline.export_database = probe("export", pipeline.export_database)
    if cache_capacity is not None:
        original_init = match_stage.FeatureCache.__init__

        def small_init(self, store, capacity=cache_capacity):  # noqa: ANN001, ANN202
            original_init(self, store, capacity)

        match_stage.FeatureCache.__init__ = small_init

    config = load_config("rootsift")
    config.mapping.num_threads = threads
    db = Path(workdir) / "run.db"
    import matcher.colmap_db  # noqa: F401  (import everything before the baseline reading)
    import pycolmap  # noqa: F401

    rss_before = common.rss_mib()
    peak_imports = common.peak_rss_mib()
    t0 = time.perf_counter()
    report = pipeline.run_match(Path(image_dir), db, config, progress=False)
    seconds = time.perf_counter() - t0
    whole_peak = max([peak_imports, common.peak_rss_mib()] + peaks_between + [p["peak"] for p in phases.values()])
    sizes = {
        "features.h5": (db.with_name("run.features.h5")).stat().st_size / common.MiB,
        "matches.h5": (db.with_name("run.matches.h5")).stat().st_size / common.MiB,
        "database": db.stat().st_size / common.MiB,
    }
    return dict(
        images=len(report.images_used), pairs=report.pairs, seconds=seconds, rss_before=rss_before,
        whole_peak=whole_peak, rss_end=common.rss_mib(), phases=phases,
        sizes=sizes, keypoints=report.database.get("keypoints", 0),
    )


MMAP_THRESHOLD = 1 << 20


def run_n(images: list[Path], n: int, threads: int, cache_capacity: int | None, fixed_mmap: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench_mem_{n}_") as tmp:
        src = Path(tmp) / "images"
        src.mkdir()
        for p in images[:n]:
            shutil.copy2(p, src / p.name)
        if fixed_mmap:  # read by glibc when the spawned child starts
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        try:
            result = common.run_in_child(child, str(src), tmp, threads, cache_capacity)
        finally:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    result["n"] = n
    result["variant"] = ("default" if cache_capacity is None else f"feature cache {cache_capacity}") + (
        f", MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" if fixed_mmap else "")
    return result


def render(results: list[dict[str, Any]]) -> str:
    headers = ["N images", "pairs", "variant", "time (s)", "RSS before run (MiB)", "**peak RSS, whole run (MiB)**",
               "extract: peak / after", "match: peak / after / live", "export: peak / after",
               "features.h5 / matches.h5 / db (MiB)"]
    rows = []
    for r in results:
        ph = r["phases"]

        def cell(k: str) -> str:
            if k not in ph:
                return "-"
            text = f"{common.fmt_mib(ph[k]['peak'])} / {common.fmt_mib(ph[k]['after'])}"
            return text + (f" / {common.fmt_mib(ph[k]['live'])}" if "live" in ph[k] else "")

        rows.append([
            r["n"], r["pairs"], r["variant"], common.fmt_s(r["seconds"]), common.fmt_mib(r["rss_before"]),
            f"**{common.fmt_mib(r['whole_peak'])}**", cell("extract"), cell("match"), cell("export"),
            " / ".join(f"{v:.1f}" for v in r["sizes"].values()),
        ])
    return common.markdown_table(headers, rows, "rrl" + "r" * (len(headers) - 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.shared_data() / "scenes" / "lund" / "images")
    parser.add_argument("--ns", type=int, nargs="+", default=[5, 10, 20, 29])
    parser.add_argument("--small-cache-ns", type=int, nargs="*", default=[29],
                        help="N to repeat with the feature LRU limited to 4 images (none: skip)")
    parser.add_argument("--fixed-mmap-ns", type=int, nargs="*", default=[29],
                        help=f"N to repeat with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (glibc: every block above "
                             "1 MiB is mmap-ed and returned to the kernel when freed; none: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from matcher.images import list_images

    images = [args.images / name for name in list_images(args.images)]
    common.set_threads(args.threads)
    print(common.machine_notes(), flush=True)
    start = time.perf_counter()
    results = []
    plan = ([(n, None, False) for n in args.ns] + [(n, 4, False) for n in args.small_cache_ns]
            + [(n, None, True) for n in args.fixed_mmap_ns])
    for n, capacity, fixed_mmap in plan:
        if n > len(images):
            print(f"skip N={n}: only {len(images)} images", file=sys.stderr)
            continue
        results.append(run_n(images, n, args.threads, capacity, fixed_mmap))
        r = results[-1]
        print(f"[N={n} {r['variant']}] {r['seconds']:.0f} s, peak {r['whole_peak']:.0f} MiB, "
              f"load {common.load_average()}", file=sys.stderr, flush=True)
    print(f"\ncommand: `{common.command_line()}` (total {time.perf_counter() - start:.0f} s)\n")
    print(render(results))


if __name__ == "__main__":
    main()
