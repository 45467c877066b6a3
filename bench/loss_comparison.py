"""Same data, same budget, same network: every loss of matcher.losses, held-out FPR95 in one table.

Each loss trains SDGMNet from the same seeded initialisation with the same batches budget (steps × P × K
patches), optimiser (Adam, linear decay) and augmentation, on the training datasets of a training config, and
is evaluated on its held-out datasets.

    python bench/loss_comparison.py models/sdgmnet.toml --steps 400 --identities 128 --out docs/losses.md
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from matcher.evaluation.report import markdown_grid
from matcher.training.trainer import load_train_config, train

#: constructor options per loss; SDGM's statistics momentum is scaled to a run of a few hundred steps (the
#: recipe's 0.999 assumes 200k steps), as in tests/test_losses_training.py.
LOSSES = {
    "hardnet": {},
    "sdgm": {"momentum": 0.95},
    "smart_mining": {},
    "dgcrl": {},
    "ddtas": {},
}
#: the miner each loss trains with (Smart Mining's global mining is a miner apart from its loss).
MINERS = {"smart_mining": "smart"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--identities", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/matcher-loss-comparison"))
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table to.")
    parser.add_argument("--losses", default=",".join(LOSSES))
    args = parser.parse_args()
    base = load_train_config(args.config)
    rows = []
    for name in args.losses.split(","):
        config = dataclasses.replace(
            base, loss=name, loss_options=LOSSES.get(name, {}), miner=MINERS.get(name, "none"), steps=args.steps,
            identities_per_batch=args.identities, out=str(args.work / f"{name}.pt"),
            eval_every=args.steps, checkpoint_every=args.steps, init="",
        )
        t = time.perf_counter()
        result = train(config, progress=False)
        first, last = result.history[0], result.history[-1]
        row = {"loss": name, "minutes": (time.perf_counter() - t) / 60, "before": first["fpr95"], "after": last["fpr95"]}
        for key in last:
            if key.startswith("fpr95/"):
                row[key] = last[key]
        rows.append(row)
        print(row, flush=True)
    sets = sorted(k for k in rows[0] if k.startswith("fpr95/"))
    headers = ["loss", *(f"FPR95 {s.split('/', 1)[1]}" for s in sets), "mean", "untrained mean", "minutes"]
    table = markdown_grid(headers, [
        [row["loss"], *(f"{100 * row[s]:.2f}%" for s in sets), f"{100 * row['after']:.2f}%",
         f"{100 * row['before']:.2f}%", f"{row['minutes']:.1f}"] for row in rows])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Loss comparison\n\nCommand: `python bench/loss_comparison.py {args.config} --steps {args.steps} "
            f"--identities {args.identities}`\n\nSame data ({', '.join(Path(p).name for p in base.train)}), same "
            f"budget ({args.steps} steps of {args.identities} identities x {base.views_per_identity} views), same "
            f"network and initialisation (seed {base.seed}), Adam with linear decay from {base.lr}.\n"
            f"Held out: {', '.join(Path(p).name for p in base.heldout)}.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
