"""Held-out FPR95 and AP of SDGMNet beside RootSIFT and TFeat, on the same verification pairs of the same patches.

For every held-out patch dataset (built by ``matcher dataset``; see models/sdgmnet.md), 20,000 verification
pairs are drawn (half matching; a non-matching pair is two patches of different identities from the same
image), and every descriptor scores the same pairs:

* ``sdgmnet`` models given with ``--model`` (e.g. models/sdgmnet.pt, and an untrained network);
* ``rootsift (patch)``: kornia's SIFTDescriptor with RootSIFT on the same 32×32 patches;
* ``rootsift (pipeline)``: the OpenCV RootSIFT descriptors the pipeline stored for those very keypoints, when
  the dataset's ``features.h5`` is given with ``--features NAME=PATH`` (scene datasets only);
* ``tfeat-*``: the TFeat reference weights of ../shared/data/weights/tfeat.

    python bench/patch_fpr95.py data/entry-P10.h5 data/v_churchill.h5 --model models/sdgmnet.pt \\
        --features entry-P10=data/entry-P10/db.features.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from matcher.descriptors import SDGMNet, describe_patches, load_sdgmnet
from matcher.evaluation.report import markdown_grid
from matcher.storage import FeatureStore
from matcher.shared_data import shared_data_dir
from matcher.training.baselines import describe_with_baseline
from matcher.training.datasets import load_patch_set
from matcher.training.metrics import verification_metrics

TFEAT = shared_data_dir("weights", "tfeat")


def pipeline_rootsift(patch_set, features_path: Path) -> torch.Tensor:
    out = torch.zeros((len(patch_set), 128))
    photo, view = patch_set.photo.numpy(), patch_set.view.numpy()
    with FeatureStore(features_path, "r") as store:
        for k, name in enumerate(patch_set.names):
            rows = np.flatnonzero(photo == k)
            if len(rows):
                out[rows] = torch.from_numpy(store.read(name).descriptors[view[rows]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--model", action="append", default=[], help="SDGMNet weights (repeatable).")
    parser.add_argument("--features", action="append", default=[], help="NAME=features.h5 of a scene dataset.")
    parser.add_argument("--pairs", type=int, default=20000)
    args = parser.parse_args()
    torch.manual_seed(0)
    describers: dict[str, object] = {"sdgmnet untrained": SDGMNet().eval()}
    for path in args.model:
        describers[f"sdgmnet {Path(path).name}"] = load_sdgmnet(path)[0]
    describers["rootsift (patch)"] = "rootsift"
    for w in sorted(TFEAT.glob("tfeat-*.params")):
        describers[w.stem] = f"tfeat:{w}"
    features = dict(item.split("=", 1) for item in args.features)
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for dataset in args.datasets:
        ps = load_patch_set(dataset)

        def describe(how: object) -> Callable[[np.ndarray], torch.Tensor]:
            if isinstance(how, str):
                return lambda rows: describe_with_baseline(how, ps.patches[rows])
            return lambda rows: describe_patches(how, ps.patches[rows])

        scorers = {name: describe(how) for name, how in describers.items()}
        if dataset.stem in features:
            scorers["rootsift (pipeline, OpenCV)"] = lambda rows: pipeline_rootsift(ps, Path(features[dataset.stem]))[rows]
        for name, scorer in scorers.items():
            m = verification_metrics(scorer, ps.labels, ps.photo, args.pairs, seed=0)
            table.setdefault(name, {})[dataset.stem] = (m["fpr95"], m["ap"])
    names = [d.stem for d in args.datasets]
    headers = ["descriptor"] + [f"{metric} {n}" for n in names for metric in ("FPR95", "AP")]
    rows = [[name] + [cell for n in names for cell in (
        (f"{100 * row[n][0]:.2f}%", f"{row[n][1]:.4f}") if n in row else ("-", "-"))] for name, row in table.items()]
    print(markdown_grid(headers, rows))


if __name__ == "__main__":
    main()
