"""Command line: ``matcher eval`` (compare methods on data with ground truth) and ``matcher show`` (draw a pair).

Thin: parse, call :mod:`matcher.evaluation.run` / :mod:`matcher.colmap_db`, print. User errors are
:class:`matcher.errors.MatcherError` and are printed as one line. (This module must not import
:mod:`matcher.cli`, which imports it.)
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import click

from matcher.errors import ImageReadError, MatcherError, NoImagesError
from matcher.shared_data import shared_data_dir

__all__ = ["eval_command", "show_command", "default_data_dir"]


def default_data_dir() -> Path:
    """``$MATCHER_SHARED_DATA``, else ``../shared/data`` beside the checkout (:mod:`matcher.shared_data`)."""
    return shared_data_dir()


def _fail(exc: MatcherError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("matcher")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)


_EVAL_HELP = """Compare matchers on data with ground truth and write a Markdown report to --out.

\b
Homography sequences (HPatches layout: 1.ppm ... 6.ppm, H_1_k): mean matching accuracy at 1-10 px,
homography accuracy at 1/3/5 px, matches and correct matches.
Scenes (images/ with gt_dense_cameras/*.camera, or cameras/STEM_P.txt projection matrices): relative
pose AUC at 1/2/5/10/20 degrees over all pairs, and (unless --no-reconstruct) incremental SfM with camera
errors after a similarity alignment, registered images, points, track length, reprojection error.
Methods: ours-rootsift (default preset, RootSIFT), ours-default (the default preset as shipped: compact
SDGMNet, models/sdgmnet-half.pt), ours-sdgmnet (the sdgmnet preset: full network, models/sdgmnet.pt),
ours:<FILE> for each --weights (default preset, those weights), opencv-sift, pycolmap-sift; ours-viewpoint
(matching on demand) when named in --methods. --max-edge and --max-keypoints apply to every method.
Without --sequence/--scene, every dataset under --data is used.
"""


@click.command("eval", help=_EVAL_HELP)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder with homography/ and scenes/ [default: $MATCHER_SHARED_DATA or ../shared/data].")
@click.option("--sequence", "sequences", multiple=True, type=click.Path(path_type=Path),
              help="An HPatches-layout sequence folder (repeatable); replaces the datasets under --data.")
@click.option("--scene", "scenes", multiple=True, type=click.Path(path_type=Path),
              help="A Strecha-layout scene folder (repeatable); replaces the datasets under --data.")
@click.option("--methods", "method_names", multiple=True, metavar="NAMES",
              help="Comma-separated methods [default: all available].")
@click.option("--weights", multiple=True, type=click.Path(path_type=Path),
              help="SDGMNet weights file to evaluate as method ours:<FILE> (repeatable).")
@click.option("--max-edge", type=int, default=1024, show_default=True,
              help="Every method detects on a copy resized to this longer edge (0: full size).")
@click.option("--max-keypoints", type=int, default=4096, show_default=True, help="Keypoint budget per image.")
@click.option("--no-reconstruct", is_flag=True, default=False, help="Skip SfM on the scenes (pair metrics only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Mapping seed.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a pipeline setting in every method that runs the pipeline's configuration (ours-*; "
                   "opencv-sift's matching and verification; mapping), e.g. detection.max_orientations=2.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("eval"), show_default=True,
              help="Folder for report.md, results.json, the pictures and each method's databases (work/).")
@click.option("--viewpoint", is_flag=True, default=False,
              help="Extreme-viewpoint pairs instead: shared photos under synthetic tilts (--tilts) and "
                   "homography/v_churchill; accuracy @5 px per tilt band, time per pair, the on-demand step that "
                   "solved each [methods default: ours-viewpoint, ours-default, pycolmap-sift].")
@click.option("--tilts", default="2,3,4,5,6,8", show_default=True, help="Tilts of the --viewpoint pairs.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Print only the report path.")
def eval_command(data_dir: Path | None, sequences: tuple[Path, ...], scenes: tuple[Path, ...],
                 method_names: tuple[str, ...], weights: tuple[Path, ...], max_edge: int, max_keypoints: int,
                 no_reconstruct: bool, seed: int, sets: tuple[str, ...], out_dir: Path, viewpoint: bool, tilts: str,
                 quiet: bool) -> None:
    from matcher.evaluation.methods import EvalSettings, build_methods
    from matcher.evaluation.run import find_datasets, run_eval

    _setup_logging(quiet)
    try:
        settings = EvalSettings(max_edge=max_edge, max_keypoints=max_keypoints, seed=seed,
                                overrides=list(sets))  # checked when built
        settings.pipeline_config(None)  # a bad --set fails here, before any work
        names = [n.strip() for item in method_names for n in item.split(",") if n.strip()]
        if viewpoint:
            _viewpoint_eval(data_dir, out_dir, names or ["ours-viewpoint", "ours-default", "pycolmap-sift"],
                            settings, tilts, quiet)
            return
        methods, notes = build_methods(names or None, list(weights), settings)
        if sequences or scenes:
            for folder in (*sequences, *scenes):
                if not folder.is_dir():
                    raise NoImagesError(f"{folder}: folder does not exist")
            chosen_sequences, chosen_scenes = list(sequences), list(scenes)
        else:
            root = data_dir or default_data_dir()
            if not root.is_dir():
                raise NoImagesError(f"{root}: data folder does not exist (pass --data DIR or set MATCHER_SHARED_DATA)")
            chosen_sequences, chosen_scenes = find_datasets(root)
            if not chosen_sequences and not chosen_scenes:
                raise NoImagesError(f"{root}: no homography/<sequence>/H_1_* nor scenes/<scene>/gt_dense_cameras "
                                   "or cameras/*_P.txt")
        for note in notes:
            click.echo(f"note: {note}", err=True)
        command = "matcher " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report = run_eval(chosen_sequences, chosen_scenes, methods, out_dir, reconstruct=not no_reconstruct,
                          settings=settings, notes=notes, command=command,
                          echo=None if quiet else (lambda message: click.echo(message, err=True)))
    except MatcherError as exc:
        _fail(exc)
    if not quiet:
        click.echo(report.read_text())
    click.echo(f"report: {report}")


def _viewpoint_eval(data_dir: Path | None, out_dir: Path, names: list[str], settings, tilts: str,  # noqa: ANN001
                    quiet: bool) -> None:
    from matcher.errors import ConfigError
    from matcher.evaluation.methods import build_methods
    from matcher.evaluation.viewpoint import run_viewpoint_eval

    try:
        values = [float(t) for t in tilts.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not 1.0 <= t <= 32.0 for t in values):
        raise ConfigError(f"--tilts must be comma-separated numbers from 1 to 32, got '{tilts}'")
    root = data_dir or default_data_dir()
    if not root.is_dir():
        raise NoImagesError(f"{root}: data folder does not exist (pass --data DIR or set MATCHER_SHARED_DATA)")
    methods, notes = build_methods(names, [], settings)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    report, _ = run_viewpoint_eval(root, out_dir, methods, values, seed=settings.seed,
                                   echo=None if quiet else (lambda message: click.echo(message, err=True)))
    if not quiet:
        click.echo(report.read_text())
    click.echo(f"report: {report}")


@click.command("show")
@click.argument("database", type=click.Path(path_type=Path))
@click.argument("image1")
@click.argument("image2")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="PNG to write.")
@click.option("--images", "image_dir", type=click.Path(path_type=Path), default=None,
              help="Folder the database's images are in [default: the database's folder].")
@click.option("--max-draw", type=int, default=1000, show_default=True, help="Draw at most this many matches.")
def show_command(database: Path, image1: str, image2: str, out: Path, image_dir: Path | None, max_draw: int) -> None:
    """Draw the matches of IMAGE1 and IMAGE2 stored in DATABASE (a COLMAP database): verified inliers green,
    rejected matches red. IMAGE1 and IMAGE2 are image names as stored in the database."""
    from matcher.colmap_db import read_keypoints_and_matches
    from matcher.evaluation.plots import draw_matches
    from matcher.images import read_picture

    try:
        pair = read_keypoints_and_matches(database, image1, image2)
        folder = image_dir if image_dir is not None else database.parent
        if not folder.is_dir():
            raise NoImagesError(f"{folder}: image folder does not exist")
        pictures = []
        for name in (image1, image2):
            path = folder / name
            if not path.is_file():
                raise ImageReadError(f"{path}: image not found; pass --images DIR (the folder the database was made from)")
            pictures.append(read_picture(path))
        for name, picture, size in ((image1, pictures[0], pair.size1), (image2, pictures[1], pair.size2)):
            if (picture.shape[1], picture.shape[0]) != size:
                click.echo(f"warning: {name} is {picture.shape[1]}x{picture.shape[0]} but its camera in the database "
                           f"is {size[0]}x{size[1]}: is --images the right folder?", err=True)
        draw_matches(pictures[0], pictures[1], pair.xy1, pair.xy2, pair.inliers, out, max_draw=max_draw)
    except MatcherError as exc:
        _fail(exc)
    except OSError as exc:  # the PNG could not be written (bad folder, permissions)
        _fail(MatcherError(f"{out}: {exc}"))
    import pycolmap

    try:
        config = pycolmap.TwoViewGeometryConfiguration(pair.config).name
    except ValueError:
        config = str(pair.config)
    drawn = min(len(pair.matches), max_draw)
    click.echo(f"{out}: {len(pair.matches)} matches, {int(pair.inliers.sum())} verified inliers "
               f"(two-view geometry {config}); {drawn} drawn")
