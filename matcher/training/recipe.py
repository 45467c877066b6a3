"""A chain of distillation stages run as one command: the reproduction of a shipped network (a recipe TOML).

A recipe lists distillation configs (:mod:`matcher.training.distill`) in order; every stage after the first
starts from the previous stage's kept weights (its ``out``, overriding the config's ``init``), runs the number of
steps the shipped run ran (its cosine decay then spans exactly those steps), and the last stage's kept weights are
copied to ``install``::

    install = "sdgmnet-half.pt"          # relative to the recipe's folder
    [[stage]]
    config = "sdgmnet-half.toml"
    steps = 1100
    [[stage]]
    config = "sdgmnet-half-hard.toml"
    steps = 705

``python -m matcher.training.recipe RECIPE.toml`` (resumable: each stage resumes from its checkpoint, a finished
stage ends at once). ``--work DIR`` writes every stage's weights, checkpoint and log under ``DIR/<config stem>/``
instead of the configs' own paths and ``--install PATH`` puts the result elsewhere; with ``--steps N`` (every stage
at most N steps) they check that the chain runs end to end without touching a real run's files.
"""

from __future__ import annotations

import json
import logging
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matcher.errors import ConfigError
from matcher.training.distill import DistillConfig, distill, load_distill_config

__all__ = ["Stage", "load_recipe", "stage_configs", "run_recipe"]

log = logging.getLogger("matcher")


@dataclass
class Stage:
    """One step of a recipe: a distillation config and the steps to run it for."""

    config: Path
    steps: int


def load_recipe(path: Path) -> tuple[list[Stage], Path]:
    """Read a recipe TOML: its stages (configs resolved against the recipe's folder) and the install path."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read recipe ({exc})") from None
    stages = raw.get("stage")
    if not isinstance(stages, list) or not stages or "install" not in raw:
        raise ConfigError(f"{path}: a recipe needs install = \"...\" and at least one [[stage]]")
    out = []
    for k, entry in enumerate(stages):
        steps = entry.get("steps")
        if "config" not in entry or not isinstance(steps, int) or steps < 1 or set(entry) - {"config", "steps"}:
            raise ConfigError(f"{path}: stage {k + 1} needs exactly config = \"...\" and steps = N (N >= 1)")
        out.append(Stage(path.parent / entry["config"], steps))
    return out, path.parent / raw["install"]


def stage_configs(stages: list[Stage], work: Path | None = None, max_steps: int | None = None,
                  threads: int | None = None) -> list[DistillConfig]:
    """The distillation configs of a recipe's stages, chained (stage k's init = stage k-1's out).

    Args:
        work: re-root every stage's out and log under ``work/<config stem>/`` (None: the configs' own paths).
        max_steps: cap every stage's steps (a check of the chain). threads: torch threads (None: the configs').
    """
    configs: list[DistillConfig] = []
    for stage in stages:
        overrides: dict[str, Any] = {"steps": min(stage.steps, max_steps or stage.steps), "threads": threads}
        if configs:
            overrides["init"] = str(Path(configs[-1].out).resolve())
        config = load_distill_config(stage.config, overrides)
        config.deadline = None  # the recorded step count, not a clock, sets the schedule
        if work is not None:
            folder = Path(work).resolve() / stage.config.stem
            config.out = str(folder / Path(config.out).name)
            config.log_file = str(folder / "train.log.jsonl")
        configs.append(config)
    return configs


def run_recipe(recipe: Path, work: Path | None = None, install: Path | None = None, max_steps: int | None = None,
               threads: int | None = None) -> Path:
    """Run every stage of ``recipe`` in order and copy the last kept weights to the install path (returned)."""
    stages, default_install = load_recipe(recipe)
    configs = stage_configs(stages, work, max_steps, threads)
    for stage, config in zip(stages, configs):
        log.info(json.dumps({"event": "stage", "config": str(stage.config), "steps": config.steps,
                             "init": config.init, "out": config.out}))
        distill(config)
    target = Path(install or default_install)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(configs[-1].out, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m matcher.training.recipe RECIPE.toml [--work DIR] [--install PATH] [--steps N] [--threads T]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m matcher.training.recipe", description=main.__doc__)
    parser.add_argument("recipe", type=Path, help="recipe TOML ([[stage]] config + steps, install)")
    parser.add_argument("--work", type=Path, help="write every stage's outputs under this folder instead")
    parser.add_argument("--install", type=Path, help="copy the final weights here instead of the recipe's install")
    parser.add_argument("--steps", type=int, help="at most this many steps per stage (a check of the chain)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the configs', 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        target = run_recipe(args.recipe, args.work, args.install, args.steps, args.threads)
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"error: {exc}\n")
    print(target)


if __name__ == "__main__":
    main()
