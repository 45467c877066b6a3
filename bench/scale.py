"""The pipeline at scale: 100 / 300 / 1,000 views of the synthetic street, whose cameras are known.

The collection is :mod:`matcher.evaluation.synthetic_street` (640x480 views every 0.25 m along a 250 m street of
unique procedural facades), rendered once into ``--cache`` (default: a folder in the system's temp dir, never in
the repository) and reused; a size N is its first N views (a folder of symbolic links).

For every size, in a fresh process (so its peak memory is its own), the stages of :mod:`matcher.stages` run in
turn on the N views: ``extract_features`` -> ``make_pairs`` (``--retrieval K``, plus ``--overlap N`` sequential
neighbours when given) -> ``match_features`` (mutual nearest neighbours + MAGSAC++) -> ``expand_pairs``
(``--rounds`` verified-neighbour rounds, default the config's ``pairs.expand_rounds``, each matched) ->
``export_database`` -> ``reconstruct`` (``--mapper``, default incremental). Reported per stage: wall time and the peak resident memory
while it ran (``VmRSS`` sampled every 50 ms by a thread, plus the kernel's high-water mark ``VmHWM`` reset at
each stage start; the larger is shown). With ``--ray`` the same sizes run again with ``ray="auto"`` (a local
Ray cluster of ``--ray-workers`` CPUs started by the child) up to the export (mapping is the same pycolmap run on
the driver; ``--ray-map`` maps them too); the peak then also counts the Ray processes started under the child
(sum of their RSS, sampled). Before mapping, the RSS that pycolmap's ``DatabaseCache`` of the database adds (what
the incremental mapper loads first: cameras, images with their keypoints, the correspondence graph) is measured
on its own, and after it the model's 3D points and observations, so the mapping stage's memory can be read
against what pycolmap holds.

Quality per size: registered views, and the pose error of the largest model against the known cameras after
a similarity alignment (:func:`matcher.evaluation.synthetic_scene.compare_to_scene`). Where exhaustive
matching is affordable (N <= ``--exhaustive-up-to``, default 100), a second child matches every pair on the
same features and the retrieval recall is reported: the run's pairs (top-K, and top-K plus the verified-neighbour
rounds) among the pairs exhaustive matching verifies with >= ``--min-inliers`` (50) inliers, and the oracle
ceiling of top-K (each view's top K by those inlier counts: no top-K list can do better when views have more
than K true partners).

Times are wall clock on a shared machine (the load average is printed at each size); compare within a run.

Run from the repository root:
    python bench/scale.py [--sizes 100 300 1000] [--preset rootsift] [--retrieval 10] [--rounds 1] [--overlap 0]
        [--mapper incremental] [--no-map] [--max-keypoints 1024] [--ray | --ray-only] [--threads 2] [--collection 1000]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STAGES = ("extract", "pairs", "match", "expand", "export", "map")


# ----------------------------------------------------------------------------------------------------- memory


def _rss_kib(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """Every live process under ``root`` (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Sampler(threading.Thread):
    """Samples this process's RSS (and, with ``tree``, the sum over the processes it started) every ``interval``
    seconds; :meth:`stage` keeps the peak of each stage, with the kernel's VmHWM of this process."""

    def __init__(self, tree: bool, interval: float = 0.05, live: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.tree, self.interval, self.live = tree, interval, live
        self.current = 0.0
        self.name, self.started = "", time.perf_counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> float:
        kib = _rss_kib("self")
        if self.tree:
            kib += sum(_rss_kib(pid) for pid in _descendants(os.getpid()))
        return kib / 1024.0

    def run(self) -> None:
        last_write = 0.0
        while not self.stop.is_set():
            value = self.sample()
            with self.lock:
                self.current = max(self.current, value)
            if self.live is not None and time.perf_counter() - last_write > 5.0:  # the running stage, for --deadline
                last_write = time.perf_counter()
                self.live.write_text(json.dumps({"stage": self.name, "seconds": last_write - self.started,
                                                 "peak_mib": max(self.current, common.peak_rss_mib())}))
            time.sleep(self.interval if not self.tree else 4 * self.interval)

    @contextmanager
    def stage(self, record: dict[str, Any], name: str, partial: Path | None = None) -> Iterator[None]:
        """Time and peak RSS of the block into ``record``; the record so far is written to ``partial`` after it
        (a run stopped by ``--deadline`` keeps its finished stages) and a line is printed."""
        with self.lock:
            self.current = self.sample()
        common.reset_peak()
        t0 = time.perf_counter()
        self.name, self.started = name, t0
        yield
        record[f"{name}_s"] = time.perf_counter() - t0
        with self.lock:
            sampled = max(self.current, self.sample())
        record[f"{name}_peak_mib"] = max(sampled, common.peak_rss_mib())
        print(f"  {record['images']} views{' Ray' if record['ray'] else ''}: {name} {record[f'{name}_s']:.1f} s, "
              f"peak {record[f'{name}_peak_mib']:.0f} MiB, load {common.load_average()}", flush=True)
        if partial is not None:
            partial.write_text(json.dumps({k: v for k, v in record.items() if not k.endswith("_list")}))


# ------------------------------------------------------------------------------------------------------ child


def subset(collection: Path, n: int, root: Path) -> Path:
    """A folder of symbolic links to the first ``n`` views of the collection."""
    folder = root / f"images-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = folder / f"view_{i:04d}.jpg"
        if not link.exists():
            link.symlink_to(collection / "images" / link.name)
    return folder


def _config(args: dict[str, Any], strategy: str) -> Any:
    from matcher.config import load_config

    pairs: dict[str, Any] = {"strategy": strategy}
    if strategy != "exhaustive":
        pairs.update(retrieval_k=args["retrieval"], expand_rounds=args["rounds"])
        if args["overlap"] > 0:
            pairs.update(strategy="sequential", overlap=args["overlap"])
    return load_config(args["preset"], [{
        "detection": {"max_keypoints": args["max_keypoints"]},
        "pairs": pairs,
        "export": {"single_camera": True},
        "mapping": {"mapper": args["mapper"], "num_threads": args["threads"]},
    }])


def run_size(collection: str, image_dir: str, work: str, args: dict[str, Any], ray: bool) -> dict[str, Any]:
    """In a fresh process: every stage on the views of ``image_dir``, timed, with peak memory and pose error.
    Ray runs stop after the export unless ``args["ray_map"]`` (mapping is pycolmap on the driver either way)."""
    common.set_threads(args["threads"])
    import pycolmap

    from matcher.evaluation.synthetic_scene import compare_to_scene, load_scene
    from matcher.stages import (
        FeatureSettings, expand_pairs, export_database, extract_features, make_pairs, match_features, reconstruct,
    )

    image_dir_p, work_p = Path(image_dir), Path(work)
    work_p.mkdir(parents=True, exist_ok=True)
    config = _config(args, "retrieval")
    address = None
    if ray:
        import ray as ray_module

        ray_module.init(num_cpus=args["ray_workers"], include_dashboard=False, log_to_driver=False)
        address = "auto"
    names = sorted(p.name for p in image_dir_p.iterdir())
    features, matches, db = work_p / "features.h5", work_p / "matches.h5", work_p / "database.db"
    record: dict[str, Any] = {"images": len(names), "ray": ray, "load_before": common.load_average()}
    sampler = Sampler(tree=ray, live=work_p / "live.json")
    sampler.start()
    settings = FeatureSettings(config.images, config.detection, config.patches, config.descriptor)
    partial = work_p / "record.json"
    with sampler.stage(record, "extract", partial):
        extracted = extract_features(image_dir_p, features, names, settings, ray=address)
    used = sorted(extracted.used)
    with sampler.stage(record, "pairs", partial):
        pairs = make_pairs(features, config.pairs, names=used, image_dir=image_dir_p)
    with sampler.stage(record, "match", partial):
        match_features(features, pairs, matches, config.matching, config.verification, threads=args["threads"],
                       ray=address)
    top_k = pairs
    with sampler.stage(record, "expand", partial):
        expanded = expand_pairs(features, pairs, matches, config.pairs, config.matching, config.verification,
                                threads=args["threads"], ray=address)
    pairs = expanded.pairs
    record.update(top_k_pairs=len(top_k), added_pairs=expanded.added)
    with sampler.stage(record, "export", partial):
        exported = export_database(image_dir_p, features, matches, pairs, db, config.export, names=used)
    if ray:
        import ray as ray_module

        ray_module.shutdown()
    record.update(pairs=len(pairs), verified_pairs=exported.pairs_verified, pairs_list=[list(p) for p in pairs],
                  top_k_list=[list(p) for p in top_k],
                  inlier_matches=exported.database.get("inlier_matches", 0), registered=0)
    if not ray:
        cache_rss, cache_heap = database_cache_mib(db)
        record.update(database_cache_mib=cache_rss, database_cache_heap_mib=cache_heap,
                      rss_before_map_mib=_rss_kib("self") / 1024.0, heap_before_map_mib=heap_in_use_mib())
    if (not ray or args["ray_map"]) and not args["no_map"]:
        partial.write_text(json.dumps({k: v for k, v in record.items() if not k.endswith("_list")}))
        with sampler.stage(record, "map", partial):
            summary = reconstruct(db, image_dir_p, work_p / "sparse", config.mapping)
        record["registered"] = summary.registered_images
    sampler.stop.set()
    done = [s for s in STAGES if f"{s}_s" in record]
    record.update(whole_peak_mib=max(record[f"{s}_peak_mib"] for s in done), load_after=common.load_average(),
                  total_s=sum(record[f"{s}_s"] for s in done))
    from matcher.mapping import model_path

    if record["registered"] >= 3:
        scene = load_scene(Path(collection))
        model = pycolmap.Reconstruction(model_path(work_p / "sparse"))
        comparison = compare_to_scene(model, scene)
        record.update(points3d=model.num_points3D(), observations=int(model.compute_num_observations()))
        record.update(rotation_median_deg=float(np.median(comparison.rotation_deg)),
                      rotation_max_deg=float(comparison.rotation_deg.max()),
                      position_median_mm=1000 * float(np.median(comparison.position_m)),
                      position_max_mm=1000 * float(comparison.position_m.max()))
    return record


def heap_in_use_mib() -> float:
    """Bytes allocated through malloc and not freed, over all arenas (glibc's mallinfo2), in MiB: unlike the RSS,
    it counts allocations that reuse memory freed by earlier stages. NaN where glibc is not available."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return float("nan")
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def database_cache_mib(db: Path) -> tuple[float, float]:
    """(RSS, heap in use) in MiB that pycolmap's DatabaseCache of ``db`` adds while it is held: what the
    incremental mapper loads before it starts (cameras, images and keypoints, the correspondence graph of the
    verified pairs)."""
    import gc

    import pycolmap

    from matcher.colmap_log import quiet_colmap

    before, heap_before = _rss_kib("self"), heap_in_use_mib()
    with quiet_colmap(), pycolmap.Database.open(db) as database:
        cache = pycolmap.DatabaseCache.create(database, pycolmap.DatabaseCacheOptions())
        held, heap_held = _rss_kib("self"), heap_in_use_mib()
        del cache
    gc.collect()
    return (held - before) / 1024.0, heap_held - heap_before


def run_exhaustive(image_dir: str, features_from: str, work: str, args: dict[str, Any],
                   retrieved: list[list[str]], top_k: list[list[str]]) -> dict[str, Any]:
    """In a fresh process: every pair matched on a copy of the retrieval run's features; recall of retrieval."""
    common.set_threads(args["threads"])
    from matcher.stages import make_pairs, match_features
    from matcher.storage import MatchStore

    work_p = Path(work)
    work_p.mkdir(parents=True, exist_ok=True)
    features = work_p / "features.h5"
    shutil.copyfile(features_from, features)
    config = _config(args, "exhaustive")
    t0 = time.perf_counter()
    pairs = make_pairs(features, config.pairs, image_dir=Path(image_dir))
    match_features(features, pairs, work_p / "matches.h5", config.matching, config.verification,
                   threads=args["threads"])
    seconds = time.perf_counter() - t0
    names = sorted({n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(names)}
    inliers = np.zeros((len(names), len(names)))
    with MatchStore(work_p / "matches.h5", "r") as store:
        for a, b in pairs:
            m = store.read(a, b)
            inliers[index[a], index[b]] = inliers[index[b], index[a]] = m.num_inliers if m.model != "none" else 0
    reference = {(a, b) for a, b in pairs if inliers[index[a], index[b]] >= args["min_inliers"]}
    got = {tuple(p) for p in retrieved}
    got_top_k = {tuple(p) for p in top_k}
    k = args["retrieval"]
    np.fill_diagonal(inliers, -1)
    ranking = np.argsort(-inliers, axis=1, kind="stable")[:, :k]
    oracle = {tuple(sorted((names[i], names[j]))) for i in range(len(names)) for j in ranking[i]}
    return dict(exhaustive_pairs=len(pairs), exhaustive_s=seconds, reference_pairs=len(reference),
                recall=len(reference & got) / max(1, len(reference)),
                top_k_recall=len(reference & got_top_k) / max(1, len(reference)),
                oracle_recall=len(reference & oracle) / max(1, len(reference)),
                partners_median=float(np.median((inliers >= args["min_inliers"]).sum(axis=1))))


def run_until(deadline: float | None, fn: Any, *args: Any) -> Any:
    """:func:`common.run_in_child`, but the child (and every process it started) is stopped at ``deadline``
    (a ``time.time()``); returns None then."""
    import multiprocessing as mp
    import queue as queue_module
    import signal

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=common._child_entry, args=(results, fn, args, {}))
    proc.start()
    while True:
        try:
            status, payload = results.get(timeout=5.0)
            break
        except queue_module.Empty:
            if deadline is not None and time.time() > deadline:
                for pid in [*_descendants(proc.pid), proc.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                proc.join()
                return None
            if not proc.is_alive():
                raise RuntimeError(f"child process died with exit code {proc.exitcode}")
    proc.join()
    if status != "ok":
        raise RuntimeError(f"child process failed: {payload}")
    return payload


# ----------------------------------------------------------------------------------------------------- tables


def tables(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in records:
        pose = (f"{r['rotation_median_deg']:.3f} / {r['rotation_max_deg']:.3f}" if "rotation_median_deg" in r else "-")
        position = (f"{r['position_median_mm']:.1f} / {r['position_max_mm']:.1f}" if "position_median_mm" in r
                    else "-")
        pairs = (f"{r.get('pairs', '-')} ({' + '.join(map(str, [r['top_k_pairs'], *r['added_pairs']]))})" if "top_k_pairs" in r
                 else r.get("pairs", "-"))
        if "error" in r:
            rows.append([r["images"], "Ray" if r["ray"] else "local", f"failed: {r['error'][:80]}",
                         *["-"] * (len(STAGES) + 8)])
            continue
        rows.append([r["images"], ("Ray x" + str(args.ray_workers) if r["ray"] else "local")
                     + (" (features of the Ray run)" if r.get("features_from_ray") else ""),
                     *(common.fmt_s(r[f"{s}_s"]) if f"{s}_s" in r
                       else f"> {r['stopped_stage_s']:.0f} (stopped)" if r.get("stopped_stage") == s else "-"
                       for s in STAGES),
                     common.fmt_s(r["total_s"]), pairs, r.get("verified_pairs", "-"),
                     r.get("inlier_matches", "-"),
                     common.fmt_mib(r["whole_peak_mib"]),
                     f"{r['registered']}/{r['images']}" if "map_s" in r else "-", pose, position,
                     r.get("load_before", "-").split()[0]])
    out = [common.markdown_table(
        ["views", "run", "extract s", "pairs s", "match+verify s", "expand (+ match) s", "export s", "map s",
         "total s", "pairs (top-K + per round)",
         "verified", "inlier matches", "peak RSS MiB", "registered", "rotation err. median / max (deg)",
         "position err. median / max (mm)", "load"], rows)]
    mem = [[r["images"], "Ray" if r["ray"] else "local",
            *(common.fmt_mib(r[f"{s}_peak_mib"]) if f"{s}_peak_mib" in r else "-" for s in STAGES)]
           for r in records if "error" not in r]
    out.append("\nPeak RSS per stage (MiB" + (", Ray runs: the child and the Ray processes it started" if args.ray
                                              else "") + "):\n")
    out.append(common.markdown_table(["views", "run", *STAGES], mem))
    mapped = [[r["images"], common.fmt_mib(r["rss_before_map_mib"]),
               f"{common.fmt_mib(r['database_cache_mib'])} / "
               + (common.fmt_mib(r["database_cache_heap_mib"]) if "database_cache_heap_mib" in r else "-"),
               common.fmt_mib(r["map_peak_mib"]) if "map_peak_mib" in r else "(not mapped)",
               r.get("inlier_matches", "-"), r.get("points3d", "-"), r.get("observations", "-")]
              for r in records if "database_cache_mib" in r]
    if mapped:
        out.append("\nMapping memory (MiB): RSS before mapping, what pycolmap's DatabaseCache of the database adds "
                   "on its own (RSS / heap in use), the mapping stage's peak, against the database's inlier matches "
                   "and the model:\n")
        out.append(common.markdown_table(["views", "RSS before map", "DatabaseCache: RSS / heap", "map peak",
                                          "inlier matches", "3D points", "observations"], mapped))
    recall = [[r["images"], r["exhaustive_pairs"], common.fmt_s(r["exhaustive_s"]), r["reference_pairs"],
               f"{r['partners_median']:.0f}", r["top_k_pairs"], f"{100 * r['top_k_recall']:.1f} %",
               f"{100 * r['oracle_recall']:.1f} %", r["pairs"], f"{100 * r['pairs'] / r['exhaustive_pairs']:.1f} %",
               f"{100 * r['recall']:.1f} %"] for r in records if "recall" in r]
    if recall:
        out.append(f"\nRetrieval (K = {args.retrieval}" + (f", + {args.overlap} sequential" if args.overlap else "")
                   + f", {args.rounds} verified-neighbour round(s)) against exhaustive matching (reference: pairs "
                   f"verified with >= {args.min_inliers} inliers):\n")
        out.append(common.markdown_table(
            ["views", "exhaustive pairs", "exhaustive match s", "reference pairs", "partners / view (median)",
             "top-K pairs", "top-K recall", "oracle top-K recall", "pairs with the rounds", "of exhaustive",
             "recall with the rounds"], recall))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--preset", default="rootsift")
    p.add_argument("--retrieval", type=int, default=10)
    p.add_argument("--rounds", type=int, default=None,
                   help="verified-neighbour rounds after the top-K pairs (default: pairs.expand_rounds)")
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--mapper", choices=["incremental", "global"], default="incremental")
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.add_argument("--min-inliers", type=int, default=50)
    p.add_argument("--exhaustive-up-to", type=int, default=100)
    p.add_argument("--collection", type=int, help="views of the rendered street (default: the largest size)")
    p.add_argument("--ray", action="store_true", help="also run every size on a local Ray cluster")
    p.add_argument("--ray-only", action="store_true", help="only the Ray runs")
    p.add_argument("--ray-first", action="store_true", help="with --ray: each size's Ray run before its local run")
    p.add_argument("--local-from-ray", type=int, nargs="*", default=[], metavar="N",
                   help="with --ray-first: at these sizes the local run starts from a copy of the Ray run's features.h5 "
                        "(its extraction stage then only checks the file: the time of a full local run is not measured)")
    p.add_argument("--ray-workers", type=int, default=2)
    p.add_argument("--ray-map", action="store_true", help="map the Ray runs' databases too (same as local)")
    p.add_argument("--no-map", action="store_true", help="no mapping (local runs either)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "matcher-bench")
    p.add_argument("--json", type=Path, help="also write the records here")
    p.add_argument("--deadline", help="HH:MM (UTC) or +SECONDS: stop a size still running then, report its finished stages")
    args = p.parse_args()
    if args.rounds is None:
        from matcher.config import PairsConfig

        args.rounds = PairsConfig().expand_rounds
    deadline = None
    if args.deadline and args.deadline.startswith("+"):
        deadline = time.time() + float(args.deadline[1:])
    elif args.deadline:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        hour, minute = (int(v) for v in args.deadline.split(":"))
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
    print(common.machine_notes())
    print(f"\ncommand: {common.command_line()}\n", flush=True)
    from matcher.evaluation.synthetic_street import street_collection

    t0 = time.perf_counter()
    total = args.collection or max(args.sizes)
    collection = args.cache / f"street-{total}"
    street_collection(collection, total)
    print(f"collection: {total} views in {time.perf_counter() - t0:.0f} s (0 s when cached)", flush=True)
    options = {k: getattr(args, k) for k in ("preset", "retrieval", "rounds", "overlap", "mapper", "max_keypoints",
                                             "min_inliers", "threads", "ray_workers", "ray_map", "no_map")}
    records = []
    modes = ([True] if args.ray_only else ([True, False] if args.ray_first else [False, True]) if args.ray else [False])
    with tempfile.TemporaryDirectory(prefix="scale-", dir=args.cache) as tmp:
        for n in args.sizes:
            image_dir = subset(collection, n, args.cache)
            for ray in modes:
                work = Path(tmp) / f"{n}-{'ray' if ray else 'local'}"
                ray_features = Path(tmp) / f"{n}-ray" / "features.h5"
                from_ray = not ray and n in args.local_from_ray and ray_features.is_file()
                if from_ray:
                    work.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ray_features, work / "features.h5")
                started = time.time()
                try:
                    record = run_until(deadline, run_size, str(collection), str(image_dir), str(work), options, ray)
                except RuntimeError as exc:  # a failed size does not end the benchmark
                    print(f"  {n} views{' Ray' if ray else ''}: failed: {exc}", flush=True)
                    records.append({"images": n, "ray": ray, "error": str(exc)[:500], "total_s": float("nan"),
                                    "whole_peak_mib": float("nan")})
                    continue
                if record is not None:
                    record["features_from_ray"] = from_ray
                if record is None:  # stopped at the deadline: the stages it finished
                    partial = work / "record.json"
                    record = json.loads(partial.read_text()) if partial.is_file() else {"images": n, "ray": ray}
                    live = json.loads((work / "live.json").read_text()) if (work / "live.json").is_file() else {}
                    if live.get("stage") and f"{live['stage']}_s" not in record:  # the stage that was cut short
                        record.update(stopped_stage=live["stage"], stopped_stage_s=live["seconds"],
                                      **{f"{live['stage']}_peak_mib": live["peak_mib"]})
                    record.update(stopped_after_s=time.time() - started, pairs_list=[], top_k_list=[])
                    record.setdefault("whole_peak_mib", max([v for k, v in record.items() if k.endswith("_peak_mib")],
                                                            default=float("nan")))
                    record["total_s"] = sum(record.get(f"{s}_s", 0.0) for s in STAGES)
                    print(f"  stopped at the deadline after {record['stopped_after_s']:.0f} s", flush=True)
                elif not ray and n <= args.exhaustive_up_to:
                    record.update(common.run_in_child(run_exhaustive, str(image_dir), str(work / "features.h5"),
                                                      str(Path(tmp) / f"{n}-exhaustive"), options,
                                                      record["pairs_list"], record["top_k_list"]))
                del record["pairs_list"], record["top_k_list"]
                records.append(record)
                print(json.dumps(record), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(records, indent=1))
    print()
    print(tables(records, args))


if __name__ == "__main__":
    main()
