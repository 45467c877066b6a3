"""``matcher eval``: every method on the same data, measured the same way, into one Markdown report.

Homography sequences (HPatches layout), for the pairs (1, k):

* the method's raw matches (its matcher's output, before RANSAC) are scored against the ground-truth H_1_k:
  mean matching accuracy at 1..10 px (one-way error in image-k pixels, averaged over pairs), and the number of
  matches and of correct ones (error <= ``correct_px``);
* the method's own verified inliers: their number and their precision (<= ``correct_px``);
* homography accuracy: one H per pair fitted to the raw matches by the same estimator for every method
  (OpenCV MAGSAC++, ``homography_ransac_px``, seed 0), mean corner error <= 1, 3, 5 px.

Scenes with ground-truth cameras (Strecha layout, ``gt_dense_cameras/NAME.camera``, or a 3x4 projection matrix per
image, ``cameras/STEM_P.txt`` as buddha's):

* every image pair: relative pose from the raw matches with :func:`estimate_relative_pose` (MAGSAC++ on the
  essential matrix with the ground-truth K; threshold 1 px of the detection image, in full-resolution
  pixels), error max(rotation, translation direction), AUC at 1, 2, 5, 10, 20 degrees;
* the database each method wrote, mapped by the same pycolmap incremental mapping; registered images, 3D
  points, track length, reprojection error, and camera errors after a similarity alignment of the centres.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from matcher.errors import ConfigError, MatcherError, NoImagesError
from matcher.evaluation.homography import (
    corner_error,
    homography_accuracy,
    load_hpatches_sequence,
    mean_matching_accuracy,
    reprojection_errors,
)
from matcher.evaluation.methods import EvalSettings, Method, MethodRun
from matcher.evaluation.plots import draw_matches, plot_accuracy_curves
from matcher.evaluation.pose import (
    StrechaCamera,
    camera_from_projection,
    estimate_relative_pose,
    pose_auc,
    read_strecha_camera,
    relative_pose,
    relative_pose_error,
    rotation_angle_deg,
)
from matcher.evaluation.report import markdown_table, write_report
from matcher.images import list_images, read_picture, rescale_pixels

__all__ = [
    "MMA_THRESHOLDS",
    "HOMOGRAPHY_THRESHOLDS",
    "AUC_THRESHOLDS",
    "find_datasets",
    "evaluate_homography",
    "evaluate_scene",
    "evaluate_shared_scenes",
    "run_eval",
]

log = logging.getLogger("matcher")

MMA_THRESHOLDS = tuple(range(1, 11))
HOMOGRAPHY_THRESHOLDS = (1, 3, 5)
AUC_THRESHOLDS = (1, 2, 5, 10, 20)
NEAR_PAIR_DEG = 30.0  # pairs whose ground-truth rotation is at most this are also summarised on their own
PICTURE_EDGE = 1024  # match pictures in the report are drawn on copies this large


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def find_datasets(data_root: Path) -> tuple[list[Path], list[Path]]:
    """(homography sequences, scenes with ground-truth cameras) under a data folder laid out as ../shared/data.

    Sequences: ``homography/*/`` holding ``H_1_*``; scenes: ``scenes/*/`` holding ``images/`` and
    ``gt_dense_cameras/`` or ``cameras/*_P.txt``.
    """
    data_root = Path(data_root)
    sequences = sorted(p for p in (data_root / "homography").glob("*") if p.is_dir() and any(p.glob("H_1_*")))
    scenes = sorted(
        p for p in (data_root / "scenes").glob("*")
        if (p / "images").is_dir() and ((p / "gt_dense_cameras").is_dir() or any((p / "cameras").glob("*_P.txt")))
    )
    return sequences, scenes


def _run_timed(method: Method, folder: Path, pairs, work_dir: Path, reconstruct: bool,
               rows: list[dict[str, Any]]) -> tuple[MethodRun | None, float]:
    """:func:`_run_method` in ``work_dir/<method>``, timed; a crash becomes an error row in ``rows``."""
    t0 = time.perf_counter()
    run, error = _run_method(method, folder, pairs, Path(work_dir) / _safe(method.name), reconstruct)
    elapsed = time.perf_counter() - t0
    if run is None:
        rows.append({"method": method.name, "pairs": len(pairs), "error": error, "time_s": elapsed})
    return run, elapsed


def _run_method(method: Method, image_dir: Path, pairs, work_dir: Path, reconstruct: bool) -> tuple[MethodRun | None, str]:
    """Run one method; a crash is logged with its traceback and reported, the other methods go on."""
    try:
        return method.run(image_dir, pairs, work_dir, reconstruct=reconstruct), ""
    except MatcherError:
        raise
    except Exception as exc:  # a bug in a method must not lose the whole evaluation
        log.error("%s failed on %s:\n%s", method.name, image_dir, traceback.format_exc())
        return None, f"{type(exc).__name__}: {exc}"


def _draw_pair(path1: Path, path2: Path, xy1, xy2, inliers, out: Path, max_edge: int = PICTURE_EDGE) -> Path:
    """A match picture on copies of the images resized to ``max_edge`` (coordinates mapped with them)."""
    images, points = [], []
    for path, xy in ((path1, xy1), (path2, xy2)):
        image = read_picture(path)
        factor = min(1.0, max_edge / max(image.shape[:2])) if max_edge > 0 else 1.0
        if factor < 1.0:
            size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
            sx, sy = size[0] / image.shape[1], size[1] / image.shape[0]
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            xy = rescale_pixels(xy, sx, sy)
        images.append(image)
        points.append(xy)
    draw_matches(images[0], images[1], points[0], points[1], inliers, out, max_draw=300)
    return out


# --- homography sequences ------------------------------------------------------------------------------


def _fit_homography(xy1: np.ndarray, xy2: np.ndarray, threshold_px: float) -> np.ndarray | None:
    if len(xy1) < 4:
        return None
    cv2.setRNGSeed(0)
    H, _ = cv2.findHomography(xy1, xy2, cv2.USAC_MAGSAC, threshold_px, maxIters=10000, confidence=0.9999)
    return None if H is None or H.shape != (3, 3) else H


def evaluate_homography(
    sequence_dir: Path,
    methods: Sequence[Method],
    work_dir: Path,
    correct_px: float = 3.0,
    homography_ransac_px: float = 3.0,
    picture_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per method on an HPatches-layout sequence (pairs 1-k). See the module docstring for the metrics.

    Row keys: method, pairs, keypoints (mean per image), matches, correct, inliers (means per pair),
    ``mma@t`` for t in 1..10 and ``mma_curve`` (list), inlier_precision, ``h_acc@t`` for t in 1, 3, 5,
    corner_error_median, time_s, per_pair (list of dicts: pair, matches, correct, inliers, mma, corner_error),
    picture (path or None), error ("" unless the method crashed).
    """
    sequence_dir = Path(sequence_dir)
    if not sequence_dir.is_dir():
        raise NoImagesError(f"{sequence_dir}: sequence folder does not exist")
    try:
        images, homographies = load_hpatches_sequence(sequence_dir)
    except FileNotFoundError as exc:
        raise NoImagesError(f"{sequence_dir}: not an HPatches sequence ({exc})") from None
    if not homographies:
        raise NoImagesError(f"{sequence_dir}: no H_1_k ground-truth files")
    by_number = {int(p.stem): p for p in images}
    reference = by_number[1]
    width, height = read_picture(reference).shape[1::-1]
    pairs = [(reference.name, by_number[k].name) for k in homographies]
    hardest = pairs[-1]
    rows = []
    for method in methods:
        run, elapsed = _run_timed(method, sequence_dir, pairs, work_dir, False, rows)
        if run is None:
            continue
        per_pair = []
        for (name1, name2), k in zip(pairs, homographies):
            xy1, xy2, inliers = run.matched_points(name1, name2)
            errors = reprojection_errors(xy1, xy2, homographies[k])
            correct = errors <= correct_px
            H = _fit_homography(xy1, xy2, homography_ransac_px)
            per_pair.append(
                dict(
                    pair=f"{Path(name1).stem}-{Path(name2).stem}",
                    matches=len(xy1),
                    correct=int(correct.sum()),
                    inliers=int(inliers.sum()),
                    correct_inliers=int((correct & inliers).sum()),
                    mma=mean_matching_accuracy(errors, MMA_THRESHOLDS).tolist(),
                    corner_error=corner_error(H, homographies[k], width, height),
                )
            )
        curve = np.mean([p["mma"] for p in per_pair], axis=0)
        corner = [p["corner_error"] for p in per_pair]
        row: dict[str, Any] = {
            "method": method.name,
            "pairs": len(pairs),
            "keypoints": _mean([len(v) for v in run.keypoints.values()]),
            "matches": _mean([p["matches"] for p in per_pair]),
            "correct": _mean([p["correct"] for p in per_pair]),
            "inliers": _mean([p["inliers"] for p in per_pair]),
            "inlier_precision": _mean([p["correct_inliers"] / p["inliers"] if p["inliers"] else 0.0 for p in per_pair]),
            **{f"mma@{t}": float(v) for t, v in zip(MMA_THRESHOLDS, curve)},
            "mma_curve": curve.tolist(),
            **{f"h_acc@{t}": v for t, v in homography_accuracy(corner, HOMOGRAPHY_THRESHOLDS).items()},
            "corner_error_median": float(np.median(corner)),
            "time_s": run.timings.get("features+matching", elapsed),
            "per_pair": per_pair,
            "picture": None,
            "error": "",
        }
        if picture_dir is not None:
            xy1, xy2, inliers = run.matched_points(*hardest)
            out = Path(picture_dir) / (
                f"matches_{_safe(sequence_dir.name)}_{Path(hardest[0]).stem}-{Path(hardest[1]).stem}"
                f"_{_safe(method.name)}.png"
            )
            row["picture"] = str(_draw_pair(sequence_dir / hardest[0], sequence_dir / hardest[1],
                                            xy1, xy2, inliers, out))
        rows.append(row)
    return rows


# --- scenes with ground-truth cameras -------------------------------------------------------------------


def scene_cameras(scene_dir: Path) -> dict[str, StrechaCamera]:
    """{image name: camera} of a scene's images that have ground truth: Strecha ``gt_dense_cameras/NAME.camera``
    or, without that folder, a 3x4 projection matrix ``cameras/STEM_P.txt`` (``00006._c.jpg`` -> ``00006_P.txt``)."""
    from PIL import Image

    image_dir, gt_dir = Path(scene_dir) / "images", Path(scene_dir) / "gt_dense_cameras"
    cameras = {}
    for name in list_images(image_dir):
        if gt_dir.is_dir():
            path = gt_dir / f"{Path(name).name}.camera"
            if path.is_file():
                cameras[name] = read_strecha_camera(path)
            continue
        path = Path(scene_dir) / "cameras" / f"{Path(name).name.split('.', 1)[0]}_P.txt"
        if path.is_file():
            try:
                P = np.loadtxt(path).reshape(3, 4)
            except ValueError as exc:
                raise ConfigError(f"{path}: expected a 3x4 projection matrix ({exc})") from None
            with Image.open(image_dir / name) as image:
                cameras[name] = camera_from_projection(P, *image.size)
    return cameras


def _scene_ground_truth(scene_dir: Path) -> tuple[Path, dict[str, Any]]:
    scene_dir = Path(scene_dir)
    image_dir = scene_dir / "images"
    if not scene_dir.is_dir():
        raise NoImagesError(f"{scene_dir}: scene folder does not exist")
    if not image_dir.is_dir() or not ((scene_dir / "gt_dense_cameras").is_dir() or (scene_dir / "cameras").is_dir()):
        raise ConfigError(f"{scene_dir}: expected images/ and gt_dense_cameras/ (Strecha layout) or cameras/*_P.txt")
    cameras = scene_cameras(scene_dir)
    if len(cameras) < 2:
        raise ConfigError(f"{scene_dir}: fewer than two images have a ground-truth camera")
    return image_dir, cameras


def evaluate_scene(
    scene_dir: Path,
    methods: Sequence[Method],
    work_dir: Path,
    reconstruct: bool = True,
    settings: EvalSettings | None = None,
    picture_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per method on a Strecha-layout scene. See the module docstring for the metrics.

    Row keys: method, pairs, keypoints, matches, inliers (means), ``auc@t`` for t in 1, 2, 5, 10, 20,
    median_error_deg, failed_pairs (no pose), near_pairs / ``near_auc@t`` (pairs at most 30 degrees apart),
    pose_curve (fraction of pairs within 0..20 degrees), time_s; with ``reconstruct``: registered, total_images,
    points3D, track_length, reprojection_error, rotation_error_median/max (deg), position_error_median/max
    (ground-truth units, metres), map_time_s; picture, error.
    """
    from matcher.evaluation.sfm import compare_to_cameras, reconstruction_summary

    settings = settings or EvalSettings()
    image_dir, cameras = _scene_ground_truth(scene_dir)
    names = sorted(cameras)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    gt = {}
    for a, b in pairs:
        R, t = relative_pose(cameras[a].R, cameras[a].t, cameras[b].R, cameras[b].t)
        gt[(a, b)] = (R, t, rotation_angle_deg(R))
    picture_pair = min(pairs, key=lambda p: (abs(gt[p][2] - 15.0), p))
    rows = []
    for method in methods:
        run, elapsed = _run_timed(method, image_dir, pairs, work_dir, reconstruct, rows)
        if run is None:
            continue
        errors, near, matches, inliers = [], [], [], []
        for a, b in pairs:
            xy1, xy2, inl = run.matched_points(a, b)
            edge = max(cameras[a].width, cameras[a].height)
            threshold = max(1.0, edge / settings.max_edge) if settings.max_edge > 0 else 1.0
            estimate = estimate_relative_pose(xy1, xy2, cameras[a].K, cameras[b].K, threshold_px=threshold)
            R_gt, t_gt, angle = gt[(a, b)]
            e_R, e_t = relative_pose_error(*(estimate[:2] if estimate else (None, None)), R_gt, t_gt)
            errors.append(max(e_R, e_t))
            if angle <= NEAR_PAIR_DEG:
                near.append(errors[-1])
            matches.append(len(xy1))
            inliers.append(int(inl.sum()))
        errors_arr = np.asarray(errors)
        grid = np.linspace(0.0, 20.0, 41)
        row: dict[str, Any] = {
            "method": method.name,
            "pairs": len(pairs),
            "keypoints": _mean([len(v) for v in run.keypoints.values()]),
            "matches": _mean(matches),
            "inliers": _mean(inliers),
            **{f"auc@{t}": v for t, v in pose_auc(errors, AUC_THRESHOLDS).items()},
            "median_error_deg": float(np.median(errors_arr)),
            "failed_pairs": int(np.isinf(errors_arr).sum()),
            "near_pairs": len(near),
            **{f"near_auc@{t}": v for t, v in pose_auc(near, AUC_THRESHOLDS).items()},
            "pose_curve": [grid.tolist(), [float((errors_arr <= g).mean()) for g in grid]],
            "time_s": run.timings.get("features+matching", elapsed),
            "picture": None,
            "error": "",
        }
        if reconstruct:
            row.update(registered=0, total_images=len(list_images(image_dir)), points3D=0,
                       map_time_s=run.timings.get("mapping", float("nan")))
            if run.reconstruction_dir is not None and (run.reconstruction_dir / "images.bin").is_file():
                import pycolmap

                rec = pycolmap.Reconstruction(run.reconstruction_dir)
                summary = reconstruction_summary(rec)
                comparison = compare_to_cameras(rec, {Path(n).name: c for n, c in cameras.items()})
                per_image = comparison["per_image"].values()
                row.update(
                    registered=summary["registered_images"],
                    points3D=summary["points3D"],
                    track_length=summary["mean_track_length"],
                    reprojection_error=summary["mean_reprojection_error"],
                    rotation_error_median=comparison["rotation_error_deg_median"],
                    rotation_error_max=max((r for r, _ in per_image), default=float("nan")),
                    position_error_median=comparison["position_error_median"],
                    position_error_max=max((p for _, p in per_image), default=float("nan")),
                )
        if picture_dir is not None:
            a, b = picture_pair
            xy1, xy2, inl = run.matched_points(a, b)
            out = Path(picture_dir) / (
                f"matches_{_safe(Path(scene_dir).name)}_{Path(a).stem}-{Path(b).stem}_{_safe(method.name)}.png"
            )
            row["picture"] = str(_draw_pair(image_dir / a, image_dir / b, xy1, xy2, inl, out))
        rows.append(row)
    return rows


# --- the report -----------------------------------------------------------------------------------------

_HOMOGRAPHY_COLUMNS = ["method", "keypoints", "matches", "correct", "mma@1", "mma@3", "mma@5", "mma@10",
                       "inliers", "inlier_precision", "h_acc@1", "h_acc@3", "h_acc@5", "corner_error_median",
                       "time_s"]
_POSE_COLUMNS = ["method", "pairs", "keypoints", "matches", "inliers", "auc@1", "auc@2", "auc@5", "auc@10",
                 "auc@20", "median_error_deg", "failed_pairs", "near_pairs", "near_auc@5", "near_auc@10",
                 "near_auc@20", "time_s"]
_SFM_COLUMNS = ["method", "registered", "total_images", "points3D", "track_length", "reprojection_error",
                "rotation_error_median", "rotation_error_max", "position_error_median", "position_error_max",
                "map_time_s"]
_FORMATS = {"keypoints": ".0f", "matches": ".0f", "correct": ".0f", "inliers": ".0f", "time_s": ".1f",
            "map_time_s": ".1f", "corner_error_median": ".2f", "median_error_deg": ".2f", "track_length": ".2f",
            "reprojection_error": ".3f", "rotation_error_median": ".3f", "rotation_error_max": ".3f",
            "position_error_median": ".4f", "position_error_max": ".4f"}


def evaluate_shared_scenes(
    scene_names: Sequence[str],
    methods: Sequence[Method],
    settings: EvalSettings,
    reconstruct: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate_scene` on shared scenes by name (``../shared/data/scenes/<name>``), in a temporary work
    folder; every row gets its ``scene``, and ``on_row`` (e.g. a progress print) is called as each arrives."""
    import tempfile

    from matcher.shared_data import shared_data_dir

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for scene in scene_names:
            for row in evaluate_scene(shared_data_dir() / "scenes" / scene, methods, Path(work) / scene,
                                      reconstruct=reconstruct, settings=settings):
                row["scene"] = scene
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    table = markdown_table(rows, columns, floatfmt=_FORMATS)
    failures = [f"- {r['method']} failed: {r['error']}" for r in rows if r.get("error")]
    return table + ("\n" + "\n".join(failures) + "\n" if failures else "")


def _relative(path: str | None, base: Path) -> str:
    return os.path.relpath(path, base) if path else ""


def _pictures(rows: list[dict[str, Any]], base: Path, caption: str) -> str:
    items = [f"![{r['method']}]({_relative(r['picture'], base)})" for r in rows if r.get("picture")]
    return (caption + "\n\n" + "\n".join(items) + "\n") if items else ""


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("matcher", "torch", "kornia", "opencv-python", "pycolmap", "numpy"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def run_eval(
    sequences: Sequence[Path],
    scenes: Sequence[Path],
    methods: Sequence[Method],
    out_dir: Path,
    reconstruct: bool = True,
    settings: EvalSettings | None = None,
    notes: Sequence[str] = (),
    command: str = "",
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Evaluate ``methods`` on every sequence and scene; write ``out_dir/report.md`` and return its path.

    Also written: ``results.json`` (all rows), ``mma_<sequence>.png``, ``pose_auc_<scene>.png`` and match
    pictures ``matches_<dataset>_<pair>_<method>.png``; each method's database and caches stay in
    ``out_dir/work/<dataset>/<method>/`` (for ``matcher show``).
    """
    settings = settings or EvalSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    echo = echo or (lambda message: log.warning(message))
    if not methods:
        raise ConfigError("no method to evaluate")
    if not sequences and not scenes:
        raise NoImagesError("no homography sequence and no scene to evaluate")
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"settings": asdict(settings), "command": command, "date": started.isoformat(),
                               "sequences": {}, "scenes": {}}
    sections: list[tuple[str, str]] = []
    method_lines = "\n".join(f"- **{m.name}**: {m.description}" for m in methods)
    note_lines = "\n".join(f"- {n}" for n in notes)
    setup = [
        f"- command: `{command}`" if command else "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}; {_versions()}",
        f"- shared settings: detection on a copy with longer edge <= {settings.max_edge} px, "
        f"at most {settings.max_keypoints} keypoints per image (pycolmap-sift: before second orientations, "
        f"so it ends with more), mapping seed {settings.seed}"
        + (f"; settings overridden: {', '.join(settings.overrides)}" if settings.overrides else ""),
        "",
        "Methods:",
        "",
        method_lines,
    ]
    if note_lines:
        setup += ["", "Notes:", "", note_lines]
    sections.append(("Setup", "\n".join(line for line in setup if line is not None)))

    for sequence in sequences:
        sequence = Path(sequence)
        echo(f"homography sequence {sequence.name} ...")
        rows = evaluate_homography(sequence, methods, out_dir / "work" / _safe(sequence.name),
                                   picture_dir=out_dir)
        results["sequences"][sequence.name] = rows
        curves = {r["method"]: (list(MMA_THRESHOLDS), r["mma_curve"]) for r in rows if "mma_curve" in r}
        plot = plot_accuracy_curves(curves, out_dir / f"mma_{_safe(sequence.name)}.png",
                                    title=f"{sequence.name}: pairs 1-k", xlabel="threshold [px]",
                                    ylabel="mean matching accuracy (raw matches)")
        body = [
            f"`{sequence}`, pairs of image 1 with each other image. "
            "keypoints: mean per image; matches, correct (<= 3 px), inliers: mean per pair; mma@t: raw matches "
            "within t px (averaged over pairs); inlier_precision: the method's verified inliers within 3 px; "
            "h_acc@t: fraction of pairs whose H (MAGSAC++ 3 px on the raw matches) has a mean corner error <= t px; "
            "time_s: features + matching.",
            "",
            _table(rows, _HOMOGRAPHY_COLUMNS),
            "Per pair (matches / correct / verified inliers, corner error in px):",
            "",
        ]
        per_pair_rows = []
        for r in rows:
            entry = {"method": r["method"]}
            for p in r.get("per_pair", []):
                ce = p["corner_error"]
                entry[p["pair"]] = f"{p['matches']} / {p['correct']} / {p['inliers']}, " + (
                    f"{ce:.2f}" if math.isfinite(ce) else "fail")
            per_pair_rows.append(entry)
        first = next((r for r in rows if r.get("per_pair")), {})
        pair_columns = ["method"] + [p["pair"] for p in first.get("per_pair", [])]
        body += [markdown_table(per_pair_rows, pair_columns), f"![MMA]({plot.name})", ""]
        body.append(_pictures(rows, out_dir, "Hardest pair, verified inliers green, rejected matches red "
                                              "(at most 300 drawn):"))
        sections.append((f"Homographies: {sequence.name}", "\n".join(body)))

    for scene in scenes:
        scene = Path(scene)
        echo(f"scene {scene.name} ...")
        rows = evaluate_scene(scene, methods, out_dir / "work" / _safe(scene.name), reconstruct=reconstruct,
                              settings=settings, picture_dir=out_dir)
        results["scenes"][scene.name] = rows
        curves = {r["method"]: tuple(r["pose_curve"]) for r in rows if "pose_curve" in r}
        plot = plot_accuracy_curves(curves, out_dir / f"pose_auc_{_safe(scene.name)}.png",
                                    title=f"{scene.name}: relative pose, all pairs",
                                    xlabel="max(rotation, translation) error [deg]", ylabel="fraction of pairs")
        body = [
            f"`{scene}`: relative pose of every image pair from the raw matches (essential matrix, MAGSAC++, "
            "ground-truth K), error = max(rotation, translation direction) in degrees; auc@t as in SuperGlue; "
            f"near_* restricted to the pairs whose ground-truth rotation is <= {NEAR_PAIR_DEG:.0f} degrees "
            "(the others barely overlap); failed_pairs: no pose at all.",
            "",
            _table(rows, _POSE_COLUMNS),
            f"![pose]({plot.name})",
            "",
        ]
        if reconstruct:
            body += [
                "Reconstruction (pycolmap incremental mapping of each method's database, same options; largest "
                "model): rotation errors in degrees, position errors in metres after a least-squares similarity "
                "alignment of the registered camera centres to the ground truth.",
                "",
                _table(rows, _SFM_COLUMNS),
            ]
        body.append(_pictures(rows, out_dir, "A pair about 15 degrees apart, verified inliers green, rejected red (at most 300 drawn):"))
        sections.append((f"Scene: {scene.name}", "\n".join(body)))

    total = time.perf_counter() - t_start
    results["total_time_s"] = total
    sections.append(("Run time", f"{total / 60:.1f} min in total (machine shared with other jobs; timings are "
                                 "indicative)."))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    return write_report(out_dir / "report.md", sections, title="matcher evaluation")
