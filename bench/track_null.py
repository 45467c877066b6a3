"""Null test of the hard benchmark's track builder: how many of its positives are chance alignments?

Tracks are built from each scene's real DoG keypoints and again from decoy keypoints (each view's keypoints shifted
by its own vector, :func:`matcher.training.gt_tracks.decoy_views`: the same density and scales, no true
correspondence). Decoy positive pairs over real ones, per viewpoint-angle bin, estimate the share of chance-aligned
positives under each track rule. No descriptor is involved.

    python bench/track_null.py --scenes entry-P10 buddha castle-P19 --rule published --rule clean
    python bench/track_null.py --rule min_views=4 --rule min_views=4,tolerance_px=0.5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from matcher.config import DetectionConfig
from matcher.evaluation.report import markdown_grid
from matcher.shared_data import shared_data_dir
from matcher.training.gt_cameras import load_scene_cameras
from matcher.training.gt_tracks import TRACK_RULES, TrackConfig, build_tracks, detect_views
from matcher.training.hard_benchmark import ANGLE_BINS, chance_rate


def parse_rule(text: str) -> TrackConfig:
    """A rule name of TRACK_RULES, or ``field=value,...`` over the published rule (TrackConfig fields)."""
    if text in TRACK_RULES:
        return TRACK_RULES[text]
    types = {f.name: type(getattr(TrackConfig(), f.name)) for f in fields(TrackConfig)}
    changes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--rule {text}: {key!r} is no TrackConfig field ({', '.join(types)})")
        changes[key] = types[key](value)
    return replace(TRACK_RULES["published"], **changes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["entry-P10", "buddha", "castle-P19"])
    parser.add_argument("--rule", action="append", default=[],
                        help="A TRACK_RULES name or field=value,... over the published rule (repeatable).")
    parser.add_argument("--shift", type=float, default=48.0, help="Decoy shift in pixels (detection frame).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Decoy seeds (shift directions).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rules = args.rule or ["published"]
    shared = shared_data_dir()
    labels = [f"{lo:g}-{hi:g}°" for lo, hi in ANGLE_BINS] + ["all"]
    rows, out = [], []
    t0 = time.perf_counter()
    for scene in args.scenes:
        scene_dir = shared / "scenes" / scene
        views = detect_views(scene_dir / "images", load_scene_cameras(scene_dir), DetectionConfig())
        for rule in rules:
            config = parse_rule(rule)
            real = build_tracks(views, config)
            for seed in args.seeds:
                c = chance_rate(views, config, args.shift, seed, real=real)
                out.append({"scene": scene, "rule": rule, "config": asdict(config), "seed": seed, "shift": args.shift,
                            "real_tracks": c.real_tracks, "decoy_tracks": c.decoy_tracks,
                            "real_pairs": c.real_pairs.tolist(), "decoy_pairs": c.decoy_pairs.tolist()})
                rows.append([scene, rule, str(seed), f"{c.real_tracks:,} / {c.decoy_tracks:,}"]
                            + [f"{r:,} / {d:,} = {100 * s:.1f}%"
                               for r, d, s in zip(c.real_pairs, c.decoy_pairs, c.share)])
                print(f"{scene} {rule} seed {seed}: {rows[-1][3:]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nDecoy shift {args.shift:g} px. Tracks real / decoy; positive pairs (unordered) real / decoy = "
          "chance share:\n")
    print(markdown_grid(["scene", "rule", "seed", "tracks"] + labels, rows))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
