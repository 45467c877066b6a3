"""SDGMNet throughput on this CPU, fp32 and bf16, against the machine's own matrix-multiply rate.

Prints a Markdown table: patches/s for fp32 (channels_last; fused in-place FRN+TLU, as the pipeline runs it),
fp32 through the separate FRN/TLU modules (the autograd path, for comparison) and bf16 (a bfloat16 copy of the
network, channels_last), the fraction of the measured GEMM peak that represents (the network costs 78.2 MFLOP per patch), and how well bf16 agrees with
fp32 on real patches (descriptor cosine, and the share of mutual-nearest-neighbour matches that are identical
between two real images).

    python bench/descriptor_throughput.py [--weights models/sdgmnet.pt] [--patches 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from matcher.config import DetectionConfig, MatchingConfig
from matcher.descriptors import SDGMNet, describe_patches, load_sdgmnet
from matcher.detect import detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.matching import mutual_nearest_neighbours
from matcher.patches import extract_patches, lafs_from_keypoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FLOP_PER_PATCH = 78.2e6
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


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


def real_patches(name: str, n: int) -> tuple[torch.Tensor, np.ndarray]:
    folder = SHARED / "scenes" / "entry-P10" / "images"
    gray, _, _ = resize_for_detection(read_image(folder, name).gray, 1600)
    k = detect_keypoints(gray, DetectionConfig(max_keypoints=n))
    return extract_patches(gray, lafs_from_keypoints(k)), k.xy


def describe_with_modules(model: SDGMNet, patches: torch.Tensor, batch_size: int = 1024, bf16: bool = False) -> torch.Tensor:
    """The forward pass through the separate FRN and TLU modules (autograd enabled, no parameter gradients)."""
    assert not bf16
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            out = [model(patches[i : i + batch_size].contiguous(memory_format=torch.channels_last))
                   for i in range(0, len(patches), batch_size)]
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return torch.cat(out).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="")
    parser.add_argument("--patches", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="patches per call (the pipeline's default)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(common.machine_notes(), flush=True)
    model = load_sdgmnet(args.weights)[0] if args.weights else SDGMNet().eval()
    model = model.to(memory_format=torch.channels_last)
    p1, _ = real_patches("0003.jpg", args.patches)
    p2, _ = real_patches("0004.jpg", args.patches)
    rows = []
    peaks = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    results = {}
    peaks["fp32, FRN/TLU modules"] = peaks["fp32"]
    for mode, bf16 in (("fp32", False), ("fp32, FRN/TLU modules", False), ("bf16", True)):
        run = describe_patches if mode != "fp32, FRN/TLU modules" else describe_with_modules
        run(model, p1[:256], bf16=bf16)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            d = run(model, p1, batch_size=args.batch_size, bf16=bf16)
            best = min(best, time.perf_counter() - t)
        results[mode] = (d, run(model, p2, batch_size=args.batch_size, bf16=bf16))
        rate = len(p1) / best
        rows.append((mode, rate, rate * FLOP_PER_PATCH / 1e9, peaks[mode] / 1e9, rate * FLOP_PER_PATCH / peaks[mode]))
    print(f"patches: {len(p1)} real entry-P10 patches in batches of {args.batch_size}; threads: {torch.get_num_threads()}; "
          f"weights: {args.weights or 'random init'}\n")
    print("| mode | patches/s | achieved GFLOP/s | GEMM peak GFLOP/s | share of peak |")
    print("|---|---:|---:|---:|---:|")
    for mode, rate, gflops, peak, share in rows:
        print(f"| {mode} channels_last | {rate:,.0f} | {gflops:.0f} | {peak:.0f} | {share:.0%} |")
    (a32, b32), (a16, b16) = results["fp32"], results["bf16"]
    cosine = (a32 * a16).sum(1)
    m32, _ = mutual_nearest_neighbours(a32.numpy(), b32.numpy(), MatchingConfig(ratio=0.8))
    m16, _ = mutual_nearest_neighbours(a16.numpy(), b16.numpy(), MatchingConfig(ratio=0.8))
    s32, s16 = {tuple(m) for m in m32}, {tuple(m) for m in m16}
    print(f"\nbf16 vs fp32: descriptor cosine min {cosine.min():.4f}, mean {cosine.mean():.5f}; "
          f"MNN+ratio matches 0003-0004: fp32 {len(s32)}, bf16 {len(s16)}, identical {len(s32 & s16)} "
          f"({len(s32 & s16) / max(len(s32), 1):.1%} of fp32's)")


if __name__ == "__main__":
    main()
