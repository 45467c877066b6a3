"""Several orientations per keypoint (``detection.max_orientations``): detection, description, storage, matching
(similarity = max over the two keypoints' orientations) and a real database with one keypoint per location."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from matcher.config import DetectionConfig, MatchingConfig, load_config
from matcher.errors import ConfigError
from matcher.descriptors import RootSIFT, describe_orientations
from matcher.detect import detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.matching import mutual_nearest_neighbours
from matcher.storage import FeatureStore, ImageFeatures

DETECTION = DetectionConfig(max_keypoints=1500)


@pytest.fixture(scope="module")
def photo(entry_p10: Path) -> np.ndarray:
    return resize_for_detection(read_image(entry_p10, "0004.jpg").gray, 800)[0]


def test_extra_orientations_only_at_multi_peak_locations(photo: np.ndarray) -> None:
    one = detect_keypoints(photo, DETECTION)
    two = detect_keypoints(photo, dataclasses.replace(DETECTION, max_orientations=2))
    assert one.num_extra == 0 and one.extra_index is None
    for field in ("xy", "scales", "orientations", "scores", "octaves"):  # the keypoints themselves do not change
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
    # OpenCV's detections: a location is multi-peak when it is emitted more than once
    sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=DETECTION.contrast_threshold, enable_precise_upscale=True)
    angles: dict[tuple[float, float], set[float]] = {}
    for k in sift.detect(photo, None):
        angles.setdefault(k.pt, set()).add(k.angle)
    multi = np.array([len(angles[tuple(p)]) > 1 for p in two.xy.astype(float).tolist()])
    assert 0.05 < multi.mean() < 0.4
    assert np.array_equal(np.unique(two.extra_index), np.flatnonzero(multi))  # exactly the multi-peak ones, once
    assert np.all(np.diff(two.extra_index) > 0)
    turn = np.angle(np.exp(1j * (two.extra_orientations - two.orientations[two.extra_index])))
    assert np.all(np.abs(turn) > np.deg2rad(1))
    for i, a in zip(two.extra_index[:50], two.extra_orientations[:50]):
        degrees = float(np.mod(-np.rad2deg(float(a)), 360))  # one of OpenCV's angles at that location
        assert min(abs(degrees - x) for x in angles[tuple(two.xy[i].astype(float))]) < 1e-3
    four = detect_keypoints(photo, dataclasses.replace(DETECTION, max_orientations=4))
    assert four.num_extra > two.num_extra and np.bincount(four.extra_index).max() <= 3
    upright = detect_keypoints(photo, dataclasses.replace(DETECTION, max_orientations=2, upright=True))
    assert upright.num_extra == 0
    # a subset keeps its keypoints' extra rows, renumbered
    sub = two.select(np.arange(len(two))[::-1][:300])
    assert sub.num_extra == int(np.isin(two.extra_index, np.arange(len(two))[::-1][:300]).sum())
    np.testing.assert_array_equal(sub.xy[sub.extra_index], two.xy[len(two) - 1 - sub.extra_index])
    with pytest.raises(ConfigError, match="affine"):
        load_config("default", [{"detection": {"max_orientations": 2, "affine": True}}])


def _reference_similarity(a, extra_a, owner_a, b, extra_b, owner_b) -> np.ndarray:
    """The max-over-orientations similarity, one keypoint pair at a time."""
    rows_a = [[a[i], *extra_a[owner_a == i]] for i in range(len(a))]
    rows_b = [[b[j], *extra_b[owner_b == j]] for j in range(len(b))]
    return np.array([[max(float(x @ y) for x in ra for y in rb) for rb in rows_b] for ra in rows_a])


def _reference_mnn(sim: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    dist = np.sqrt(np.maximum(2 - 2 * sim, 0))
    out = set()
    for i in range(len(sim)):
        order = np.argsort(dist[i], kind="stable")
        j = order[0]
        if np.argmin(dist[:, j]) == i and (ratio == 0 or dist[i, j] <= ratio * dist[i, order[1]]):
            out.add((i, int(j)))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("engine,precision", [("numpy", "fp32"), ("torch", "fp32"), ("torch", "bf16")])
def test_max_over_orientations_matching_equals_a_slow_reference(engine: str, precision: str) -> None:
    rng = np.random.default_rng(3)
    a = _unit(rng.standard_normal((300, 32)))
    owner_a = np.sort(rng.choice(300, 80, replace=True))  # some keypoints with two or three extra rows
    extra_a = _unit(rng.standard_normal((80, 32)))
    # b: noisy copies; for half of the keypoints with extras the *extra* row is the one that matches a's primary
    b = _unit(a + 0.05 * rng.standard_normal(a.shape))
    owner_b = rng.permutation(np.unique(owner_a))[:40]
    extra_b = b[owner_b].copy()
    b[owner_b] = _unit(rng.standard_normal((40, 32)))
    sim = _reference_similarity(a, extra_a, owner_a, b, extra_b, owner_b)
    for ratio in (0.0, 0.9):
        expected = _reference_mnn(sim, ratio)
        for block in (7, 128, 4096):
            config = MatchingConfig(ratio=ratio, block_size=block, engine=engine, precision=precision)
            m, s = mutual_nearest_neighbours(a, b, config, (extra_a, owner_a), (extra_b, owner_b))
            assert {tuple(x) for x in m.tolist()} == expected
            np.testing.assert_allclose(s, sim[m[:, 0], m[:, 1]], atol=1e-5)
    plain, _ = mutual_nearest_neighbours(a, b, MatchingConfig(ratio=0.9, engine=engine, precision=precision))
    assert len(expected) > len(plain) + 20  # the flipped keypoints are found only through their extra rows
    # no extra rows at all: the single-orientation search, unchanged
    none, _ = mutual_nearest_neighbours(a, b, MatchingConfig(ratio=0.9, engine=engine, precision=precision),
                                        (extra_a[:0], owner_a[:0]), None)
    np.testing.assert_array_equal(none, plain)


def test_rotated_copy_matches_more_with_two_orientations(photo: np.ndarray) -> None:
    """A 90-degree turn changes which peak OpenCV names first at a two-peak blob; the max over both finds it."""
    crop = photo[100:500, 200:600]
    turned = np.ascontiguousarray(np.rot90(crop))
    counts = {}
    for k in (1, 2):
        config = dataclasses.replace(DETECTION, max_keypoints=800, max_orientations=k)
        found = []
        for gray in (crop, turned):
            kps = detect_keypoints(gray, config)
            primary, extra = describe_orientations(RootSIFT(), gray, kps)
            found.append((primary, (extra, kps.extra_index) if kps.num_extra else None))
        (d1, e1), (d2, e2) = found
        counts[k] = len(mutual_nearest_neighbours(d1, d2, MatchingConfig(ratio=0.8), e1, e2)[0])
    assert counts[2] > 1.04 * counts[1], counts


def test_features_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 6, 8
    base = dict(keypoints=rng.random((n, 2), np.float32), scales=np.ones(n, np.float32),
                orientations=np.zeros(n, np.float32), scores=np.ones(n, np.float32),
                descriptors=_unit(rng.standard_normal((n, d))), width=10, height=10)
    with FeatureStore(tmp_path / "f.h5", "a") as store:
        store.write("plain", ImageFeatures(**base), "rootsift")
        store.write("two", ImageFeatures(**base, extra_orientations=np.array([1.0, 2.0], np.float32),
                                         extra_index=np.array([1, 4]), extra_descriptors=_unit(np.ones((2, d)))),
                    "rootsift")
    with FeatureStore(tmp_path / "f.h5", "r") as store:
        plain, two = store.read("plain"), store.read("two")
        assert "extra_index" not in store.file["plain"]  # absent = none (older files read the same way)
    assert plain.extras is None and plain.extra_descriptors is None
    np.testing.assert_array_equal(two.extra_index, [1, 4])
    np.testing.assert_array_equal(two.extra_orientations, [1.0, 2.0])
    assert two.extras[0].shape == (2, d) and two.extras[0].dtype == np.float32


def test_pipeline_with_two_orientations_writes_one_keypoint_per_location(tiny: Path, tmp_path: Path) -> None:
    import pycolmap

    from matcher.pipeline import OutputPaths, run_match
    from matcher.stages.cache import FEATURE_SECTIONS, fingerprint

    config = load_config("default", [{"detection": {"max_orientations": 2, "max_keypoints": 600}}])
    db = tmp_path / "out.db"
    report = run_match(tiny, db, config, progress=False)
    with FeatureStore(OutputPaths(db).features, "r") as store:
        features = {name: store.read(name) for name in store.names()}
        assert '"max_orientations": 2' in store.file.attrs["fingerprint"]
    assert sum(f.extras is not None for f in features.values()) == len(features)
    database = pycolmap.Database.open(str(db))
    try:
        for image in database.read_all_images():
            xy = database.read_keypoints(image.image_id)[:, :2]
            f = features[image.name]
            assert len(xy) == len(f) and len(np.unique(xy, axis=0)) == len(xy)  # one keypoint per location
        _, inliers = database.read_two_view_geometry_num_inliers()
        assert sum(n >= 15 for n in inliers) >= 3
    finally:
        database.close()
    # 1 (the default) is not recorded, so files written before the setting stay valid; 2 is
    sections = dict(zip(FEATURE_SECTIONS, (config.images, config.detection, config.patches, config.descriptor)))
    assert "max_orientations" in fingerprint(sections)
    sections["detection"] = dataclasses.replace(config.detection, max_orientations=1)
    assert "max_orientations" not in fingerprint(sections)
    assert report is not None
