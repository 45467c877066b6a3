"""The synthetic demo scene (matcher.evaluation.synthetic_scene): deterministic files, cameras that agree with the pixels, and a scene SfM can reconstruct."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from matcher.evaluation.synthetic_scene import SyntheticScene, compare_to_scene, load_scene, quad_texture, render_demo_scene

pycolmap = pytest.importorskip("pycolmap")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    """The default demo scene (10 views of 1024x768), rendered once for the module."""
    cv2.setNumThreads(2)
    return render_demo_scene(tmp_path_factory.mktemp("demo"), seed=0)


def gray(scene: SyntheticScene, i: int) -> np.ndarray:
    return cv2.imread(str(scene.image_dir / scene.names[i]), cv2.IMREAD_GRAYSCALE).astype(np.float32)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))


def sampson(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of correspondences x1 (M, 2) -> x2 (M, 2) under x2^T F x1 = 0."""
    h1, h2 = np.c_[x1, np.ones(len(x1))], np.c_[x2, np.ones(len(x2))]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = np.sum(h2 * Fx1, axis=1) ** 2
    return np.sqrt(num / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2))


def facing_box_faces(scene: SyntheticScene, i: int) -> list:
    """Faces of the front box seen from their textured side by view i (nothing stands in front of that box)."""
    faces = []
    for q in scene.quads:
        inward = np.cross(q.axis_u, q.axis_v)  # texture not mirrored when looking along +inward
        if q.name.startswith("box_") and inward @ (np.asarray(q.origin) - scene.centres[i]) > 0:
            x, depth = scene.project(i, q.corners())
            if (depth > 0).all() and (x >= 0).all() and (x[:, 0] < scene.width - 1).all() \
                    and (x[:, 1] < scene.height - 1).all():
                faces.append(q)
    return faces


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = dict(num_images=3, width=512, height=384)
    a = render_demo_scene(tmp_path / "a", seed=7, **kwargs)
    render_demo_scene(tmp_path / "b", seed=7, **kwargs)
    render_demo_scene(tmp_path / "c", seed=8, **kwargs)
    for name in a.names:
        same = (tmp_path / "a" / "images" / name).read_bytes()
        assert same == (tmp_path / "b" / "images" / name).read_bytes()
        assert same != (tmp_path / "c" / "images" / name).read_bytes()
    assert (tmp_path / "a" / "cameras.json").read_bytes() == (tmp_path / "b" / "cameras.json").read_bytes()


def test_files_and_cameras_json(scene: SyntheticScene) -> None:
    out = scene.image_dir.parent
    meta = json.loads((out / "cameras.json").read_text())
    assert meta["width"] == 1024 and meta["height"] == 768 and len(meta["images"]) == 10
    assert [m["name"] for m in meta["images"]] == [f"view_{i:02d}.jpg" for i in range(10)] == scene.names
    K = np.array(meta["K"])
    assert K.shape == (3, 3) and np.allclose(K[:2, 2], [(1024 - 1) / 2, (768 - 1) / 2])
    assert 0.9 * 1024 <= K[0, 0] <= 1.2 * 1024 and K[0, 0] == K[1, 1]
    for m, i in zip(meta["images"], range(10)):
        img = cv2.imread(str(scene.image_dir / m["name"]))
        assert img is not None and img.shape == (768, 1024, 3)
        R, t, c = np.array(m["R"]), np.array(m["t"]), np.array(m["centre"])
        assert R.shape == (3, 3) and t.shape == (3,) and c.shape == (3,) and np.array(m["K"]).shape == (3, 3)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(c, -R.T @ t) and np.allclose(R, scene.R[i]) and np.allclose(t, scene.t[i])
    planes = meta["scene"]["planes"]
    normals = np.array([p["normal"] for p in planes])
    assert len(planes) >= 3 and np.linalg.matrix_rank(normals, tol=1e-6) == 3  # not one plane, not a prism
    back = load_scene(out)
    assert back.names == scene.names and np.allclose(back.K, scene.K) and np.allclose(back.R, scene.R)
    assert np.allclose(back.t, scene.t) and np.allclose(back.centres, scene.centres) and back.quads == scene.quads
    # neighbouring views: a real baseline, and the views still look at the same place
    baselines = np.linalg.norm(np.diff(scene.centres, axis=0), axis=1)
    assert (baselines > 0.3).all() and (baselines < 1.0).all()


