"""Same data, same budget, same network: the losses of matcher.losses, several seeds, scored on the hard bins.

Every (loss, seed) run trains the compact SDGMNet (variant ``half``, 20 MFLOP per patch) from the same seeded
initialisation per seed (a random network saved once per seed and given to the trainer as ``init``), with the
same batches budget (steps × P identities × 2 views), optimiser (Adam, lr 1e-3, linear decay), SDGMNet
augmentation and training data, through :func:`matcher.training.trainer.train`. Each trained network is then
scored on the hard patch benchmark (:mod:`matcher.training.hard_benchmark`, the protocol of bench/hard_patches.py
and models/sdgmnet.md: held-out entry-P10 + buddha, FPR95 and mAP per viewpoint-angle and scale-ratio bin, all
anchors) and on the verification FPR95 of a validation set of *training* data (``--val``, never the held-out
scenes; it is what DDTAS's constants were chosen on, ``--sweep-ddtas``).

Rows run seed-major (every loss for seed 0, then seed 1, ...), so a ``--deadline`` shortens the last seed rather than
dropping a loss. Results go to ``--json`` after every run; a rerun skips the (loss, seed) rows already there.

    python bench/loss_comparison.py --sweep-ddtas --json data/loss-comparison/ddtas-sweep.json
    python bench/loss_comparison.py --seeds 0,1 --deadline 16:05 --ddtas-from data/loss-comparison/ddtas-sweep.json \\
        --json data/loss-comparison/results.json
    python bench/loss_comparison.py --report data/loss-comparison/results.json     # the tables only

Training data (``data/``, not committed; commands in models/sdgmnet-half-hard.toml): descriptor-free camera tracks
of castle-P19 (ground-truth cameras) and of sceaux-castle and cyprus (reconstructed cameras). Validation: lund's
camera tracks (a training scene of the shipped models, not trained on here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matcher.descriptors import describe_patches, load_sdgmnet
from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import save_sdgmnet
from matcher.evaluation.report import markdown_grid
from matcher.shared_data import shared_data_dir
from matcher.training.gt_cameras import load_scene_cameras
from matcher.training.gt_tracks import View, detect_views
from matcher.training.hard_benchmark import (
    ANGLE_BINS,
    SCALE_BINS,
    cached_tracks,
    DirectedScores,
    PositivePairs,
    bin_metrics,
    positive_pairs,
    score_pairs,
    view_patches,
)
from matcher.training.datasets import load_patch_set
from matcher.training.trainer import TrainConfig, evaluate_fpr95, train

#: row name -> trainer settings. SDGM's statistics momentum is scaled to a run of a few hundred steps (the
#: recipe's 0.999 assumes 200k steps), as in tests/test_losses_training.py. "smart_mining" is the method as
#: published: its loss on the SmartMiner's globally mined batches; "sdgm+smart" is SDGM's loss on those batches
#: (the miner's admission margin is its default 0.5 in squared chordal distance). The miner mines 3 times per run
#: (at the start, a third and two thirds of the run; its default is 5, but one pass embeds the whole training set, ~1 min here under
#: load, as long as ~40 training steps). DGCRL uses decorrelation "auto",
#: i.e. the soft decorrelation for batch-local centres. DDTAS runs without its online threshold generator, with
#: the constants chosen by --sweep-ddtas (--ddtas-from).
ROWS: dict[str, dict[str, Any]] = {
    "hardnet": {"loss": "hardnet"},
    "sdgm": {"loss": "sdgm", "loss_options": {"momentum": 0.95}},
    "smart_mining": {"loss": "smart_mining", "miner": "smart", "miner_options": {"refreshes_per_run": 3}},
    "sdgm+smart": {"loss": "sdgm", "loss_options": {"momentum": 0.95}, "miner": "smart",
                   "miner_options": {"refreshes_per_run": 3}},
    "ddtas": {"loss": "ddtas"},
    "dgcrl": {"loss": "dgcrl"},
}
#: the tiny DDTAS sweep (--sweep-ddtas, seed 0, validation FPR95 only): λ, the soft contrastive loss's threshold
#: (0.5 the patch rescaling of methods.md §4.6, 0.7 the released code's), and m, AT-ASMS's base tolerance. The
#: comparison's DDTAS row takes the best of them (--ddtas-from the sweep's results; default: the module defaults).
DDTAS_SWEEP: dict[str, dict[str, Any]] = {
    "ddtas λ 0.5 m 0.1 (defaults)": {},
    "ddtas λ 0.7 m 0.1": {"lam": 0.7},
    "ddtas λ 0.5 m 0.2": {"m": 0.2},
}
DEFAULT_TRAIN = ("data/cam-castle-P19.h5", "data/camrec/sceaux-castle.h5", "data/camrec/cyprus.h5")
DEFAULT_VAL = "data/camrec/lund.h5"
HELDOUT_SCENES = ("entry-P10", "buddha")


@dataclass
class HardScene:
    """One held-out scene of the hard benchmark, prepared once: views (keypoints), positive pairs, patches."""

    views: list[View]
    pairs: PositivePairs
    patches: list[torch.Tensor]


class HardBench:
    """The hard patch benchmark of bench/hard_patches.py for many networks: scenes detected and cut once."""

    def __init__(self, scenes: tuple[str, ...] = HELDOUT_SCENES, cache: Path | None = Path("data/hard-cache")) -> None:
        shared = shared_data_dir()
        self.scenes: list[HardScene] = []
        angle, ratio = [], []
        for scene in scenes:
            scene_dir = shared / "scenes" / scene
            views = detect_views(scene_dir / "images", load_scene_cameras(scene_dir))
            tracks = cached_tracks(views, cache / f"{scene}-tracks.npz" if cache else None)
            pairs = positive_pairs(views, tracks)
            self.scenes.append(HardScene(views, pairs, [view_patches(v) for v in views]))
            angle.append(np.r_[pairs.angle, pairs.angle])
            ratio.append(np.r_[pairs.scale_ratio, pairs.scale_ratio])
        a, r = np.concatenate(angle), np.concatenate(ratio)
        self.bins = [(f"{lo:g}-{hi:g}°", (a >= lo) & (a < hi)) for lo, hi in ANGLE_BINS]
        self.bins += [(f"scale {lo:g}-{hi:g}" if np.isfinite(hi) else f"scale ≥{lo:g}", (r >= lo) & (r < hi))
                      for lo, hi in SCALE_BINS]

    def score(self, model: SDGMNet) -> dict[str, dict[str, float]]:
        """{bin label: {"fpr95", "map", "positives"}} for ``model`` (all anchors of both scenes, pooled)."""
        per_scene = []
        for scene in self.scenes:
            desc = [describe_patches(model, p).numpy() for p in scene.patches]
            per_scene.append(score_pairs(scene.views, scene.pairs, desc))
        pooled = DirectedScores(*(np.concatenate([getattr(s, f) for s in per_scene])
                                  for f in DirectedScores.__dataclass_fields__))
        out = {}
        for label, mask in self.bins:
            m = bin_metrics(pooled, mask)
            out[label] = {"fpr95": m["fpr95"], "map": m["map"], "positives": m["positives"]}
        return out


def initial_weights(seed: int, work: Path) -> Path:
    """A random compact SDGMNet for ``seed``, saved once: every loss of that seed starts from these weights."""
    path = work / f"init-half-seed{seed}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        save_sdgmnet(SDGMNet(channels="half"), path, {"init": "random", "seed": seed})
    return path


def run_config(row: dict[str, Any], seed: int, args: argparse.Namespace, out: Path) -> TrainConfig:
    """The trainer config of one (row, seed): everything but the loss/miner is the same for every row."""
    return TrainConfig(
        train=[str(p) for p in args.train], heldout=[str(args.val)], out=str(out),
        init=str(initial_weights(seed, args.work)), loss=row["loss"], loss_options=dict(row.get("loss_options", {})),
        miner=row.get("miner", "none"), miner_options=dict(row.get("miner_options", {})), steps=args.steps, identities_per_batch=args.identities, views_per_identity=2,
        optimizer="adam", lr=1e-3, weight_decay=1e-4, schedule="linear", augment=True, bf16=False,
        channels_last=True, eval_every=args.steps, eval_pairs=args.val_pairs, checkpoint_every=args.steps, seed=seed,
    )


def _load(path: Path | None) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path is not None and path.is_file() else []


def _save(path: Path | None, results: list[dict[str, Any]]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        tmp.replace(path)


def _past(deadline: str | None, minutes_needed: float) -> bool:
    if not deadline:
        return False
    hh, mm = (int(x) for x in deadline.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return now + dt.timedelta(minutes=minutes_needed) > end


def _load1() -> float:
    return os.getloadavg()[0]


def weights_path(work: Path, name: str, seed: int) -> Path:
    """Where the run (name, seed) writes its network."""
    return work / f"{name.replace('+', '-').replace(' ', '_')}-seed{seed}.pt"


def rescore_val(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Validation FPR95 / AP on ``args.val`` of the networks of a results file (their weights in ``args.work``)."""
    val = load_patch_set(args.val)
    rows = []
    for r in results:
        model = load_sdgmnet(str(weights_path(args.work, r["row"], r["seed"])))[0]
        m = evaluate_fpr95(model, val, args.val_pairs, seed=r["seed"])
        rows.append([r["row"], r["seed"], f"{100 * m['fpr95']:.2f}", f"{m['ap']:.3f}"])
    return markdown_grid(["run", "seed", f"FPR95 (%) {args.val.stem}", "AP"], rows)


