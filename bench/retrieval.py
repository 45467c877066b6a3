"""Retrieval pairs (``match --retrieval K``) against exhaustive pairs on the shared scenes.

For each scene (default ``castle-P30``, ``lund``, ``monstree`` of ../shared/data/scenes), in one process:

1. **Exhaustive**: ``run_match`` with the preset (default ``rootsift``, for speed) and ``pairs.strategy =
   "exhaustive"``, in a fresh folder, then mapping (``--mapper``: incremental for castle-P30 and monstree,
   global for lund, a street walked forwards). The reference pairs are those the exhaustive run verified with
   at least ``--min-inliers`` (50) inliers, read back from its matches.h5.
2. **Retrieval recall**: ``retrieval_pairs`` on the exhaustive run's features.h5 (codebook, VLAD, top-K: what
   ``match --retrieval K`` computes; timed), then the whole VLAD ranking, so that recall (reference pairs among
   the retrieved / reference pairs) is shown for each K of ``--ks`` (5 10 20) with the smallest K that reaches
   95 %. Beside it the **oracle**: the same top-K union when each image ranks the others by the exhaustive
   run's own inlier counts, the ceiling of any top-K retrieval (an image with more than K reference partners
   can only get the rest from their own top-K lists). Where the photos carry EXIF GPS, the recall of
   ``--retrieval K --gps G`` (``--gps``, default 3) too. For each K also the pairs and recall after the
   verified-neighbour rounds (``--rounds``, default the config's ``pairs.expand_rounds``;
   :mod:`matcher.retrieval_expansion`) that ``match --retrieval K`` runs after matching the top-K pairs,
   proposed from the exhaustive run's results of the pairs matched so far (matching is deterministic, so these
   are the pairs the run matches; the run below checks it at ``--k``).
3. **Retrieval run**: ``run_match`` with ``pairs.strategy = "retrieval"``, ``retrieval_k`` = ``--k`` (10) and
   ``expand_rounds`` = ``--rounds`` in a second folder that starts with a copy of the exhaustive features.h5
   (extraction is not repeated; every pair is matched anew), then the same mapping. Its recall is that of the
   pairs it matched (the groups of its matches.h5); registered images of the largest model are compared.

Times are wall clock on a shared 2-core machine: compare them within a scene (load average printed).

Run from the repository root:  python bench/retrieval.py [--scenes castle-P30 lund monstree] [--preset rootsift]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MAPPERS = {"castle-P30": "incremental", "lund": "global", "monstree": "incremental"}


def reference_pairs(matches_h5: Path, pairs: list[tuple[str, str]], min_inliers: int) -> set[tuple[str, str]]:
    """Pairs of an exhaustive run verified with at least ``min_inliers`` inliers."""
    from matcher.storage import MatchStore

    with MatchStore(matches_h5, "r") as store:
        return {
            (a, b) for a, b in pairs
            if (m := store.read(a, b)).model != "none" and m.num_inliers >= min_inliers
        }


def exhaustive_inliers(matches_h5: Path, names: list[str]) -> dict[tuple[str, str], int]:
    """Every pair's verified inliers in the exhaustive run (0: unverified)."""
    from matcher.pairs import exhaustive_pairs
    from matcher.storage import MatchStore

    with MatchStore(matches_h5, "r") as store:
        return {(a, b): store.verified_inliers(a, b) for a, b in exhaustive_pairs(names)}


def oracle_ranking(inliers: dict[tuple[str, str], int], names: list[str]) -> np.ndarray:
    """(N, N - 1): each image's others by the exhaustive run's verified inlier count, most first (ties: index).

    The best any top-K retrieval could do: its recall at K bounds every retrieval's recall at K.
    """
    index = {name: i for i, name in enumerate(names)}
    table = np.zeros((len(names), len(names)))
    for (a, b), n in inliers.items():
        table[index[a], index[b]] = table[index[b], index[a]] = n
    np.fill_diagonal(table, -1)
    return np.argsort(-table, axis=1, kind="stable")[:, : len(names) - 1]


