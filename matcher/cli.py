"""Command line: ``match IMAGES --out DB`` and the ``matcher`` command group. Thin: parse, call, report."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

import click

from matcher.config import available_presets, load_config, parse_override
from matcher.errors import MatcherError

__all__ = ["main", "match_command"]


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from matcher.progress import write_line

        write_line(self.format(record))


def _setup_logging(verbose: bool, quiet: bool) -> None:
    logger = logging.getLogger("matcher")
    logger.handlers[:] = []
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False
    from matcher.progress import set_quiet

    set_quiet(quiet)  # bars are drawn only on a terminal anyway; -q turns them off there too


def _write_json(path: Path | None, command: str, exit_code: int, data: dict[str, Any]) -> None:
    """``--json FILE``: the end-of-run summary, machine-readable."""
    if path is None:
        return
    import json

    import matcher

    payload = {"command": command, "version": matcher.__version__, "exit_code": exit_code, **data}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _nothing_registered(summary: Any) -> None:
    """Exit code 1, with the reason, when SfM registered no image."""
    click.echo(f"error: the reconstruction registered no image: {summary.failure}", err=True)
    sys.exit(1)


def _fail(exc: MatcherError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _overrides(**flags: Any) -> list[dict[str, dict[str, Any]]]:
    """Dedicated flags -> config overrides (only the flags that were given)."""
    mapping = {
        "max_edge": ("images", "max_edge"),
        "max_keypoints": ("detection", "max_keypoints"),
        "upright": ("detection", "upright"),
        "descriptor": ("descriptor", "name"),
        "ratio": ("matching", "ratio"),
        "min_inliers": ("verification", "min_inliers"),
        "camera_model": ("export", "camera_model"),
        "colmap_version": ("export", "colmap_version"),
        "single_camera": ("export", "single_camera"),
        "seed": ("mapping", "seed"),
        "mapper": ("mapping", "mapper"),
        "camera_params": ("export", "camera_params"),
        "mask_dir": ("images", "mask_dir"),
    }
    out: list[dict[str, dict[str, Any]]] = []
    for flag, (section, key) in mapping.items():
        value = flags.get(flag)
        if value is not None and value is not False:
            out.append({section: {key: value}})
    if flags.get("model"):
        out.append({"descriptor": {"name": "sdgmnet", "weights": str(flags["model"])}})
    if flags.get("fix_intrinsics"):
        out.append({"mapping": {"refine_intrinsics": False}})
    if flags.get("overlap") is not None:
        out.append({"pairs": {"strategy": "sequential", "overlap": flags["overlap"]}})
    if flags.get("pairs"):
        out.append({"pairs": {"strategy": "file", "pairs_file": str(flags["pairs"])}})
    if flags.get("retrieval") is not None:  # alone: retrieval pairs only; with --overlap/--pairs: added to theirs
        alone = flags.get("overlap") is None and not flags.get("pairs")
        out.append({"pairs": {"retrieval_k": flags["retrieval"], **({"strategy": "retrieval"} if alone else {})}})
    if flags.get("gps") is not None:
        out.append({"pairs": {"gps_k": flags["gps"]}})
    return out


_MATCH_HELP = f"""Match the photos under IMAGES and write a COLMAP database to --out.

