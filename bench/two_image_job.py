"""A 2-image job from a fresh process: ``match`` against a pycolmap SIFT script, wall clock including start-up.

Two photos of a scene (default entry-P10 0003 and 0004) are resized to ``--size`` px (longer edge) into a
temporary folder. Each round runs, as separate processes and in alternating order:

* ``pycolmap``: ``python -c`` a script doing ``pycolmap.extract_features`` + ``pycolmap.match_exhaustive``
  (CPU, ``num_threads`` = ``--threads``), images -> verified database: what a user of pycolmap writes;
* ``match``: the ``match`` command with the default preset (``match IMAGES --out DB -q``);
* ``match, torch engine``: the same with ``--set descriptor.engine=torch``;
* ``match, weights W`` for every ``--weights W`` (e.g. ``sdgmnet-half``, the compact network, or a .pt file);
* ``match --help`` and ``matcher --version`` (start-up alone);
* ``python -c "import torch"``: the floor of any job that imports torch (the default preset on the OpenVINO
  engine does not: matcher.patch_sampler, matcher.descriptors.engines.openvino_engine_of_file).

Then, once, ``match`` with an empty engine cache (``MATCHER_CACHE_DIR`` pointing to a new folder): a first run
on a machine, which converts the network for OpenVINO. Medians over ``--rounds``; ratios to the pycolmap script
of the same round.

    python bench/two_image_job.py [--rounds 3] [--size 800] [--scene entry-P10] [--names 0003.jpg 0004.jpg]
        [--weights sdgmnet-half] [--no-torch]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PYCOLMAP_SCRIPT = """
import sys, pycolmap
db, images, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
pycolmap.logging.minloglevel = 2
extraction = pycolmap.FeatureExtractionOptions()
extraction.num_threads = threads
matching = pycolmap.FeatureMatchingOptions()
matching.num_threads = threads
pycolmap.extract_features(db, images, extraction_options=extraction, device=pycolmap.Device.cpu)
pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
"""


def timed_process(command: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="entry-P10")
    parser.add_argument("--names", nargs=2, default=["0003.jpg", "0004.jpg"])
    parser.add_argument("--size", type=int, default=800, help="longer edge of the copies (px)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", action="append", default=[],
                        help="also run match with these descriptor weights (repeatable)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the torch-engine row")
    args = parser.parse_args()
    print(common.machine_notes(), flush=True)
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory(prefix="two_image_job_") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        for name in args.names:
            img = cv2.imread(str(common.shared_data() / "scenes" / args.scene / "images" / name))
            scale = args.size / max(img.shape[:2])
            cv2.imwrite(str(images / name), cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        shape = cv2.imread(str(images / args.names[0])).shape
        jobs = {
            "pycolmap SIFT script": lambda r: [sys.executable, "-c", PYCOLMAP_SCRIPT, str(work / f"p{r}.db"),
                                               str(images), str(args.threads)],
            "match (default preset)": lambda r: [str(bindir / "match"), str(images), "--out", str(work / f"m{r}.db"), "-q"],
            "match, torch engine": lambda r: [str(bindir / "match"), str(images), "--out", str(work / f"t{r}.db"), "-q",
                                              "--set", "descriptor.engine=torch"],
            **{f"match, weights {w}": (lambda r, w=w, i=i: [str(bindir / "match"), str(images), "--out",
                                                             str(work / f"w{i}_{r}.db"), "-q", "--set",
                                                             f"descriptor.weights={w}"])
               for i, w in enumerate(args.weights)},
            "match --help": lambda r: [str(bindir / "match"), "--help"],
            "matcher --version": lambda r: [str(bindir / "matcher"), "--version"],
            "python -c 'import torch'": lambda r: [sys.executable, "-c", "import torch"],
        }
        if args.no_torch:
            del jobs["match, torch engine"]
        times: dict[str, list[float]] = {name: [] for name in jobs}
        loads = []
        for r in range(args.rounds):
            loads.append(common.load_average())
            order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
            for name in order:
                times[name].append(timed_process(jobs[name](r), env))
            print(f"[round {r + 1}] " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr, flush=True)
        cold_cache = work / "cold_cache"
        cold = timed_process([str(bindir / "match"), str(images), "--out", str(work / "cold.db"), "-q"],
                             dict(env, MATCHER_CACHE_DIR=str(cold_cache)))
        shutil.rmtree(cold_cache, ignore_errors=True)
    base = times["pycolmap SIFT script"]
    print(f"\ncommand: `{common.command_line()}`")
    print(f"images: {args.scene} {' '.join(args.names)} resized to {shape[1]}x{shape[0]}; threads {args.threads}; "
          f"load average per round: {' ; '.join(loads)}\n")
    rows = [[name, " / ".join(f"{t:.2f}" for t in v), f"**{statistics.median(v):.2f}**",
             f"**{statistics.median(a / b for a, b in zip(v, base)):.2f}**"] for name, v in times.items()]
    rows.append(["match, first run on the machine (empty engine cache), once", f"{cold:.2f}", f"{cold:.2f}",
                 f"{cold / statistics.median(base):.2f}"])
    print(common.markdown_table(["process", "per round (s)", "median (s)", "ratio to the pycolmap script"], rows))


if __name__ == "__main__":
    main()
