"""Commands for other tools' files: ``matcher convert-db`` (COLMAP versions), ``matcher export hloc`` and
``matcher import-hloc``. Thin: parse, call, report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from matcher.errors import MatcherError

__all__ = ["convert_db_command", "export_group", "import_hloc_command"]


def _fail(exc: MatcherError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.command("convert-db")
@click.argument("in_db", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_db", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--colmap-version", required=True, metavar="V",
              help="COLMAP that will read OUT, e.g. 3.8: before 3.12, COLMAP 3.8's schema; else pycolmap's.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing OUT.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Errors only.")
def convert_db_command(in_db: Path, out_db: Path, colmap_version: str, overwrite: bool, quiet: bool) -> None:
    """Copy the COLMAP database IN to OUT in the schema COLMAP version V reads (IN is not modified)."""
    from matcher.colmap_legacy_db import convert_database

    try:
        schema = convert_database(in_db, out_db, colmap_version, overwrite=overwrite)
    except MatcherError as exc:
        _fail(exc)
    if not quiet:
        click.echo(f"database: {out_db} ({schema})")


@click.group("export")
def export_group() -> None:
    """Write a run's features and matches for other tools."""


@export_group.command("hloc")
@click.argument("db_stem", metavar="DB_STEM", type=click.Path(path_type=Path))
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--inliers-only", is_flag=True, default=False,
              help="Only RANSAC inliers (for hloc's skip_geometric_verification); default: all raw matches.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Errors only.")
def export_hloc_command(db_stem: Path, out_dir: Path, inliers_only: bool, quiet: bool) -> None:
    """features.h5, matches.h5 and pairs.txt in hloc's layout from the run DB_STEM (DIR/NAME.db or DIR/NAME:
    its NAME.features.h5 and NAME.matches.h5)."""
    from matcher.hloc_io import export_hloc

    try:
        counts = export_hloc(db_stem, out_dir, inliers_only=inliers_only)
    except MatcherError as exc:
        _fail(exc)
    if not quiet:
        click.echo(
            f"hloc: {out_dir}/features.h5 ({counts['images']} images, {counts['keypoints']} keypoints), "
            f"{out_dir}/matches.h5 ({counts['pairs']} pairs, {counts['matches']} matches), {out_dir}/pairs.txt"
        )


@click.command("import-hloc")
@click.argument("features", metavar="FEATURES.h5", type=click.Path(path_type=Path))
@click.argument("matches", metavar="MATCHES.h5", type=click.Path(path_type=Path))
@click.argument("pairs", metavar="PAIRS", type=click.Path(path_type=Path))
@click.option("--images", "image_dir", required=True, type=click.Path(path_type=Path),
              help="The image folder (cameras from EXIF, as match does).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="COLMAP database to write.")
@click.option("--pipeline", default="default", show_default=True,
              help="Preset or TOML file whose [verification] and [export] settings apply.")
@click.option("--colmap-version", default=None, metavar="V", help="COLMAP that will read the database (e.g. 3.8).")
@click.option("--camera-model", default=None, help="COLMAP camera model.")
@click.option("--single-camera", is_flag=True, default=False, help="All images share one camera.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any config value.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing database.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Errors only.")
def import_hloc_command(features: Path, matches: Path, pairs: Path, image_dir: Path, out: Path, pipeline: str,
                        colmap_version: str | None, camera_model: str | None, single_camera: bool,
                        sets: tuple[str, ...], overwrite: bool, quiet: bool) -> None:
    """A COLMAP database from hloc's files: hloc's matches are the raw matches, verified with our RANSAC."""
    from matcher.colmap_legacy_db import schema_name
    from matcher.config import load_config, parse_override
    from matcher.hloc_io import import_hloc

    try:
        overrides = [{"export": {k: v}} for k, v in (("colmap_version", colmap_version), ("camera_model", camera_model),
                                                     ("single_camera", single_camera or None)) if v is not None]
        config = load_config(pipeline, overrides + [parse_override(s) for s in sets])
        schema = schema_name(config.export.colmap_version)
        counts = import_hloc(features, matches, pairs, image_dir, out, config, overwrite=overwrite)
    except MatcherError as exc:
        _fail(exc)
    if not quiet:
        click.echo(
            f"database: {out} ({counts['images']} images, {counts['cameras']} cameras, {counts['keypoints']} keypoints, "
            f"{counts['verified_pairs']} verified pairs, {counts['inlier_matches']} inlier matches), {schema}"
        )