def test_texture_is_drawn_where_the_cameras_project_it(scene: SyntheticScene) -> None:
    """Warp each visible face's texture with the homography K [R | t] M (cv2.warpPerspective, independent of
    the renderer) and check that it lines up with the rendered image to a fraction of a pixel."""
    checked = 0
    for i in (0, 5, 9):
        img = gray(scene, i)
        for q in facing_box_faces(scene, i):
            tex = cv2.cvtColor(quad_texture(q), cv2.COLOR_RGB2GRAY)
            P = scene.projection(i)
            H = P @ np.vstack([q.world_from_texture(), [[0.0, 0.0, 1.0]]])  # texels -> OpenCV pixels
            ref = cv2.warpPerspective(tex, H, (scene.width, scene.height), flags=cv2.INTER_LINEAR)
            inside = cv2.warpPerspective(np.ones_like(tex), H, (scene.width, scene.height), flags=cv2.INTER_NEAREST)
            mask = cv2.erode(inside, np.ones((13, 13), np.uint8)) > 0
            if mask.sum() < 5000:
                continue
            rows, cols = np.nonzero(mask)
            scores = np.zeros((5, 5))
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    scores[dy + 2, dx + 2] = ncc(img[rows + dy, cols + dx], ref[rows, cols])
            assert scores[2, 2] == scores.max() and scores[2, 2] > 0.9, (q.name, i, scores)
            # sub-pixel peak from a parabola through the centre row / column: a half-pixel convention error
            # (COLMAP vs OpenCV) would put it near +-0.5
            offsets = []
            for a, b, c in ((scores[2, 1], scores[2, 2], scores[2, 3]), (scores[1, 2], scores[2, 2], scores[3, 2])):
                offsets.append(round(0.5 * (a - c) / (a - 2 * b + c), 3))
                assert abs(offsets[-1]) < 0.15, (q.name, i, offsets)
            print(f"\nview {i} {q.name}: NCC {scores[2, 2]:.3f}, peak offset {offsets}")
            checked += 1
    assert checked >= 6


def test_points_look_the_same_in_two_views(scene: SyntheticScene) -> None:
    """3D points on the front box project to pixels whose 11x11 neighbourhoods match across views, once view j
    is mapped into view i by the face's plane-induced homography (built from the cameras alone)."""
    rng = np.random.default_rng(0)
    r, size = 5, (11, 11)
    for i, j in ((0, 1), (4, 5), (7, 9)):
        gi, gj = gray(scene, i), gray(scene, j)
        good, shifted = [], []
        for q in set(facing_box_faces(scene, i)) & set(facing_box_faces(scene, j)):
            M = np.vstack([q.world_from_texture(), [[0.0, 0.0, 1.0]]])
            H_ij = scene.projection(j) @ M @ np.linalg.inv(scene.projection(i) @ M)  # view i px -> view j px
            gj_in_i = cv2.warpPerspective(gj, H_ij, (scene.width, scene.height),
                                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            ab = rng.uniform(0.1, 0.9, (60, 2))
            X = np.asarray(q.origin) + ab[:, :1] * np.asarray(q.axis_u) + ab[:, 1:] * np.asarray(q.axis_v)
            xi, _ = scene.project(i, X)
            xj, _ = scene.project(j, X)
            assert np.allclose(cv2.perspectiveTransform(xi[None], H_ij)[0], xj, atol=1e-6)
            for x in xi:  # sub-pixel patches centred on the exact projections
                patch = cv2.getRectSubPix(gi, size, tuple(x))
                good.append(ncc(patch, cv2.getRectSubPix(gj_in_i, size, tuple(x))))
                shifted.append(ncc(patch, cv2.getRectSubPix(gj_in_i, size, tuple(x + [1.0, -1.0]))))
        print(f"\nviews {i},{j}: {len(good)} points, NCC median {np.median(good):.3f} "
              f"p10 {np.percentile(good, 10):.3f}; 1.4 px off: median {np.median(shifted):.3f}")
        assert len(good) >= 100
        assert np.median(good) > 0.95 and np.percentile(good, 10) > 0.85, (i, j, np.median(good))
        assert np.median(shifted) < 0.9, (i, j, np.median(shifted))  # detail at the pixel level


@pytest.mark.parametrize("pair", [(0, 1), (4, 5), (8, 9)])
def test_sift_matches_obey_ground_truth_epipolar_geometry(scene: SyntheticScene, pair: tuple[int, int]) -> None:
    i, j = pair
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(gray(scene, i).astype(np.uint8), None)
    k2, d2 = sift.detectAndCompute(gray(scene, j).astype(np.uint8), None)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, n in knn if m.distance < 0.8 * n.distance]
    x1 = np.float64([k1[m.queryIdx].pt for m in good])
    x2 = np.float64([k2[m.trainIdx].pt for m in good])
    _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, 1.0, 0.999)
    inliers = mask.ravel().astype(bool)
    err = sampson(scene.fundamental(i, j), x1[inliers], x2[inliers])
    print(f"\nSIFT {i}-{j}: {len(good)} ratio-test matches, {inliers.sum()} RANSAC inliers, ground-truth Sampson "
          f"error median {np.median(err):.3f} px, p90 {np.percentile(err, 90):.3f} px")
    assert inliers.sum() >= 200
    assert np.median(err) < 1.5 and np.percentile(err, 90) < 1.5, (np.median(err), np.percentile(err, 90))


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with dst ~ s R src + t (Umeyama); src, dst (N, 3)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (a ** 2).sum(1).mean()
    return s, R, md - s * R @ ms


