"""The synthetic street (the scale benchmark's collection): deterministic files, and cameras that agree with the
pixels (textures drawn where the cameras project them, SIFT matches on the ground-truth epipolar geometry)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from matcher.evaluation.synthetic_scene import SyntheticScene, load_scene
from matcher.evaluation.synthetic_street import procedural_texture, render_street, street_collection, street_quads

SIZE = dict(width=320, height=240)


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    """8 views of 320x240, 0.25 m apart, rendered once for the module."""
    cv2.setNumThreads(2)
    return render_street(tmp_path_factory.mktemp("street"), num_images=8, seed=3, **SIZE)


def gray(scene: SyntheticScene, i: int) -> np.ndarray:
    return cv2.imread(str(scene.image_dir / scene.names[i]), cv2.IMREAD_GRAYSCALE)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))


def test_same_seed_same_bytes_and_a_prefix_is_a_shorter_collection(street: SyntheticScene, tmp_path: Path) -> None:
    shorter = render_street(tmp_path / "shorter", num_images=4, seed=3, **SIZE)
    other = render_street(tmp_path / "other", num_images=1, seed=4, **SIZE)
    for name in shorter.names:  # same seed: the same bytes, and the first views of a longer street are these
        assert (street.image_dir / name).read_bytes() == (shorter.image_dir / name).read_bytes()
    assert (street.image_dir / other.names[0]).read_bytes() != (other.image_dir / other.names[0]).read_bytes()
    assert np.allclose(shorter.R, street.R[:4]) and np.allclose(shorter.t, street.t[:4])
    meta, short_meta = (json.loads((s.image_dir.parent / "cameras.json").read_text()) for s in (street, shorter))
    assert meta["images"][:4] == short_meta["images"]
    # a cached collection is loaded, not rendered again
    before = (street.image_dir / street.names[0]).stat().st_mtime_ns
    cached = street_collection(street.image_dir.parent, num_images=8, seed=3, **SIZE)
    assert cached.names == street.names and (street.image_dir / street.names[0]).stat().st_mtime_ns == before


def test_cameras_json(street: SyntheticScene) -> None:
    meta = json.loads((street.image_dir.parent / "cameras.json").read_text())
    assert meta["parameters"]["num_images"] == 8 and len(meta["images"]) == 8
    back = load_scene(street.image_dir.parent)
    assert back.names == street.names == [f"view_{i:04d}.jpg" for i in range(8)]
    assert np.allclose(back.K, street.K) and np.allclose(back.R, street.R) and np.allclose(back.t, street.t)
    for R, t, c in zip(back.R, back.t, back.centres):
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(c, -R.T @ t)
    steps = np.linalg.norm(np.diff(street.centres, axis=0), axis=1)
    assert (steps > 0.2).all() and (steps < 0.4).all()
    normals = np.array([p["normal"] for p in meta["scene"]["planes"]])
    assert np.linalg.matrix_rank(normals, tol=1e-6) == 3  # facade, returns/pillars and pavement: not one plane


def test_textures_are_unique() -> None:
    quads = [q for q in street_quads(0.0, 6.0) if q.name.startswith("facade")][:2]
    a, b = (procedural_texture(q) for q in quads)
    assert a.shape == b.shape and ncc(a, b) < 0.2
    assert np.array_equal(procedural_texture(quads[0]), a)


def block_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, block: int = 16) -> float:
    """Median NCC over the block x block tiles inside ``mask`` (a pillar in front of a panel spoils only some)."""
    scores = []
    for y in range(0, a.shape[0] - block + 1, block):
        for x in range(0, a.shape[1] - block + 1, block):
            if mask[y:y + block, x:x + block].all():
                scores.append(ncc(a[y:y + block, x:x + block], b[y:y + block, x:x + block]))
    return float(np.median(scores)) if len(scores) >= 10 else float("nan")


def test_facade_is_drawn_where_the_cameras_project_it(street: SyntheticScene) -> None:
    """Warp a facade panel's texture with the homography K [R | t] M (cv2.warpPerspective, independent of the
    renderer; the texture reduced 4x first, about the renderer's minification) and compare with the rendered view;
    the same comparison 2 pixels off must be clearly worse."""
    reduce = np.array([[4.0, 0.0, 1.5], [0.0, 4.0, 1.5], [0.0, 0.0, 1.0]])  # reduced texel -> texel (centres)
    checked = 0
    for i in (0, 7):
        img = gray(street, i).astype(np.float32)
        for q in street.quads:
            if not q.name.startswith("facade"):
                continue
            H = street.projection(i) @ np.vstack([q.world_from_texture(), [[0.0, 0.0, 1.0]]]) @ reduce
            tex = cv2.cvtColor(procedural_texture(q, street.seed), cv2.COLOR_RGB2GRAY)
            tex = cv2.resize(tex, (tex.shape[1] // 4, tex.shape[0] // 4), interpolation=cv2.INTER_AREA)
            ref = cv2.warpPerspective(tex, H, (street.width, street.height), flags=cv2.INTER_LINEAR)
            inside = cv2.warpPerspective(np.ones_like(tex), H, (street.width, street.height), flags=cv2.INTER_NEAREST)
            mask = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
            score = block_ncc(img, ref, mask)
            if np.isnan(score):
                continue
            off = [block_ncc(img, np.roll(ref, shift, axis=(0, 1)), mask) for shift in ((0, 2), (2, 0))]
            assert score > 0.8 and score > max(off) + 0.2, (i, q.name, score, off)
            checked += 1
    assert checked >= 2


def sampson(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    h1, h2 = np.c_[x1, np.ones(len(x1))], np.c_[x2, np.ones(len(x2))]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    return np.abs(np.sum(h2 * Fx1, axis=1)) / np.sqrt(Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2)


def test_sift_matches_obey_ground_truth_epipolar_geometry(street: SyntheticScene) -> None:
    sift = cv2.SIFT_create(nfeatures=2000)
    for i, j in ((0, 3), (4, 7)):
        k1, d1 = sift.detectAndCompute(gray(street, i), None)
        k2, d2 = sift.detectAndCompute(gray(street, j), None)
        good = [m for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2) if m.distance < 0.8 * n.distance]
        x1 = np.float64([k1[m.queryIdx].pt for m in good])
        x2 = np.float64([k2[m.trainIdx].pt for m in good])
        _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, 1.0, 0.999)
        inliers = mask.ravel().astype(bool)
        err = sampson(street.fundamental(i, j), x1[inliers], x2[inliers])
        assert inliers.sum() >= 100, (i, j, inliers.sum())
        assert np.median(err) < 0.7 and np.percentile(err, 90) < 1.5, (i, j, np.median(err))
