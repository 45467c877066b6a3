"""CLI commands for training: ``matcher dataset``, ``matcher train`` and ``matcher finetune``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from matcher.errors import MatcherError
from matcher.training.finetune import FinetuneSettings
from matcher.training.gt_tracks import TRACK_RULES

__all__ = ["dataset_group", "train_command", "finetune_command"]

log = logging.getLogger("matcher")


def _fail(exc: MatcherError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group("dataset")
def dataset_group() -> None:
    """Build patch datasets (HDF5) for training and evaluation."""


@dataset_group.command("scene")
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Patch dataset to write.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the database and model (default: OUT without .h5).")
@click.option("--sparse", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An existing model of IMAGES made by `match` into --work (skips matching and mapping).")
@click.option("--pipeline", default="default", show_default=True, help="Preset used to match and reconstruct.")
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default="incremental", show_default=True,
              help="SfM used to find the tracks.")
def dataset_scene(images: Path, out: Path, work: Path | None, sparse: Path | None, pipeline: str,
                  mapper: str) -> None:
    """Patches of the 3D points of a reconstruction of IMAGES (one identity per point)."""
    from matcher.config import load_config
    from matcher.training.datasets import build_scene_dataset

    try:
        config = load_config(pipeline, [{"mapping": {"mapper": mapper}}])
        patch_set = build_scene_dataset(images, out, work or out.with_suffix(""), config, sparse_dir=sparse)
    except MatcherError as exc:
        _fail(exc)
    click.echo(f"{out}: {len(patch_set)} patches of {patch_set.num_identities} 3D points")


@dataset_group.command("cameras")
@click.argument("scene", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Patch dataset to write.")
@click.option("--pipeline", default="default", show_default=True, help="Preset whose detector and patches are used.")
@click.option("--reconstruction", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Use this COLMAP model's cameras (e.g. from `match --reconstruct`) instead of ground truth; "
                   "SCENE is then the image folder.")
@click.option("--min-shared", type=int, default=30, show_default=True,
              help="With --reconstruction: pair views that share at least this many 3D points.")
@click.option("--max-edge", type=int, default=None, help="Detect on a copy resized to this longer edge.")
@click.option("--tracks", "track_rule", type=click.Choice(sorted(TRACK_RULES)), default="published",
              show_default=True, help="Track rule (gt_tracks.TRACK_RULES): clean = stricter tolerances, 4 views, "
                                      "support within 60 deg (fewer chance-aligned positives).")
def dataset_cameras(scene: Path, out: Path, pipeline: str, reconstruction: Path | None, min_shared: int,
                    max_edge: int | None, track_rule: str) -> None:
    """Patches of descriptor-free tracks of SCENE (images/ plus ground-truth cameras, or an image folder with
    --reconstruction): wide-baseline positives linked by geometry alone."""
    from matcher.config import load_config
    from matcher.training.datasets import build_camera_dataset

    try:
        config = load_config(pipeline, [{"images": {"max_edge": max_edge}}] if max_edge is not None else [])
        patch_set = build_camera_dataset(scene, out, config, reconstruction=reconstruction, min_shared=min_shared,
                                         track_config=TRACK_RULES[track_rule])
    except MatcherError as exc:
        _fail(exc)
    except FileNotFoundError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{out}: {len(patch_set)} patches of {patch_set.num_identities} tracks")


@dataset_group.command("homography")
@click.argument("photos", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Patch dataset to write.")
@click.option("--warps", type=int, default=3, show_default=True, help="Random warps per photo.")
@click.option("--max-keypoints", type=int, default=1500, show_default=True, help="Keypoints per photo.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the warps.")
@click.option("--jpeg", "jpeg_prob", type=float, default=0.0, show_default=True,
              help="Probability that a warped image is re-encoded as JPEG (quality 30-90).")
@click.option("--max-side", type=int, default=640, show_default=True, help="Downscale photos to this longer side.")
def dataset_homography(photos: tuple[str, ...], out: Path, warps: int, max_keypoints: int, seed: int,
                       jpeg_prob: float, max_side: int) -> None:
    """Self-supervised patches: random homographies of PHOTOS (image files, folders, or scikit-image names)."""
    from matcher.images import list_images
    from matcher.training.datasets import build_homography_dataset

    expanded: list[str] = []
    for photo in photos:
        path = Path(photo)
        expanded.extend(str(path / n) for n in list_images(path)) if path.is_dir() else expanded.append(photo)
    patch_set = build_homography_dataset(expanded, out, warps_per_photo=warps, max_keypoints=max_keypoints, seed=seed,
                                         jpeg_prob=jpeg_prob, max_side=max_side)
    click.echo(f"{out}: {len(patch_set)} patches of {patch_set.num_identities} keypoints")


@dataset_group.command("hpatches")
@click.argument("sequence", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Patch dataset to write.")
def dataset_hpatches(sequence: Path, out: Path) -> None:
    """Patches of a homography sequence with ground truth (1.ppm..6.ppm, H_1_k)."""
    from matcher.patches import DEFAULT_MAGNIFICATION
    from matcher.training.datasets import save_patch_set
    from matcher.training.hpatches_patches import patches_from_homography_sequence

    patch_set = patches_from_homography_sequence(sequence, magnification=DEFAULT_MAGNIFICATION)
    save_patch_set(patch_set, out, source=f"ground-truth homographies of {sequence}",
                   magnification=DEFAULT_MAGNIFICATION)
    click.echo(f"{out}: {len(patch_set)} patches of {patch_set.num_identities} keypoints")


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None, help="Override the number of steps.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Override the output.")
@click.option("--export-checkpoint", "export", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Do not train: write the weights of the run's latest checkpoint to this file.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bar.")
def train_command(config_path: Path, steps: int | None, out: Path | None, export: Path | None, quiet: bool) -> None:
    """Train SDGMNet from a TOML CONFIG (resumes from OUT's checkpoint if there is one)."""
    from matcher.training.trainer import export_checkpoint, load_train_config, train

    overrides: dict = {}
    if steps is not None:
        overrides["steps"] = steps
    if out is not None:
        overrides["out"] = str(out.resolve())
    try:
        config = load_train_config(config_path, overrides)
        if export is not None:
            step = export_checkpoint(config, export)
            click.echo(f"wrote {export}: weights at step {step} of {config.steps}")
            return
        result = train(config, progress=not quiet)
    except MatcherError as exc:
        _fail(exc)
    last = result.history[-1] if result.history else {}
    click.echo(f"wrote {result.out} after {result.steps} steps in {result.seconds / 60:.1f} min"
               + (f"; held-out FPR95 {last['fpr95']:.4f}" if "fpr95" in last else ""))


FINETUNE_DEFAULTS = FinetuneSettings()


@click.command("finetune")
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Weights to write.")
@click.option("--sparse", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A COLMAP model of IMAGES (e.g. from `match --reconstruct`): skips matching and mapping.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Working folder (default: OUT without .pt, plus '.work').")
@click.option("--model", "base", default=None,
              help="Weights to start from [default: the --pipeline preset's; the default preset's is the compact "
                   "SDGMNet, models/sdgmnet-half.pt].")
@click.option("--pipeline", default="default", show_default=True,
              help="Preset whose detector and patches are used (and that reconstructs the scene).")
@click.option("--steps", type=int, default=FINETUNE_DEFAULTS.steps, show_default=True, help="Fine-tuning steps.")
@click.option("--batch", type=int, default=FINETUNE_DEFAULTS.identities_per_batch, show_default=True,
              help="3D points per step (two views of each).")
@click.option("--loss", default=FINETUNE_DEFAULTS.loss, show_default=True, help="Loss (matcher.losses).")
@click.option("--lr", type=float, default=FINETUNE_DEFAULTS.lr, show_default=True,
              help=f"Learning rate ({FINETUNE_DEFAULTS.optimizer}, {FINETUNE_DEFAULTS.schedule} decay).")
@click.option("--held-out", type=float, default=FINETUNE_DEFAULTS.held_out, show_default=True,
              help="Fraction of the scene's 3D points never trained on, where the report is measured.")
@click.option("--seed", type=int, default=FINETUNE_DEFAULTS.seed, show_default=True, help="Split, batches, augmentation.")
@click.option("--tracks", type=click.Choice(sorted(TRACK_RULES)), default=FINETUNE_DEFAULTS.tracks,
              show_default=True, help="Track rule linking the keypoints (matcher.training.gt_tracks.TRACK_RULES): "
                                      "clean rejects chance alignments; published is the hard benchmark's first rule.")
@click.option("--wide-pairs", type=float, default=FINETUNE_DEFAULTS.wide_pairs, show_default=True,
              help="Share of each batch's 3D points shown at their two views of widest angle (0: two at random).")
@click.option("--augment/--no-augment", default=FINETUNE_DEFAULTS.augment, show_default=True,
              help="The SDGMNet patch augmentation (shared rot90 and flip per point, small similarity per patch).")
@click.option("--mapper", type=click.Choice(["incremental", "global"]), default="incremental", show_default=True,
              help="SfM used to find the cameras when no --sparse is given.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bars.")
def finetune_command(images: Path, out: Path, sparse: Path | None, work: Path | None, base: str | None, pipeline: str,
                     steps: int, batch: int, loss: str, lr: float, held_out: float, seed: int, tracks: str,
                     wide_pairs: float, augment: bool, mapper: str, quiet: bool) -> None:
    """Fine-tune SDGMNet on the scene in IMAGES; report hard-bin FPR95 and mAP before and after.

    \b
    Without --sparse the scene is matched and reconstructed first. Its keypoints are linked into 3D points by
    the reconstructed cameras alone (no descriptor chooses the positives); a part of the points is held out, and
    FPR95 and mAP per viewpoint-angle bin are measured on it before and after fine-tuning. Then:
        match IMAGES --out db.db --model OUT
    """
    from dataclasses import replace

    from matcher.training.finetune import finetune_scene, format_report

    work = work or out.with_name(out.stem + ".work")
    settings = replace(FINETUNE_DEFAULTS, steps=steps, identities_per_batch=batch, loss=loss, lr=lr,
                       held_out=held_out, seed=seed, tracks=tracks, wide_pairs=wide_pairs, augment=augment)
    try:
        report = finetune_scene(images, out, work, base, settings, pipeline=pipeline, sparse=sparse, mapper=mapper,
                                progress=not quiet)
    except MatcherError as exc:
        _fail(exc)
    click.echo(format_report(report))
