"""Extreme-viewpoint pairs with known homographies, and their evaluation (``bench/extreme_viewpoint.py``).

A synthetic pair is a photo and the same photo seen under an affine camera tilt: ``H = R(rotation) T(tilt)
R(-longitude)`` with ``T(t) = diag(1, 1/t)`` (the plane shrinks by ``t`` across the tilt direction, as a plane
seen at ``arccos(1/t)`` from its normal), a mild perspective term, scaled to keep the photo's size, centred.
Ground truth is ``H`` (image 1 -> image 2 pixels, pixel centres at integers).

Each pair is matched by each method into a two-image database (the real pipeline or pycolmap); the result is the
homography fitted to the pair's verified inliers (the method's own RANSAC output) and its mean corner error
against the ground truth (:func:`matcher.evaluation.homography.corner_error`). A pair the method does not verify
has an infinite error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "TiltedPair", "tilt_homography", "make_tilted_pair", "write_tilted_pairs", "tilt_band", "TILT_BANDS",
    "hpatches_pairs", "PairOutcome", "evaluate_pairs", "band_table", "pair_table", "SHARED_PHOTOS",
    "run_viewpoint_eval",
]

SHARED_PHOTOS = (  # one photo per shared scene (../shared/data/...), facades, statues, trees, streets
    "scenes/castle-P19/images/0005.jpg",
    "scenes/entry-P10/images/0003.jpg",
    "scenes/buddha/images/00010._c.jpg",
    "scenes/monstree/images/IMG_1027.jpg",
    "scenes/lund/images/03.jpg",
    "scenes/cyprus/images/DSC_6467.JPG",
)

TILT_BANDS = ((1.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 9.0))
"""Tilt bands of the report: [low, high)."""


def tilt_band(tilt: float) -> str:
    """The band name of a tilt, e.g. ``"4-6"``."""
    for low, high in TILT_BANDS:
        if low <= tilt < high:
            return f"{low:g}-{high:g}"
    return f">={TILT_BANDS[-1][1]:g}"


@dataclass
class TiltedPair:
    """One synthetic pair: names of the two image files, the ground truth ``H`` (3, 3), its parameters."""

    name: str
    image1: str
    image2: str
    H: np.ndarray
    tilt: float
    longitude: float
    rotation: float
    width: int
    height: int


def tilt_homography(width: int, height: int, tilt: float, longitude: float, rotation: float,
                    perspective: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """H (3, 3) mapping a (width x height) image to the tilted view, and the view's size (w, h).

    The view keeps the image's area (its longer edge at most 1.25x the image's) and holds all of the warped image.
    ``perspective``: a keystone term (fraction of foreshortening across the image along the tilt direction).
    """
    def rot(deg: float) -> np.ndarray:
        a = math.radians(deg)
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])

    centre = np.array([[1, 0, -(width - 1) / 2], [0, 1, -(height - 1) / 2], [0, 0, 1.0]])
    keystone = np.eye(3)
    keystone[2, 1] = perspective / max(width, height)
    H = rot(rotation) @ np.diag([1.0, 1.0 / tilt, 1.0]) @ keystone @ rot(-longitude) @ centre
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    warped = cv2.perspectiveTransform(corners[None], H)[0]
    span = warped.max(0) - warped.min(0)
    scale = min(math.sqrt(width * height / max(span[0] * span[1], 1.0)), 1.25 * max(width, height) / span.max())
    H = np.diag([scale, scale, 1.0]) @ H
    warped = cv2.perspectiveTransform(corners[None], H)[0]
    H = np.array([[1, 0, -warped[:, 0].min()], [0, 1, -warped[:, 1].min()], [0, 0, 1.0]]) @ H
    size = np.ceil(warped.max(0) - warped.min(0)).astype(int) + 1
    return H / H[2, 2], (int(size[0]), int(size[1]))


def make_tilted_pair(gray: np.ndarray, tilt: float, longitude: float, rotation: float,
                     perspective: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(view (h, w) uint8, H (3, 3)): ``gray`` seen under the tilt, warped with anti-aliasing (INTER_AREA-like:
    the image is blurred along the compressed direction first)."""
    h, w = gray.shape
    H, size = tilt_homography(w, h, tilt, longitude, rotation, perspective)
    # Anti-aliasing as ASIFT's: the tilt direction shrinks by c = scale / tilt (the rest of H scales by
    # scale = sqrt(det * tilt)); blur it by 0.8 sqrt(1/c^2 - 1) first, in a frame turned by the longitude (cv2's
    # rotation by the longitude is R(-longitude), the rotation H applies before compressing y).
    shrink = math.sqrt(abs(np.linalg.det(H[:2, :2] / H[2, 2])) / tilt)
    sigma = 0.8 * math.sqrt(max(1.0 / shrink**2 - 1.0, 0.0))
    source = gray
    if sigma > 0.3:
        rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), longitude, 1.0)
        back = cv2.invertAffineTransform(rot)
        turned = cv2.warpAffine(gray, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        turned = cv2.GaussianBlur(turned, (0, 0), sigmaX=1e-6, sigmaY=sigma)
        source = cv2.warpAffine(turned, back, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    view = cv2.warpPerspective(source, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return view, H


def write_tilted_pairs(photos: list[Path], out_dir: Path, tilts: list[float], seed: int = 0,
                       max_edge: int = 800) -> list[TiltedPair]:
    """For every photo and tilt: a folder ``out_dir/<photo>_t<tilt>`` holding ``1.png`` (the photo, longer
    edge ``max_edge``) and ``2.png`` (its tilted view) with random longitude, in-plane rotation and a mild
    perspective (seeded). Returns the pairs with their ground truth."""
    rng = np.random.default_rng(seed)
    pairs = []
    for photo in photos:
        gray = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise FileNotFoundError(f"{photo}: cannot read image")
        s = max_edge / max(gray.shape)
        if s < 1:
            gray = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        for tilt in tilts:
            longitude, rotation = float(rng.uniform(0, 180)), float(rng.uniform(-180, 180))
            perspective = float(rng.uniform(-0.2, 0.2))
            view, H = make_tilted_pair(gray, tilt, longitude, rotation, perspective)
            name = f"{photo.parent.parent.name}-{photo.stem}_t{tilt:g}"
            folder = Path(out_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / "1.png"), gray)
            cv2.imwrite(str(folder / "2.png"), view)
            np.savetxt(folder / "H_1_2", H)
            pairs.append(TiltedPair(name, "1.png", "2.png", H, tilt, longitude, rotation, gray.shape[1], gray.shape[0]))
    return pairs


def hpatches_pairs(folder: Path) -> list[TiltedPair]:
    """The pairs (1, k) of an HPatches sequence (e.g. ``homography/v_churchill``) as :class:`TiltedPair` (tilt
    unknown: 0), each copied into a two-image folder by :func:`evaluate_pairs`."""
    from matcher.evaluation.homography import load_hpatches_sequence

    images, homographies = load_hpatches_sequence(folder)
    first = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE)
    return [TiltedPair(f"{Path(folder).name}-1-{k}", str(images[0]), str(images[k - 1]), H, 0.0, 0.0, 0.0,
                       first.shape[1], first.shape[0]) for k, H in homographies.items()]


@dataclass
class PairOutcome:
    """One method on one pair: ``error`` mean corner error (px; inf when unverified), ``seconds`` features +
    matching, ``step`` the on-demand step that verified it (0: the normal pass or none), verified ``inliers``."""

    pair: str
    tilt: float
    method: str
    error: float
    seconds: float
    step: int
    inliers: int


def _pair_folder(pair: TiltedPair, root: Path) -> Path:
    """A folder holding only the pair's two images (``1.<ext>``, ``2.<ext>``)."""
    import shutil

    folder = Path(root) / pair.name
    folder.mkdir(parents=True, exist_ok=True)
    for index, source in ((1, pair.image1), (2, pair.image2)):
        source = Path(source) if Path(source).is_absolute() or Path(source).exists() else Path(root) / pair.name / source
        target = folder / f"{index}{source.suffix}"
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    return folder


def evaluate_pairs(pairs: list[TiltedPair], methods: list, work_dir: Path, images_root: Path | None = None,
                   echo=None) -> list[PairOutcome]:  # noqa: ANN001
    """Run every method (:class:`matcher.evaluation.methods.Method`) on every pair, in a two-image folder each.

    The homography is fitted (MAGSAC++, 3 px, seed 0) to the method's own verified inliers; a pair it does not
    verify (or with fewer than 4 inliers) has an infinite corner error.
    """
    from matcher.evaluation.homography import corner_error
    from matcher.evaluation.methods import PairResult  # noqa: F401 (the methods' result type)

    outcomes = []
    for pair in pairs:
        folder = _pair_folder(pair, Path(images_root) if images_root else Path(work_dir) / "pairs")
        names = sorted(p.name for p in folder.iterdir() if p.stem in ("1", "2"))
        for method in methods:
            run = method.run(folder, [(names[0], names[1])], Path(work_dir) / "runs" / pair.name / method.name)
            xy1, xy2, inliers = run.matched_points(names[0], names[1])
            H = None
            if inliers.sum() >= 4:
                cv2.setRNGSeed(0)
                H, _ = cv2.findHomography(xy1[inliers], xy2[inliers], cv2.USAC_MAGSAC, 3.0, maxIters=10000,
                                          confidence=0.9999)
            error = corner_error(H, pair.H, pair.width, pair.height)
            step = _solved_step(run.database, names[0], names[1])
            outcome = PairOutcome(pair.name, pair.tilt, method.name, error, run.timings.get("features+matching", 0.0),
                                  step, int(inliers.sum()))
            outcomes.append(outcome)
            if echo is not None:
                echo(f"{pair.name} {method.name}: corner error {error:.2f} px, {outcome.inliers} inliers, "
                     f"step {step}, {outcome.seconds:.1f} s")
    return outcomes


def _solved_step(database: Path, name1: str, name2: str) -> int:
    """The on-demand step that solved the pair in the run that wrote ``database`` (0: none, or no on-demand)."""
    from matcher.on_demand import views_path
    from matcher.storage import ViewStore

    path = views_path(Path(database).with_name(Path(database).stem + ".matches.h5"))
    if not path.exists():
        return 0
    with ViewStore(path, "r") as views:
        return views.solved_step(name1, name2)


def band_table(outcomes: list[PairOutcome], threshold: float = 5.0) -> list[list[str]]:
    """Rows ``[band, method, pairs, acc@threshold, median s/pair, solved by step]`` per tilt band and method
    (tilt 0, HPatches pairs, as band ``hpatches``)."""
    rows = []
    bands = sorted({("hpatches" if o.tilt == 0 else tilt_band(o.tilt)) for o in outcomes},
                   key=lambda b: (b == "hpatches", b))
    methods = list(dict.fromkeys(o.method for o in outcomes))
    for band in bands:
        for method in methods:
            mine = [o for o in outcomes if o.method == method and ("hpatches" if o.tilt == 0 else tilt_band(o.tilt)) == band]
            if not mine:
                continue
            accuracy = float(np.mean([o.error <= threshold for o in mine]))
            steps = {}
            for o in mine:
                if o.error <= threshold:
                    key = f"step {o.step}" if o.step else "normal"
                    steps[key] = steps.get(key, 0) + 1
            solved = ", ".join(f"{k}: {v}" for k, v in sorted(steps.items())) or "-"
            rows.append([band, method, str(len(mine)), f"{accuracy:.2f}",
                         f"{float(np.median([o.seconds for o in mine])):.1f}", solved])
    return rows


def pair_table(outcomes: list[PairOutcome]) -> list[list[str]]:
    """Rows ``[pair, tilt, method, corner error, inliers, step, s]``."""
    return [[o.pair, f"{o.tilt:g}", o.method, f"{o.error:.2f}" if math.isfinite(o.error) else "inf", str(o.inliers),
             str(o.step), f"{o.seconds:.1f}"] for o in outcomes]


def run_viewpoint_eval(data_root: Path, out_dir: Path, methods: list, tilts: list[float], photos: int = 4,
                       seed: int = 0, hpatches: bool = True, echo=None) -> tuple[Path, list[PairOutcome]]:  # noqa: ANN001
    """The extreme-viewpoint benchmark: tilted pairs of the first ``photos`` of :data:`SHARED_PHOTOS` under
    ``data_root`` (plus ``homography/v_churchill`` when ``hpatches``), every method on every pair; writes
    ``out_dir/report.md`` (per tilt band and per pair) and ``results.json``. Returns (report path, outcomes)."""
    import json
    import time
    from dataclasses import asdict

    from matcher.evaluation.report import markdown_grid

    paths = [Path(data_root) / p for p in SHARED_PHOTOS if (Path(data_root) / p).is_file()][:photos]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pairs = write_tilted_pairs(paths, out_dir / "pairs", tilts, seed=seed)
    outcomes = evaluate_pairs(pairs, methods, out_dir, images_root=out_dir / "pairs", echo=echo)
    churchill = Path(data_root) / "homography" / "v_churchill"
    if hpatches and churchill.is_dir():
        outcomes += evaluate_pairs(hpatches_pairs(churchill), methods, out_dir, echo=echo)
    minutes = (time.perf_counter() - t0) / 60
    report = "\n\n".join([
        "# Extreme viewpoint",
        f"{len(pairs)} synthetic pairs: {len(paths)} shared photos ({', '.join(p.parent.parent.name for p in paths)}), "
        f"longer edge 800 px, each under tilts {', '.join(f'{t:g}' for t in tilts)} with random longitude, "
        f"in-plane rotation and a mild perspective (seed {seed})"
        + (", and v_churchill 1-k" if hpatches and churchill.is_dir() else "") + f"; {minutes:.1f} min in all.",
        "acc@5px: fraction of pairs whose homography, fitted to the method's verified inliers, has a mean corner "
        "error <= 5 px. s/pair: the method's features + matching (+ on demand) time for the two-image run. "
        "solved by: for the pairs within 5 px, the pass that verified them (normal, or the on-demand step).",
        markdown_grid(["tilt band", "method", "pairs", "acc@5px", "median s/pair", "solved by"], band_table(outcomes)),
        markdown_grid(["pair", "tilt", "method", "corner err px", "inliers", "step", "s"], pair_table(outcomes)),
    ])
    path = out_dir / "report.md"
    path.write_text(report + "\n")
    (out_dir / "results.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return path, outcomes