def expanded(names: list[str], pairs: set[tuple[str, str]], inliers: dict[tuple[str, str], int], k: int,
             rounds: int, min_inliers: int) -> set[tuple[str, str]]:
    """``pairs`` and the verified-neighbour rounds after them, each proposed from the results so far."""
    from matcher.retrieval_expansion import verified_neighbour_pairs

    matched = {p: inliers[p] for p in pairs}
    for _ in range(rounds):
        new = verified_neighbour_pairs(names, matched, k, min_inliers)
        if not new:
            break
        matched.update({p: inliers[p] for p in new})
    return set(matched)


def run(image_dir: Path, db: Path, config: Any) -> tuple[Any, float]:
    from matcher.pipeline import run_match

    t0 = time.perf_counter()
    report = run_match(image_dir, db, config, overwrite=True, reconstruct_dir=db.with_suffix(".sparse"),
                       progress=False)
    return report, time.perf_counter() - t0


def bench_scene(scene: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from matcher.config import load_config
    from matcher.gps import gps_pairs, gps_position
    from matcher.pairs import exhaustive_pairs
    from matcher.retrieval import (
        global_descriptors, learn_codebook, pairs_from_neighbours, retrieval_pairs, top_k_neighbours,
    )
    from matcher.storage import FeatureStore

    image_dir = common.shared_data() / "scenes" / scene / "images"
    mapper = args.mapper or MAPPERS.get(scene, "incremental")
    out: dict[str, Any] = {"scene": scene, "mapper": mapper, "load_start": common.load_average()}

    config = load_config(args.preset)
    config.mapping.mapper = mapper
    config.pairs.strategy = "exhaustive"
    ex_db = workdir / scene / "exhaustive.db"
    ex_db.parent.mkdir(parents=True, exist_ok=args.reuse)
    ex_report, out["exhaustive_s"] = run(image_dir, ex_db, config)
    names = sorted(ex_report.images_used)
    all_pairs = exhaustive_pairs(names)
    reference = reference_pairs(ex_db.with_name("exhaustive.matches.h5"), all_pairs, args.min_inliers)
    degrees = sorted(sum(name in p for p in reference) for name in names)
    out["degrees"] = f"{degrees[0]}-{degrees[len(degrees) // 2]}-{degrees[-1]}"
    out.update(images=len(names), exhaustive_pairs=len(all_pairs), reference=len(reference),
               exhaustive_registered=ex_report.reconstruction.registered_images,
               exhaustive_match_s=ex_report.timings["match"])

    features_h5 = ex_db.with_name("exhaustive.features.h5")
    with FeatureStore(features_h5, "r") as store:
        read = lambda n: store.read(n).descriptors  # noqa: E731
        t0 = time.perf_counter()
        retrieval_pairs(names, read, args.k, words=args.words)  # what `match --retrieval K` computes, timed
        out["retrieval_pairs_s"] = time.perf_counter() - t0
        codebook = learn_codebook(names, read, words=args.words)
        ranking = top_k_neighbours(global_descriptors(names, read, codebook), len(names) - 1)
    inliers = exhaustive_inliers(ex_db.with_name("exhaustive.matches.h5"), names)
    oracle = oracle_ranking(inliers, names)
    recall: dict[int, dict[str, Any]] = {}
    for k in range(1, len(names)):
        pairs = set(pairs_from_neighbours(names, ranking[:, :k]))
        best = set(pairs_from_neighbours(names, oracle[:, :k]))
        recall[k] = dict(pairs=len(pairs), found=len(reference & pairs), oracle=len(reference & best),
                         missed=sorted(reference - pairs))
        if k in args.ks:
            grown = expanded(names, pairs, inliers, k, args.rounds, config.pairs.expand_min_inliers)
            recall[k].update(expanded_pairs=len(grown), expanded_found=len(reference & grown),
                             expanded_missed=sorted(reference - grown))
    out["recall"] = recall
    out["k95"] = next((k for k in recall if recall[k]["found"] >= 0.95 * len(reference)), None)
    out["k95_oracle"] = next((k for k in recall if recall[k]["oracle"] >= 0.95 * len(reference)), None)
    positions = {n: p for n in names if (p := gps_position(image_dir / n)) is not None}
    if positions:  # --retrieval K --gps G: the retrieved pairs and each located image's G nearest by EXIF GPS
        with_gps = set(pairs_from_neighbours(names, ranking[:, : args.k])) | set(gps_pairs(names, positions, args.gps))
        out["gps"] = dict(located=len(positions), pairs=len(with_gps), found=len(reference & with_gps))

    config.pairs.strategy, config.pairs.retrieval_k, config.pairs.retrieval_words = "retrieval", args.k, args.words
    config.pairs.expand_rounds = args.rounds
    rt_db = workdir / scene / "retrieval.db"
    shutil.copy(features_h5, rt_db.with_name("retrieval.features.h5"))
    rt_db.with_name("retrieval.matches.h5").unlink(missing_ok=True)  # its groups are then the run's pairs
    rt_report, out["retrieval_s"] = run(image_dir, rt_db, config)
    with h5py.File(rt_db.with_name("retrieval.matches.h5"), "r") as f:
        matched = {tuple(name.replace("%2F", "/").replace("%25", "%") for name in key.split("|")) for key in f.keys()}
    out.update(run_pairs=len(matched), run_found=len(reference & matched), run_added=rt_report.pairs_added,
               run_as_predicted=matched == expanded(names, set(pairs_from_neighbours(names, ranking[:, : args.k])),
                                                    inliers, args.k, args.rounds, config.pairs.expand_min_inliers))
    out.update(retrieval_pairs=rt_report.pairs, retrieval_registered=rt_report.reconstruction.registered_images,
               retrieval_match_s=rt_report.timings["match"], load_end=common.load_average(),
               exhaustive_reused=ex_report.pairs_reused == ex_report.pairs,
               retrieval_reused=rt_report.pairs_reused == rt_report.pairs)
    return out


def synthetic_index(n: int, words: int, dim: int, k: int) -> dict[str, Any]:
    """Time and peak memory of the top-K search over ``n`` random unit float16 VLADs (``words`` x ``dim``)."""
    from matcher.retrieval import top_k_neighbours

    rng = np.random.default_rng(0)
    index = np.empty((n, words * dim), np.float16)
    for r0 in range(0, n, 1024):
        rows = rng.standard_normal((min(1024, n - r0), words * dim), dtype=np.float32)
        index[r0:r0 + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    with common.PeakRSS() as mem:
        t0 = time.perf_counter()
        neighbours = top_k_neighbours(index, k)
        seconds = time.perf_counter() - t0
    return dict(n=n, index_mib=index.nbytes / common.MiB, seconds=seconds, delta=mem.delta, peak=mem.peak,
                shape=neighbours.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="*", default=["castle-P30", "lund", "monstree"])
    parser.add_argument("--preset", default="rootsift")
    parser.add_argument("--k", type=int, default=10, help="K of the retrieval run")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="K values for the recall table")
    parser.add_argument("--words", type=int, default=64, help="codebook size (pairs.retrieval_words)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="verified-neighbour rounds after the top-K pairs (default: pairs.expand_rounds)")
    parser.add_argument("--gps", type=int, default=3, help="G of the --retrieval K --gps G recall column")
    parser.add_argument("--min-inliers", type=int, default=50, help="inliers of a reference pair")
    parser.add_argument("--mapper", choices=["incremental", "global"], default=None,
                        help="mapper for every scene (default: global for lund, incremental otherwise)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the outputs here (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the features and matches cached in --workdir by an earlier run (times are then "
                             "not those of a fresh run)")
    parser.add_argument("--synthetic", type=int, nargs="*", default=[],
                        help="also time the top-K search over this many random VLADs (memory check, e.g. 10000)")
    args = parser.parse_args()
    if args.k not in args.ks:
        args.ks = sorted(set(args.ks) | {args.k})
    if args.rounds is None:
        from matcher.config import PairsConfig

        args.rounds = PairsConfig().expand_rounds

    common.set_threads(args.threads)
    print(common.machine_notes())
    print(f"command: {common.command_line()}\n")
    results = []
    for n in args.synthetic:
        r = synthetic_index(n, args.words, 128, args.k)
        print(f"top-{args.k} search over {n} random VLADs ({args.words} x 128, float16 index {r['index_mib']:.0f} MiB): "
              f"{r['seconds']:.1f} s, peak RSS +{r['delta']:.0f} MiB above the index ({r['peak']:.0f} MiB absolute), "
              f"load {common.load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for scene in args.scenes:
            results.append(bench_scene(scene, args, workdir))
            r = results[-1]
            print(f"{scene}: done (exhaustive {r['exhaustive_s']:.0f} s, retrieval {r['retrieval_s']:.0f} s, "
                  f"load {r['load_end']})", flush=True)

    print(f"\n### Recall of the pairs exhaustive matching verifies with >= {args.min_inliers} inliers "
          f"(preset {args.preset}, {args.words} words)\n")
    headers = ["scene", "images", "exhaustive pairs", f"reference pairs (>= {args.min_inliers} inliers)",
               "reference pairs per image (min-median-max)"]
    headers += [f"K={k}: pairs, recall (oracle)" for k in args.ks]
    headers += [f"K={k} + {args.rounds} verified-neighbour round(s): pairs, recall" for k in args.ks]
    headers += [f"K={args.k} + GPS {args.gps}: pairs, recall", "smallest K with recall >= 95 % (oracle)",
                f"retrieval time K={args.k} (s)"]
    rows = []
    for r in results:
        row = [r["scene"], r["images"], r["exhaustive_pairs"], r["reference"], r["degrees"]]
        for k in args.ks:
            rec = r["recall"][min(k, r["images"] - 1)]
            share = rec["found"] / r["reference"] if r["reference"] else 1.0
            best = rec["oracle"] / r["reference"] if r["reference"] else 1.0
            row.append(f"{rec['pairs']}, {100 * share:.1f} % ({100 * best:.1f} %)")
        for k in args.ks:
            rec = r["recall"][min(k, r["images"] - 1)]
            if "expanded_pairs" not in rec:
                row.append("-")
                continue
            share = rec["expanded_found"] / r["reference"] if r["reference"] else 1.0
            row.append(f"{rec['expanded_pairs']}, {100 * share:.1f} %")
        gps = r.get("gps")
        row.append(f"{gps['pairs']}, {100 * gps['found'] / max(1, r['reference']):.1f} % ({gps['located']} with GPS)"
                   if gps else "no GPS")
        row.append(f"{r['k95']} ({r['k95_oracle']})")
        row.append(f"{r['retrieval_pairs_s']:.1f}")
        rows.append(row)
    print(common.markdown_table(headers, rows))

    print(f"\n### Reconstruction: exhaustive pairs against --retrieval {args.k} ({args.rounds} verified-neighbour "
          "round(s))\n")
    headers = ["scene", "mapper", "pairs matched (exhaustive / retrieval: top-K + added per round)",
               "recall of the run's pairs", "as predicted", "registered (exhaustive)",
               "registered (retrieval)", "matching time (s, exhaustive / retrieval)", "load average (start / end)"]
    rows = [[r["scene"], r["mapper"],
             f"{r['exhaustive_pairs']} / {r['retrieval_pairs']} ({' + '.join(map(str, [r['run_pairs'] - sum(r['run_added']), *r['run_added']]))})",
             f"{100 * r['run_found'] / max(1, r['reference']):.1f} %", "yes" if r["run_as_predicted"] else "NO",
             f"{r['exhaustive_registered']}/{r['images']}", f"{r['retrieval_registered']}/{r['images']}",
             " / ".join("(reused from --workdir)" if r[f"{side}_reused"] else f"{r[f'{side}_match_s']:.1f}"
                        for side in ("exhaustive", "retrieval")),
             f"{r['load_start']} / {r['load_end']}"]
            for r in results]
    print(common.markdown_table(headers, rows))
    for r in results:
        rec = r["recall"][min(args.k, r["images"] - 1)]
        if rec["missed"]:
            print(f"\n{r['scene']}: reference pairs missed at K={args.k}: " + ", ".join(f"{a}-{b}" for a, b in rec["missed"]))
        if rec.get("expanded_missed"):
            print(f"{r['scene']}: missed at K={args.k} after the verified-neighbour rounds: "
                  + ", ".join(f"{a}-{b}" for a, b in rec["expanded_missed"]))


if __name__ == "__main__":
    main()