def train_and_score(name: str, row: dict[str, Any], seed: int, args: argparse.Namespace,
                    bench: HardBench | None) -> dict[str, Any]:
    """Train one (row, seed) and score it: validation FPR95 and, with ``bench``, the hard bins."""
    out = weights_path(args.work, name, seed)
    config = run_config(row, seed, args, out)
    load0, t0 = _load1(), time.perf_counter()
    result = train(config, progress=False)
    train_minutes = (time.perf_counter() - t0) / 60
    record: dict[str, Any] = {
        "row": name, "seed": seed, "loss": config.loss, "loss_options": config.loss_options, "miner": config.miner,
        "steps": args.steps, "identities": args.identities, "train_minutes": train_minutes,
        "val_fpr95_before": result.history[0]["fpr95"], "val_fpr95": result.history[-1]["fpr95"],
        "val_ap": result.history[-1][f"ap/{Path(args.val).stem}"], "final_loss": result.history[-1]["loss"],
        "load_start": load0, "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if bench is not None:
        t1 = time.perf_counter()
        record["bins"] = bench.score(load_sdgmnet(str(out))[0])
        record["eval_minutes"] = (time.perf_counter() - t1) / 60
    record["load_end"] = _load1()
    return record


def _mean_spread(values: list[float], scale: float, fmt: str) -> str:
    v = np.asarray(values, dtype=float) * scale
    if v.size == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {(v.max() - v.min()) / 2:{fmt}}"


def report(results: list[dict[str, Any]]) -> str:
    """Markdown tables: per row, mean ± half-range over seeds of FPR95 and mAP per bin, and the validation FPR95."""
    names = [n for n in dict.fromkeys(r["row"] for r in results)]
    scored = [r for r in results if "bins" in r]
    lines = []
    if scored:
        labels = list(scored[0]["bins"])
        for metric, title, scale, fmt in (("fpr95", "FPR95", 100, ".1f"), ("map", "mAP", 1, ".3f")):
            rows = []
            for n in names:
                runs = [r for r in scored if r["row"] == n]
                if runs:
                    rows.append([f"{n} ({len(runs)})"] + [_mean_spread([r["bins"][b][metric] for r in runs], scale, fmt)
                                                          for b in labels])
            unit = " (%)" if metric == "fpr95" else ""
            lines.append(markdown_grid(["loss (seeds)"] + [f"{title}{unit} {b}" for b in labels], rows))
    rows = []
    for n in names:
        runs = [r for r in results if r["row"] == n]
        rows.append([f"{n} ({len(runs)})", _mean_spread([r["val_fpr95"] for r in runs], 100, ".2f"),
                     _mean_spread([r["val_fpr95_before"] for r in runs], 100, ".2f"),
                     _mean_spread([r["train_minutes"] for r in runs], 1, ".1f"),
                     _mean_spread([r.get("eval_minutes", 0.0) for r in runs], 1, ".1f"),
                     "{:.1f}-{:.1f}".format(*(f(x for r in runs for x in (r["load_start"], r["load_end"]))
                                              for f in (min, max)))])
    lines.append(markdown_grid(["loss (seeds)", "val FPR95 (%)", "untrained", "train min", "eval min", "load"], rows))
    return "\n\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--identities", type=int, default=128)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--train", type=Path, nargs="+", default=[Path(p) for p in DEFAULT_TRAIN])
    parser.add_argument("--val", type=Path, default=Path(DEFAULT_VAL))
    parser.add_argument("--val-pairs", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/matcher-loss-comparison"))
    parser.add_argument("--json", type=Path, default=None, help="results file (read to skip finished runs)")
    parser.add_argument("--deadline", default=None, help="UTC HH:MM: start no run that would end after it")
    parser.add_argument("--minutes-per-run", type=float, default=6.0, help="estimate used with --deadline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep-ddtas", action="store_true",
                        help="DDTAS's constants on the validation set only (seed 0, no hard benchmark)")
    parser.add_argument("--ddtas-from", type=Path, default=None,
                        help="a --sweep-ddtas results file: the DDTAS row uses its best constants (lowest val FPR95)")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a results file and exit")
    parser.add_argument("--rescore-val", type=Path, default=None,
                        help="print the --val FPR95 of the networks of a results file (in --work) and exit")
    args = parser.parse_args()
    if args.rescore_val:
        torch.set_num_threads(args.threads)
        print(rescore_val(_load(args.rescore_val), args))
        return
    if args.report:
        print(report(_load(args.report)))
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results = _load(args.json)
    done = {(r["row"], r["seed"]) for r in results}
    if args.sweep_ddtas:
        plan = [(name, {"loss": "ddtas", "loss_options": opts}, 0) for name, opts in DDTAS_SWEEP.items()]
        bench = None
    else:
        rows = {n: ROWS[n] for n in args.rows.split(",")}
        if "ddtas" in rows and args.ddtas_from:
            best = min(_load(args.ddtas_from), key=lambda r: r["val_fpr95"])
            rows["ddtas"] = {**rows["ddtas"], "loss_options": dict(best["loss_options"])}
            print(f"DDTAS constants from {args.ddtas_from}: {best['row']}", flush=True)
        plan = [(n, row, int(s)) for s in args.seeds.split(",") for n, row in rows.items()]
        t = time.perf_counter()
        bench = HardBench()
        print(f"hard benchmark prepared in {time.perf_counter() - t:.0f} s", flush=True)
    for name, row, seed in plan:
        if (name, seed) in done:
            continue
        if _past(args.deadline, args.minutes_per_run):
            print(f"deadline {args.deadline}: stopping before {name} seed {seed}", flush=True)
            break
        record = train_and_score(name, row, seed, args, bench)
        results.append(record)
        _save(args.json, results)
        print(json.dumps({k: v for k, v in record.items() if k != "bins"}), flush=True)
        if "bins" in record:
            print("  " + ", ".join(f"{b} {100 * m['fpr95']:.1f}%/{m['map']:.3f}" for b, m in record["bins"].items()),
                  flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
