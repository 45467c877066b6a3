"""SDGMNet throughput for every network variant x inference engine x precision, against this CPU's GEMM rate.

Prints a Markdown table: patches/s of each engine (``torch``, the reference, and ``openvino`` when installed)
in ``fp32`` and ``bf16`` on real patches, as the pipeline runs them (``matcher.descriptors.engines``), for each
weights file given (``--weights sdgmnet sdgmnet-half``: the full network and the compact one distilled from it),
the share of the measured GEMM rate of that dtype it represents (FLOPs per patch from
:meth:`SDGMNet.flops_per_patch`: 78.2 M full, 20.2 M half), and the agreement with torch fp32 of the FIRST
weights (the full network): descriptor cosine (min / mean), the share of mutual-nearest-
neighbour + ratio matches between two real images that are identical, and, with ``--fpr95 DATASET.h5`` (a patch
dataset of ``matcher dataset``), FPR95 on 20,000 verification pairs. Engines are timed in interleaved rounds
(best of ``--repeat``), so load drift on a shared machine hits all of them alike.

    python bench/descriptor_throughput.py [--weights sdgmnet sdgmnet-half] [--patches 4096] [--repeat 3] [--fpr95 data/x.h5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from matcher.config import DetectionConfig, MatchingConfig
from matcher.descriptors import load_sdgmnet
from matcher.descriptors.engines import OpenVINOEngine, TorchEngine
from matcher.detect import detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.matching import mutual_nearest_neighbours
from matcher.patches import extract_patches, lafs_from_keypoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def gemm_rate(dtype: torch.dtype, n: int = 2048, repeat: int = 3) -> float:
    """Measured FLOP/s of an n×n×n matrix product in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def real_patches(name: str, n: int) -> torch.Tensor:
    """The patches of up to ``n`` DoG keypoints of entry-P10 ``name`` at 1600 px, as the pipeline samples them."""
    folder = common.shared_data() / "scenes" / "entry-P10" / "images"
    gray, _, _ = resize_for_detection(read_image(folder, name).gray, 1600)
    k = detect_keypoints(gray, DetectionConfig(max_keypoints=n))
    return extract_patches(gray, lafs_from_keypoints(k))


def fpr95_of(engine, dataset: Path, pairs: int = 20000) -> float:
    from matcher.training.datasets import load_patch_set
    from matcher.training.metrics import fpr95
    from matcher.training.sampler import verification_pairs

    ps = load_patch_set(dataset)
    i1, i2, y = verification_pairs(ps.labels, pairs, seed=0, groups=ps.photo)
    d = engine(ps.patches)
    return fpr95(y, (d[i1] * d[i2]).sum(1).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["sdgmnet"],
                        help="shipped model names or .pt files; the first is the reference (torch fp32)")
    parser.add_argument("--patches", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="patches per call (the pipeline's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fpr95", type=Path, default=None, help="a patch dataset (HDF5) for FPR95")
    args = parser.parse_args()
    common.set_threads(args.threads)
    print(common.machine_notes(), flush=True)
    models = {w: load_sdgmnet(w)[0] for w in args.weights}
    flops = {w: m.flops_per_patch() for w, m in models.items()}
    p1, p2 = real_patches("0003.jpg", args.patches), real_patches("0004.jpg", args.patches)
    peaks = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    engines = {}
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: the conversion time is part of the table
        for w, model in models.items():
            for precision in ("fp32", "bf16"):
                engines[(w, f"torch {precision}")] = TorchEngine(model, precision, args.batch_size)
            try:
                import openvino  # noqa: F401

                for precision in ("fp32", "bf16"):
                    t = time.perf_counter()
                    engines[(w, f"openvino {precision}")] = OpenVINOEngine(model, precision, args.batch_size, Path(cache))
                    setup = time.perf_counter() - t
                    print(f"{w} openvino {precision}: set up in {setup:.1f} s (cache "
                          f"{'hit' if engines[(w, f'openvino {precision}')].cache_hit else 'miss: converted'})",
                          flush=True)
            except ImportError:
                print("openvino not installed (pip install matcher[fast]): torch only", flush=True)
        best = {name: float("inf") for name in engines}
        loads = []
        for name, engine in engines.items():
            engine(p1[: args.batch_size])  # warm-up
        for _ in range(args.repeat):
            loads.append(common.load_average())
            for name, engine in engines.items():
                t = time.perf_counter()
                engine(p1)
                best[name] = min(best[name], time.perf_counter() - t)
        out = {name: (engine(p1), engine(p2)) for name, engine in engines.items()}
        fprs = {name: fpr95_of(engine, args.fpr95) for name, engine in engines.items()} if args.fpr95 else {}
    a32, b32 = out[(args.weights[0], "torch fp32")]
    reference, _ = mutual_nearest_neighbours(a32.numpy(), b32.numpy(), MatchingConfig(ratio=0.8))
    ref_set = {tuple(m) for m in reference}
    print(f"\npatches: {len(p1)} real entry-P10 patches (0003.jpg, 1600 px) in batches of {args.batch_size}; threads: "
          f"{args.threads}; weights: {', '.join(args.weights)} (reference: {args.weights[0]} torch fp32); load average per round: {' ; '.join(loads)}\n")
    header = ["weights (MFLOP/patch)", "engine, precision", "patches/s", "ms per 4096", "achieved GFLOP/s", "GEMM GFLOP/s (dtype)",
              "share of GEMM", "cosine to torch fp32 (min / mean)", "MNN matches 0003-0004 identical to torch fp32"]
    if fprs:
        header.append(f"FPR95 {args.fpr95.stem}")
    rows = []
    for name in engines:
        rate = len(p1) / best[name]
        w, label = name
        dtype = label.split()[1]
        flop = flops[w]
        a, b = out[name]
        cos = (a * a32).sum(1)
        m, _ = mutual_nearest_neighbours(a.numpy(), b.numpy(), MatchingConfig(ratio=0.8))
        same = len({tuple(x) for x in m} & ref_set)
        row = [f"{w} ({flop / 1e6:.1f})", label, f"{rate:,.0f}", f"{4096 / rate * 1000:.0f}", f"{rate * flop / 1e9:.0f}",
               f"{peaks[dtype] / 1e9:.0f} ({dtype})", f"{rate * flop / peaks[dtype]:.0%}",
               f"{cos.min():.5f} / {cos.mean():.6f}", f"{same} of {len(ref_set)} ({same / max(len(ref_set), 1):.1%}; {len(m)} in all)"]
        if fprs:
            row.append(f"{100 * fprs[name]:.2f}%")
        rows.append(row)
    print(common.markdown_table(header, rows))


if __name__ == "__main__":
    main()
