"""Per-stage time and peak memory of the ``match`` pipeline, with pycolmap's SIFT as the baseline.

Input: two overlapping real photos of Sceaux Castle (2832x2128 JPEG), resized so the longer edge is 1024 or
1600 px, with at most 4096 or 8192 keypoints. For every (size, keypoints) configuration a fresh child process
prepares the inputs, then:

1. memory pass (also the warm-up, untimed): each stage once inside :class:`common.PeakRSS`, giving the peak RSS
   above what the process held before the stage ("+MiB"). The setup already ran read/resize/detect/patches/
   RootSIFT/MNN/verification/pycolmap once; SDGMNet, HDF5 and database writes are first calls here, so their
   one-time initialisation (oneDNN primitives, SQLite/HDF5 libraries) is included, as a real run pays it once;
2. timing: ``--repeat`` rounds; each round runs every stage in turn (cheap stages several times), so the
   pycolmap baseline and our stages see the same machine load. The table shows the median per stage and the
   ratio to pycolmap's SIFT extraction of the same resized image, timed in the same process.

Stages: read (decode the full JPEG to grey), resize (INTER_AREA), detect (OpenCV DoG, one keypoint per
location, ``detection.max_keypoints`` kept), patches (LAFs + kornia ``extract_patches_from_pyramid``),
describe RootSIFT (OpenCV on our keypoints), describe SDGMNet fp32 and bf16 (a bfloat16 copy of the network;
channels_last, batch 1024; randomly initialised network: right for speed, meaningless for accuracy), MNN
matching of the pair (the pipeline's settings: bfloat16 proposals where the CPU has them, 1 torch thread, blocks
of 256), the same with float32 proposals (``precision = "fp32"``, the path of CPUs without bfloat16), verification of the pair (F + H with MAGSAC++), HDF5 cache write and COLMAP database write of the
two images and the pair; baseline: ``pycolmap.FeatureExtractor.extract_from_uint8_array`` (CPU SIFT,
``max_num_features`` = keypoints, ``num_threads`` = 2) on the same resized image.

When an image does not give N keypoints at the pipeline's default contrast threshold
(``DetectionConfig.contrast_threshold``), the threshold is lowered along a fixed ladder until both images do;
the table states the threshold used. Stages slower than 5 s (SDGMNet under load) are timed in the first
``--expensive-rounds`` rounds only (default 1), to keep the run short.

Run from the repository root:  python bench/stages.py [--repeat 3] [--expensive-rounds 1]
    [--sizes 1024 1600] [--keypoints 4096 8192]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMAGES = ("100_7100.JPG", "100_7101.JPG")
# Tried in order, starting at the pipeline's default (DetectionConfig.contrast_threshold), only values below it.
CONTRAST_LADDER = (0.04, 0.03, 0.02, 0.015, 0.01, 0.0075, 0.005, 0.003, 0.002, 0.001, 0.0)
BASELINE = "pycolmap SIFT (baseline)"
STAGES = (
    "read (JPEG 2832x2128 -> grey)",
    "resize",
    "detect (DoG)",
    "patches (kornia pyramid)",
    "describe RootSIFT",
    "describe SDGMNet fp32",
    "describe SDGMNet bf16",
    "MNN matching (1 pair)",
    "MNN, float32 proposals",
    "verification (1 pair)",
    "HDF5 cache write (2 img + 1 pair)",
    "database write (2 img + 1 pair)",
    BASELINE,
)
# A stage faster than this is run several times per round (up to MAX_INNER), each run a sample.
INNER_TARGET_S = 0.3
MAX_INNER = 5
# A stage whose warm-up call took longer than this (SDGMNet) is timed in the first --expensive-rounds rounds only.
EXPENSIVE_S = 5.0


def _prepare(image_dir: Path, size: int, n: int, threads: int, workdir: Path) -> dict[str, Any]:
    """Inputs of every stage and the stage callables (each returns something, so nothing is optimised away)."""
    import numpy as np
    import pycolmap
    import torch

    from matcher.colmap_db import DatabaseImage, write_database
    from matcher.config import DetectionConfig, ExportConfig, MatchingConfig, VerificationConfig
    from matcher.descriptors import RootSIFT, SDGMNet, describe_patches
    from matcher.detect import detect_keypoints
    from matcher.images import read_image, resize_for_detection
    from matcher.matching import mutual_nearest_neighbours
    from matcher.patches import extract_patches, lafs_from_keypoints
    from matcher.stages import threshold_px
    from matcher.storage import FeatureStore, ImageFeatures, MatchStore, PairMatches
    from matcher.verify import verify_pair

    common.set_threads(threads)
    full = [read_image(image_dir, name).gray for name in IMAGES]
    resized = [resize_for_detection(g, size) for g in full]
    small = [r[0] for r in resized]

    contrast, counts = None, []
    default_ct = DetectionConfig().contrast_threshold
    for ct in (default_ct, *[c for c in CONTRAST_LADDER if c < default_ct]):
        counts = [len(detect_keypoints(s, DetectionConfig(max_keypoints=n, contrast_threshold=ct))) for s in small]
        if min(counts) >= n:
            contrast = ct
            break
    if contrast is None:
        contrast = CONTRAST_LADDER[-1]
    det = DetectionConfig(max_keypoints=n, contrast_threshold=contrast)
    kps = [detect_keypoints(s, det) for s in small]
    rootsift = RootSIFT()
    desc = [rootsift.describe(s, k) for s, k in zip(small, kps)]
    lafs = lafs_from_keypoints(kps[0], 6.0)
    patches = extract_patches(small[0], lafs)
    torch.manual_seed(0)
    model = SDGMNet().eval().to(memory_format=torch.channels_last)

    match_cfg, verif_cfg = MatchingConfig(), VerificationConfig()
    matches, scores = mutual_nearest_neighbours(desc[0], desc[1], match_cfg)
    full_kps = [k.rescaled(sx, sy) for k, (_, sx, sy) in zip(kps, resized)]
    features = [
        ImageFeatures(k.xy, k.scales, k.orientations, k.scores, d, g.shape[1], g.shape[0])
        for k, d, g in zip(full_kps, desc, full)
    ]
    xy1, xy2 = full_kps[0].xy[matches[:, 0]], full_kps[1].xy[matches[:, 1]]
    threshold = threshold_px(verif_cfg.threshold, size, features[0], features[1])  # the pipeline's rule
    verification = verify_pair(xy1, xy2, threshold, verif_cfg)
    pair = PairMatches(matches, scores, verification.inliers, verification.F, verification.H, verification.model)

    options = pycolmap.FeatureExtractionOptions()
    options.max_image_size = size
    options.sift.max_num_features = n
    options.num_threads = threads
    extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
    colmap_kps, _ = extractor.extract_from_uint8_array(small[0])

    counter = iter(range(10**9))

    def hdf5_write() -> int:
        k = next(counter)
        with FeatureStore(workdir / f"f{k}.h5", "w") as fs, MatchStore(workdir / f"m{k}.h5", "w") as ms:
            for name, f in zip(IMAGES, features):
                fs.write(name, f, "rootsift")
            ms.write(IMAGES[0], IMAGES[1], pair)
        (workdir / f"f{k}.h5").unlink()
        (workdir / f"m{k}.h5").unlink()
        return k

    def db_write() -> dict[str, int]:
        images = (DatabaseImage(name, image_dir / name, f) for name, f in zip(IMAGES, features))
        return write_database(workdir / "bench.db", images, iter([(IMAGES[0], IMAGES[1], pair)]), ExportConfig())

    fp32_proposals = MatchingConfig(ratio=match_cfg.ratio, precision="fp32")

    def mnn_fp32() -> Any:  # the path of CPUs without native bfloat16
        return mutual_nearest_neighbours(desc[0], desc[1], fp32_proposals)

    stages: dict[str, Callable[[], Any]] = {
        STAGES[0]: lambda: read_image(image_dir, IMAGES[0]),
        STAGES[1]: lambda: resize_for_detection(full[0], size),
        STAGES[2]: lambda: detect_keypoints(small[0], det),
        STAGES[3]: lambda: extract_patches(small[0], lafs_from_keypoints(kps[0], 6.0)),
        STAGES[4]: lambda: rootsift.describe(small[0], kps[0]),
        STAGES[5]: lambda: describe_patches(model, patches, 1024, bf16=False),
        STAGES[6]: lambda: describe_patches(model, patches, 1024, bf16=True),
        STAGES[7]: lambda: mutual_nearest_neighbours(desc[0], desc[1], match_cfg),
        STAGES[8]: mnn_fp32,
        STAGES[9]: lambda: verify_pair(xy1, xy2, threshold, verif_cfg),
        STAGES[10]: hdf5_write,
        STAGES[11]: db_write,
        STAGES[12]: lambda: extractor.extract_from_uint8_array(small[0]),
    }
    info = dict(
        size=size,
        n=n,
        contrast=contrast,
        counts_at_contrast=counts,
        keypoints=[len(k) for k in kps],
        resized=[f"{s.shape[1]}x{s.shape[0]}" for s in small],
        colmap_keypoints=int(np.asarray(pycolmap.keypoints_to_matrix(colmap_kps)).shape[0]),
        matches=int(len(matches)),
        inliers=int(verification.inliers.sum()),
        model=verification.model,
        threshold_px=threshold,
    )
    return dict(stages=stages, info=info)


def run_config(image_dir: str, size: int, n: int, threads: int, repeat: int, expensive_rounds: int) -> dict[str, Any]:
    """Child process: memory pass, then ``repeat`` timing rounds over all stages."""
    with tempfile.TemporaryDirectory(prefix="bench_stages_") as tmp:
        rss_start = common.rss_mib()
        prepared = _prepare(Path(image_dir), size, n, threads, Path(tmp))
        stages, info = prepared["stages"], prepared["info"]
        info["rss_after_setup_mib"] = common.rss_mib()
        info["rss_at_start_mib"] = rss_start

        # Memory pass = warm-up (see the module docstring).
        memory: dict[str, dict[str, float]] = {}
        first: dict[str, float] = {}
        for name, fn in stages.items():
            with common.PeakRSS() as m:
                _, first[name] = common.timed(fn)
            memory[name] = dict(delta=m.delta, peak=m.peak, before=m.before)

        inner = {name: max(1, min(MAX_INNER, math.ceil(INNER_TARGET_S / max(t, 1e-6)))) for name, t in first.items()}
        times: dict[str, list[float]] = {name: [] for name in stages}
        load = []
        for round_index in range(repeat):
            load.append(common.load_average())
            for name, fn in stages.items():
                if first[name] > EXPENSIVE_S and round_index >= expensive_rounds:
                    continue
                for _ in range(inner[name]):
                    times[name].append(common.timed(fn)[1])
        info["load_average"] = load
        return dict(info=info, memory=memory, times=times, first=first)


def _cell(result: dict[str, Any], stage: str) -> str:
    import statistics

    t = statistics.median(result["times"][stage])
    base = statistics.median(result["times"][BASELINE])
    mem = result["memory"][stage]["delta"]
    return f"{common.fmt_ms(t)} ms ({t / base:.2f}) · +{common.fmt_mib(max(mem, 0.0))} MiB"


def _sum_cell(result: dict[str, Any], stages: tuple[str, ...]) -> str:
    import statistics

    t = sum(statistics.median(result["times"][s]) for s in stages)
    base = statistics.median(result["times"][BASELINE])
    return f"**{common.fmt_ms(t)} ms ({t / base:.2f})**"


def render(results: list[dict[str, Any]]) -> str:
    headers = ["stage"] + [f"{r['info']['size']} px, {r['info']['n']} kp" for r in results]
    rows = [[s] + [_cell(r, s) for r in results] for s in STAGES]
    per_image_sift = ("detect (DoG)", "describe RootSIFT")
    per_image_sdgm = ("detect (DoG)", "patches (kornia pyramid)", "describe SDGMNet bf16")
    rows.append(["= ours per image, detect + RootSIFT"] + [_sum_cell(r, per_image_sift) for r in results])
    rows.append(["= ours per image, detect + patches + SDGMNet bf16"] + [_sum_cell(r, per_image_sdgm) for r in results])
    table = common.markdown_table(headers, rows)

    info_headers = ["", *headers[1:]]
    info_rows = [
        ["resized image", *[r["info"]["resized"][0] for r in results]],
        ["contrast_threshold used", *[r["info"]["contrast"] for r in results]],
        ["our keypoints (image 1 / image 2)", *[" / ".join(map(str, r["info"]["keypoints"])) for r in results]],
        ["pycolmap SIFT keypoints (image 1)", *[r["info"]["colmap_keypoints"] for r in results]],
        ["pair: MNN matches / inliers (model)",
         *[f"{r['info']['matches']} / {r['info']['inliers']} ({r['info']['model']})" for r in results]],
        ["samples per stage (median of)", *[
            f"{min(len(v) for v in r['times'].values())}-{max(len(v) for v in r['times'].values())}" for r in results]],
        ["pycolmap SIFT min-max (ms)", *[
            f"{common.fmt_ms(min(r['times'][BASELINE]))}-{common.fmt_ms(max(r['times'][BASELINE]))}" for r in results]],
        ["child RSS after setup (MiB)", *[common.fmt_mib(r["info"]["rss_after_setup_mib"]) for r in results]],
        ["max peak RSS of any stage (MiB)", *[
            common.fmt_mib(max(m["peak"] for m in r["memory"].values())) for r in results]],
        ["load average during rounds", *[" ; ".join(r["info"]["load_average"]) for r in results]],
    ]
    return table + "\n\n" + common.markdown_table(info_headers, info_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.shared_data() / "scenes" / "sceaux-castle" / "images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 1600])
    parser.add_argument("--keypoints", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds per configuration (default 3)")
    parser.add_argument("--expensive-rounds", type=int, default=1,
                        help="rounds in which stages slower than 5 s (SDGMNet) are timed (default 1)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    common.set_threads(args.threads)
    print(common.machine_notes(), flush=True)
    t0 = time.perf_counter()
    results = []
    for size in args.sizes:
        for n in args.keypoints:
            t = time.perf_counter()
            results.append(common.run_in_child(run_config, str(args.images), size, n, args.threads, args.repeat,
                                               args.expensive_rounds))
            print(f"[{size} px, {n} kp done in {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    print(f"\ncommand: `{common.command_line()}` (total {time.perf_counter() - t0:.0f} s)\n")
    print("Cells: median time (ratio to pycolmap SIFT of the same image in the same process) · peak RSS above")
    print("the process's RSS before the stage (MiB, measured on the untimed warm-up call).\n")
    print(render(results))


if __name__ == "__main__":
    main()