\b
Stages: DoG keypoints -> 32x32 patches -> descriptors (rootsift or sdgmnet) ->
mutual nearest neighbours -> RANSAC (MAGSAC++) -> COLMAP database [-> incremental SfM].
Features and matches are cached beside the database (NAME.features.h5, NAME.matches.h5) so an
interrupted run resumes; the merged configuration is saved as NAME.config.toml.
Presets: {', '.join(available_presets())} (or a TOML file).
"""


@click.command("match", help=_MATCH_HELP)
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="COLMAP database to write.")
@click.option("--reconstruct", "reconstruct_dir", type=click.Path(path_type=Path), default=None,
              help="Also run incremental SfM and write the largest model to this folder.")
@click.option("--pipeline", default="default", show_default=True, help="Preset name or TOML file.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="SDGMNet weights (.pt); implies --descriptor sdgmnet.")
@click.option("--descriptor", type=click.Choice(["rootsift", "sdgmnet"]), default=None, help="Descriptor to use.")
@click.option("--max-edge", type=int, default=None, help="Detect on a copy resized to this longer edge (0: full).")
@click.option("--max-keypoints", type=int, default=None, help="Keypoints kept per image.")
@click.option("--upright", is_flag=True, default=False, help="Ignore keypoint orientation.")
@click.option("--overlap", type=int, default=None, help="Sequential pairs: each image with the next N.")
@click.option("--pairs", type=click.Path(path_type=Path), default=None, help="Pairs file: 'name1 name2' per line.")
@click.option("--retrieval", type=int, default=None, metavar="K",
              help="Retrieval pairs: each image with its K most similar (VLAD of its own descriptors); "
                   "with --overlap or --pairs, added to those.")
@click.option("--gps", type=int, default=None, metavar="K",
              help="Also pair each image with its K nearest by EXIF GPS position (with --retrieval/--overlap/--pairs).")
@click.option("--ratio", type=float, default=None, help="Lowe ratio test threshold (0: off).")
@click.option("--min-inliers", type=int, default=None, help="Inliers needed for a verified pair.")
@click.option("--camera-model", default=None, help="COLMAP camera model (SIMPLE_RADIAL, PINHOLE, OPENCV, ...).")
@click.option("--colmap-version", default=None, metavar="V",
              help="COLMAP that will read the database, e.g. 3.8 (before 3.12: COLMAP 3.8's schema; "
                   "default: the installed pycolmap's).")
@click.option("--single-camera", is_flag=True, default=False, help="All images share one camera.")
@click.option("--camera-params", default=None, metavar="PARAMS",
              help="Known intrinsics for every camera, COLMAP's ImageReader string for the camera model "
                   "(SIMPLE_RADIAL: \"f,cx,cy,k\"; PINHOLE: \"fx,fy,cx,cy\"), full-resolution pixels.")
@click.option("--fix-intrinsics", is_flag=True, default=False,
              help="Keep the cameras' intrinsics fixed during mapping (with --camera-params).")
@click.option("--mask-dir", type=click.Path(path_type=Path), default=None,
              help="Masks as COLMAP reads them: MASKDIR/NAME.png for image NAME; no keypoints where 0.")
@click.option("--seed", type=int, default=None, help="Random seed (mapping).")
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default=None,
              help="SfM for --reconstruct: incremental (default) or global (GLOMAP; for forward-moving captures).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any config value.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace an existing database (and caches computed with other settings).")
@click.option("-v", "--verbose", is_flag=True, default=False, help="Log every image and pair.")
@click.option("--undistort", "undistort_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --reconstruct: undistorted images and PINHOLE model in DIR (images/, sparse/, stereo/).")
@click.option("--text", is_flag=True, default=False, help="Also write the models as COLMAP text files.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads to use (default: the CPUs this process may run on, capped by OMP_NUM_THREADS).")
@click.option("--ray", "ray", default=None, metavar="ADDRESS",
              help="Extract and match on a Ray cluster (auto: join this machine's or start a local one; "
                   "pip install \"matcher[ray]\"). Same files and database as a local run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the end-of-run summary to this JSON file.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bars, errors only.")
@click.version_option(package_name="matcher")
def match_command(images: Path, out: Path, reconstruct_dir: Path | None, pipeline: str, sets: tuple[str, ...],
                  overwrite: bool, verbose: bool, quiet: bool, undistort_dir: Path | None, text: bool,
                  threads: int | None, json_path: Path | None, ray: str | None, **flags: Any) -> None:
    from matcher.api import match
    from matcher.pipeline import OutputPaths

    _setup_logging(verbose, quiet)
    try:
        overrides = _overrides(**flags) + [parse_override(s) for s in sets]
        config = load_config(pipeline, overrides)
        report = match(images, out, config, reconstruct=reconstruct_dir, undistort=undistort_dir, text=text,
                       overwrite=overwrite, threads=threads, progress=not quiet, ray=ray)
    except MatcherError as exc:
        _fail(exc)
    except OSError as exc:  # a write no stage anticipated (read-only folder, disk full, I/O error): one line
        from matcher.errors import StorageError

        _fail(StorageError(f"{exc.filename or out}: {exc.strerror or str(exc).splitlines()[0]}"))
    failed = report.reconstruction is not None and report.reconstruction.registered_images == 0
    _write_json(json_path, "match", 1 if failed else 0, report.to_dict(OutputPaths(out)))
    if not quiet:
        click.echo(report.format(OutputPaths(out)))
    if failed:
        _nothing_registered(report.reconstruction)


@click.command("reconstruct")
@click.argument("database", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="COLMAP random seed.")
@click.option("--threads", "--num-threads", "threads", type=int, default=None,
              help="Threads (default: the CPUs this process may run on, capped by OMP_NUM_THREADS).")
@click.option("--min-model-size", type=int, default=3, show_default=True, help="Smallest model kept.")
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default="incremental", show_default=True,
              help="pycolmap incremental mapping or global mapping (GLOMAP).")
@click.option("--fix-intrinsics", is_flag=True, default=False,
              help="Keep the database's camera intrinsics fixed (known calibration).")
@click.option("--undistort", "undistort_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write undistorted images and a PINHOLE model of OUT/0 to DIR (images/, sparse/, stereo/).")
@click.option("--text", is_flag=True, default=False, help="Also write the models as COLMAP text files.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary to this JSON file.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bar, errors only.")
def reconstruct_command(database: Path, images: Path, out: Path, seed: int, threads: int | None,
                        min_model_size: int, mapper: str, fix_intrinsics: bool, undistort_dir: Path | None,
                        text: bool, json_path: Path | None, quiet: bool) -> None:
    """SfM (pycolmap) on DATABASE; the models are written to OUT/0 (the largest), OUT/1... as COLMAP's mapper
    writes them."""
    import dataclasses

    from matcher.api import reconstruct, undistort
    from matcher.config import MappingConfig
    from matcher.mapping import model_path
    from matcher.progress import progress_bar

    _setup_logging(False, quiet)
    config = MappingConfig(mapper=mapper, seed=seed, min_model_size=min_model_size,
                           refine_intrinsics=not fix_intrinsics)
    try:
        with progress_bar(desc="map", unit="img", leave=False) as bar:
            summary = reconstruct(database, images, out, config, text=text, threads=threads,
                                  on_image=lambda: bar.update(1))
        undistorted = None
        if undistort_dir is not None and summary.registered_images > 0:
            undistorted = undistort(model_path(out), images, undistort_dir, text=text, threads=threads)
    except MatcherError as exc:
        _fail(exc)
    failed = summary.registered_images == 0
    _write_json(json_path, "reconstruct", 1 if failed else 0, {
        "reconstruction": dataclasses.asdict(summary),
        "undistorted": None if undistorted is None else dataclasses.asdict(undistorted),
    })
    if not quiet and not failed:
        click.echo(f"reconstruction: {summary.format()}")
        if undistorted is not None:
            click.echo(f"undistorted: {undistorted.format()}")
    if failed:
        _nothing_registered(summary)


@click.command("demo")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--num-images", type=int, default=10, show_default=True, help="Views to render.")
@click.option("--pipeline", default="default", show_default=True, help="Preset name or TOML file.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an earlier demo in OUT.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bars or run summary: the pose error only.")
def demo_command(out: Path, num_images: int, pipeline: str, overwrite: bool, quiet: bool) -> None:
    """Render a scene with known cameras from scikit-image's photos, match it, reconstruct it, and report
    the pose error against the ground truth (no download)."""
    from matcher.evaluation.synthetic_scene import compare_to_scene, render_demo_scene
    from matcher.pipeline import OutputPaths, run_match

    _setup_logging(False, quiet)
    try:
        scene = render_demo_scene(out / "scene", num_images=num_images)
        if not quiet:
            click.echo(f"rendered {len(scene.names)} views of {scene.width}x{scene.height} into {scene.image_dir}")
        config = load_config(pipeline)
        report = run_match(scene.image_dir, out / "db.db", config, overwrite=overwrite, reconstruct_dir=out / "sparse",
                           progress=not quiet)
    except MatcherError as exc:
        _fail(exc)
    if not quiet:
        click.echo(report.format(OutputPaths(out / "db.db")))
    if report.reconstruction.registered_images == 0:
        _nothing_registered(report.reconstruction)
    import pycolmap

    from matcher.mapping import model_path

    comparison = compare_to_scene(pycolmap.Reconstruction(model_path(out / "sparse")), scene)
    if len(comparison.names) < 3:
        click.echo(comparison.format(), err=True)
        sys.exit(1)
    click.echo(comparison.format())


class _LazyGroup(click.Group):
    """A group whose other subcommands are imported when first looked up (run, or listed by ``--help``), so
    ``matcher --version`` and ``match --help`` import neither torch nor the training and evaluation code."""

    lazy = {  # command name -> "module:attribute"
        "eval": "matcher.evaluation.commands:eval_command",
        "show": "matcher.evaluation.commands:show_command",
        "dataset": "matcher.training.commands:dataset_group",
        "train": "matcher.training.commands:train_command",
        "finetune": "matcher.training.commands:finetune_command",
        "convert-db": "matcher.interop_commands:convert_db_command",
        "export": "matcher.interop_commands:export_group",
        "import-hloc": "matcher.interop_commands:import_hloc_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            from importlib import import_module

            module, attribute = self.lazy[name].split(":")
            command = getattr(import_module(module), attribute)
            _give_quiet(command)
            self.add_command(command, name)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="matcher")
def main() -> None:
    """matcher: feature matching for Structure-from-Motion (COLMAP databases)."""


main.add_command(match_command)
main.add_command(reconstruct_command)
main.add_command(demo_command)


def _give_quiet(command: click.Command) -> None:
    """Give a command without ``-q`` one: matcher's log at errors only and no progress bars while it runs."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _give_quiet(sub)
        return
    if any("-q" in param.opts for param in command.params) or command.callback is None:
        return
    callback = command.callback

    @functools.wraps(callback)
    def quiet_callback(*args: Any, quiet: bool = False, **kwargs: Any) -> Any:
        from matcher.progress import set_quiet

        logger = logging.getLogger("matcher")
        level = logger.level
        if quiet:
            logger.setLevel(logging.ERROR)
        set_quiet(quiet)
        try:
            return callback(*args, **kwargs)
        finally:
            set_quiet(False)
            logger.setLevel(level)

    command.params.append(click.Option(["-q", "--quiet"], is_flag=True, default=False,
                                       help="No progress bars, errors only."))
    command.callback = quiet_callback


for _command in list(main.commands.values()):  # -q on every subcommand
    _give_quiet(_command)