def test_pycolmap_reconstructs_every_view(scene: SyntheticScene, tmp_path: Path) -> None:
    db = tmp_path / "database.db"
    ext = pycolmap.FeatureExtractionOptions(max_image_size=1024, num_threads=2)
    ext.sift.max_num_features = 2048
    pycolmap.extract_features(db, scene.image_dir, camera_mode=pycolmap.CameraMode.SINGLE,
                              extraction_options=ext, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(db, matching_options=pycolmap.FeatureMatchingOptions(num_threads=2),
                              device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions(num_threads=2, random_seed=0, min_model_size=3)
    recs = pycolmap.incremental_mapping(db, scene.image_dir, tmp_path / "sparse", options=options)
    assert len(recs) >= 1
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    assert rec.num_reg_images() == len(scene.names)
    assert rec.compute_mean_reprojection_error() < 1.0
    assert rec.num_points3D() > 1000

    # poses against the ground truth, after a similarity alignment of the camera centres
    by_name = {im.name: im for im in rec.images.values()}
    ims = [by_name[n] for n in scene.names]
    centres = np.array([im.projection_center() for im in ims])
    s, Ra, ta = similarity(centres, scene.centres)
    centre_err = np.linalg.norm(s * centres @ Ra.T + ta - scene.centres, axis=1)
    rot_err = []
    for k, im in enumerate(ims):
        R_est = im.cam_from_world().rotation.matrix() @ Ra.T
        cos = (np.trace(R_est @ scene.R[k].T) - 1) / 2
        rot_err.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    focal = rec.cameras[ims[0].camera_id].mean_focal_length()
    print(f"\npycolmap: {rec.num_reg_images()}/{len(scene.names)} registered, {rec.num_points3D()} points, "
          f"reprojection {rec.compute_mean_reprojection_error():.3f} px, track {rec.compute_mean_track_length():.2f}, "
          f"focal {focal:.1f} px (true {scene.K[0, 0]:.1f}), max rotation error {max(rot_err):.3f} deg, "
          f"max centre error {1000 * centre_err.max():.1f} mm")
    assert max(rot_err) < 0.5 and centre_err.max() < 0.05
    # the package's comparison (what `matcher demo` prints) agrees with this independent one
    comparison = compare_to_scene(rec, scene)
    assert comparison.names == scene.names
    assert np.allclose(np.sort(comparison.position_m), np.sort(centre_err), atol=1e-6)
    assert comparison.rotation_deg.max() < 0.5 and "10 cameras" in comparison.format()
    assert abs(focal / scene.K[0, 0] - 1) < 0.02


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "matcher.evaluation.synthetic_scene", str(out), "--num-images", "2",
                          "--width", "320", "--height", "240"], capture_output=True, text=True, check=True)
    assert str(out) in res.stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == ["view_00.jpg", "view_01.jpg"]
    assert len(json.loads((out / "cameras.json").read_text())["images"]) == 2
