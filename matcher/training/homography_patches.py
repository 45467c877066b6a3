"""A small, deterministic set of real patches with known correspondences, made by warping photos.

Each source photo is warped by a few random homographies with photometric changes. DoG keypoints are detected in
the source photo only (:func:`matcher.detect.detect_keypoints`); each keypoint's local affine frame (LAF,
:func:`matcher.patches.lafs_from_keypoints`) is mapped into every warped image through the local affine
approximation of the homography at the keypoint (its Jacobian), plus a small random perturbation of the frame
(like the "easy" geometric noise of HPatches), and patches are sampled in both images with
:func:`matcher.patches.extract_patches`, the same code the pipeline uses. A keypoint is one identity (label); its
views are the source patch and every warped patch whose frame lies inside its image. Identities with fewer than
``min_views`` views are dropped.

The photos are scikit-image's bundled samples (``"astronaut"``, ``"camera"``, ...; no download) or image files
(e.g. ``../shared/data/homography/v_churchill/1.ppm``). Train and held-out sets should come from different photos:
see :data:`TRAIN_PHOTOS` and :data:`HELDOUT_PHOTOS`.

Example:
    >>> ps = make_homography_patches(("camera",), max_keypoints=50, seed=0)  # doctest: +SKIP
    >>> ps.patches.shape, ps.labels.shape  # doctest: +SKIP
    (torch.Size([N, 1, 32, 32]), torch.Size([N]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from matcher.detect import DetectionConfig, detect_keypoints
from matcher.images import read_image
from matcher.patches import (
    DEFAULT_MAGNIFICATION,
    PATCH_SIZE,
    extract_patches,
    lafs_from_keypoints,
    lafs_inside_image,
    warp_lafs,
)

__all__ = [
    "HELDOUT_PHOTOS",
    "TRAIN_PHOTOS",
    "PatchSet",
    "load_photo",
    "make_homography_patches",
    "random_homography",
]

#: scikit-image photos used for training (distinct from :data:`HELDOUT_PHOTOS`).
TRAIN_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel")
#: photos used for held-out evaluation; never in :data:`TRAIN_PHOTOS`.
HELDOUT_PHOTOS: tuple[str, ...] = ("camera", "immunohistochemistry", "hubble_deep_field")


@dataclass
class PatchSet:
    """Patches with identity labels.

    Attributes:
        patches: (N, 1, 32, 32) float32 in [0, 1].
        labels: (N,) int64 identity (one keypoint of one source photo); every identity has >= 2 views.
        photo: (N,) int64 index into ``names`` of the photo the identity comes from.
        view: (N,) int64, 0 for the source view, w >= 1 for the w-th warp.
        names: the photos, in the order given.
        magnification: the patch half-width in keypoint sigmas they were cut with, where known (0: not known).
        rays: (N, 3) float32 unit vector from the identity's 3D point to the camera centre of the patch's view
            (camera-track sets; the angle between two views of an identity is that of their rays), NaN where not
            known; None for sets without cameras.
    """

    patches: torch.Tensor
    labels: torch.Tensor
    photo: torch.Tensor
    view: torch.Tensor
    names: tuple[str, ...]
    magnification: float = 0.0
    rays: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_identities(self) -> int:
        """Number of distinct labels."""
        return int(torch.unique(self.labels).numel())


def load_photo(name: str | Path, max_side: int = 640) -> np.ndarray:
    """Load a grey uint8 photo: a scikit-image sample name (``"camera"``) or an image path.

    Images larger than ``max_side`` are downscaled (area interpolation) so the longer side is ``max_side``.
    """
    path = Path(name)
    if path.suffix and path.exists():
        gray = read_image(path.parent, path.name).gray
    else:
        import skimage.data

        loader = getattr(skimage.data, str(name), None)
        if loader is None:
            raise ValueError(f"{name!r} is neither an existing image file nor a skimage.data sample")
        img = np.asarray(loader())
        if img.ndim == 3:
            img = img[..., :3]
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        if img.dtype != np.uint8:
            img = img.astype(np.float64)
            img = (255.0 * (img - img.min()) / max(img.max() - img.min(), 1e-12)).astype(np.uint8)
        gray = img
    h, w = gray.shape
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        gray = cv2.resize(gray, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def random_homography(
    height: int,
    width: int,
    rng: np.random.Generator,
    max_rotation: float = np.deg2rad(25.0),
    scale_range: tuple[float, float] = (0.75, 1.25),
    max_shear: float = 0.15,
    max_perspective: float = 0.3,
    max_shift: float = 0.1,
) -> np.ndarray:
    """A random 3×3 homography about the image centre.

    Rotation in ±``max_rotation``, isotropic log-uniform scale in ``scale_range``, anisotropy/shear up to
    ``max_shear``, a perspective tilt whose strength at the image border is up to ``max_perspective`` (relative
    change of the projective depth), and a shift up to ``max_shift`` of the image size.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    a = rng.uniform(-max_rotation, max_rotation)
    s = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    shear = np.eye(3)
    shear[0, 1] = rng.uniform(-max_shear, max_shear)
    shear[1, 1] = 1.0 + rng.uniform(-max_shear, max_shear)
    persp = np.eye(3)
    half = max(width, height) / 2.0
    persp[2, 0] = rng.uniform(-max_perspective, max_perspective) / half
    persp[2, 1] = rng.uniform(-max_perspective, max_perspective) / half
    shift = np.array(
        [[1, 0, cx + rng.uniform(-max_shift, max_shift) * width], [0, 1, cy + rng.uniform(-max_shift, max_shift) * height], [0, 0, 1]]
    )
    H = shift @ persp @ np.diag([s, s, 1.0]) @ rot @ shear @ to_centre
    return H / H[2, 2]


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-encode as JPEG at a random quality in [30, 90]."""
    quality = int(rng.integers(30, 91))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else img


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gain, bias, gamma, blur and noise on a uint8 image."""
    x = img.astype(np.float32) / 255.0
    x = np.clip(x, 0.0, 1.0) ** np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2))
    x = x + rng.normal(0.0, rng.uniform(0.0, 0.025), x.shape).astype(np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _perturb(A: np.ndarray, c: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Small random rotation (±5°), scale (±5%) and shift (±5% of the half-width) of LAFs, times ``strength``."""
    n = len(c)
    if strength <= 0 or n == 0:
        return A, c
    ang = rng.uniform(-1, 1, n) * np.deg2rad(5.0) * strength
    sc = 1.0 + rng.uniform(-1, 1, n) * 0.05 * strength
    R = np.stack([np.stack([np.cos(ang), -np.sin(ang)], 1), np.stack([np.sin(ang), np.cos(ang)], 1)], 1)
    A2 = np.einsum("nij,njk->nik", A, R) * sc[:, None, None]
    radius = np.sqrt(np.abs(np.linalg.det(A)))
    c2 = c + rng.uniform(-1, 1, (n, 2)) * 0.05 * strength * radius[:, None]
    return A2, c2


def make_homography_patches(
    photos: Sequence[str | Path | np.ndarray] = TRAIN_PHOTOS,
    *,
    n_warps: int = 2,
    max_keypoints: int = 400,
    seed: int = 0,
    magnification: float = DEFAULT_MAGNIFICATION,
    frame_noise: float = 1.0,
    photometric: bool = True,
    min_views: int = 2,
    max_side: int = 640,
    min_scale: float = 1.6,
    jpeg_prob: float = 0.0,
) -> PatchSet:
    """Build a deterministic patch set from photos under random homographies.

    Args:
        photos: skimage sample names, image paths, or (H, W) uint8 arrays.
        n_warps: warped views per photo; an identity has up to ``1 + n_warps`` views.
        max_keypoints: strongest DoG keypoints kept per photo (after dropping those whose frame leaves the photo).
        seed: seed of every random draw (homographies, photometric changes, frame noise).
        magnification: patch half-width in keypoint sigmas (the pipeline's default, 6).
        frame_noise: strength of the random perturbation of each warped view's LAF (0 = exact mapping).
        photometric: apply random gain/bias/gamma/blur/noise to the warped images.
        min_views: drop identities with fewer views.
        max_side: downscale photos so that their longer side is at most this.
        min_scale: drop keypoints with a smaller sigma (tiny blobs are mostly noise at 32×32).
        jpeg_prob: probability that a warped image is also re-encoded as JPEG (quality 30-90), after the
            photometric changes (illumination, blur, noise).

    Returns:
        :class:`PatchSet`; labels are 0..M-1 in photo order, views of one identity are contiguous
        (source view first).
    """
    rng = np.random.default_rng(seed)
    all_patches: list[torch.Tensor] = []
    all_labels: list[np.ndarray] = []
    all_photo: list[np.ndarray] = []
    all_view: list[np.ndarray] = []
    names: list[str] = []
    next_label = 0
    det_cfg = DetectionConfig(max_keypoints=4 * max_keypoints)
    for p_idx, photo in enumerate(photos):
        gray = photo if isinstance(photo, np.ndarray) else load_photo(photo, max_side=max_side)
        names.append(f"array{p_idx}" if isinstance(photo, np.ndarray) else str(photo))
        h, w = gray.shape
        kps = detect_keypoints(gray, det_cfg)
        kps = kps.select(kps.scales >= min_scale)
        lafs_src = lafs_from_keypoints(kps, magnification)[0].double().numpy()  # (N, 2, 3)
        inside = lafs_inside_image(lafs_src, h, w, border=1.0)
        kps = kps.select(np.flatnonzero(inside)[:max_keypoints])
        lafs_src = lafs_src[np.flatnonzero(inside)[:max_keypoints]]
        n = len(kps)
        if n == 0:
            continue
        views_p = [extract_patches(gray, torch.from_numpy(lafs_src).float()[None])]
        views_ok = [np.ones(n, bool)]
        for _ in range(n_warps):
            H = random_homography(h, w, rng)
            warped = cv2.warpPerspective(gray, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            if photometric:
                warped = _photometric(warped, rng)
            if jpeg_prob > 0 and rng.random() < jpeg_prob:
                warped = _jpeg(warped, rng)
            mapped = warp_lafs(H, lafs_src)
            A_new, c_new = _perturb(mapped[:, :, :2], mapped[:, :, 2], rng, frame_noise)
            lafs_w = np.concatenate([A_new, c_new[:, :, None]], 2)
            ok = lafs_inside_image(lafs_w, h, w, border=1.0)
            pw = torch.zeros((n, 1, PATCH_SIZE, PATCH_SIZE), dtype=torch.float32)
            if ok.any():
                pw[ok] = extract_patches(warped, torch.from_numpy(lafs_w[ok]).float()[None])
            views_p.append(pw)
            views_ok.append(ok)
        ok = np.stack(views_ok, 1)  # (n, V)
        keep = ok.sum(1) >= min_views
        kept = np.flatnonzero(keep)
        labels = next_label + np.arange(len(kept))
        next_label += len(kept)
        stacked = torch.stack(views_p, 1)[torch.from_numpy(kept)]  # (m, V, 1, PS, PS)
        okk = ok[kept]
        mask = torch.from_numpy(okk)
        all_patches.append(stacked[mask])
        all_labels.append(np.repeat(labels, okk.sum(1)))
        all_photo.append(np.full(int(okk.sum()), p_idx))
        all_view.append(np.nonzero(okk)[1])
    if not all_patches:
        empty = torch.zeros((0,), dtype=torch.int64)
        return PatchSet(torch.zeros((0, 1, PATCH_SIZE, PATCH_SIZE)), empty, empty.clone(), empty.clone(), tuple(names))
    return PatchSet(
        patches=torch.cat(all_patches, 0).contiguous(),
        labels=torch.from_numpy(np.concatenate(all_labels)).long(),
        photo=torch.from_numpy(np.concatenate(all_photo)).long(),
        view=torch.from_numpy(np.concatenate(all_view)).long(),
        names=tuple(names),
    )
