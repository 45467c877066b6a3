"""Stage contracts on real photos: detection, patches, descriptors, matching, verification, pairs, config."""

from __future__ import annotations

import dataclasses

import zipfile
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, require_shared
from matcher.config import (
    ConfigError, DetectionConfig, MatchingConfig, PipelineConfig, available_presets, config_to_toml, load_config,
    parse_override,
)
from matcher.descriptors import RootSIFT, SDGMNet, build_descriptor, describe_patches, load_sdgmnet
from matcher.detect import detect_keypoints
from matcher.errors import ConfigError, ModelWeightsError, PairsFileError
from matcher.images import read_image, resize_for_detection
from matcher.matching import mutual_nearest_neighbours
from matcher.pairs import exhaustive_pairs, read_pairs_file, sequential_pairs
from matcher.patches import extract_patches, lafs_from_keypoints
from matcher.verify import verify_pair


@pytest.fixture(scope="module")
def photo(entry_p10: Path) -> np.ndarray:
    small, _, _ = resize_for_detection(read_image(entry_p10, "0003.jpg").gray, 800)
    return small


def test_detection_caps_keeps_largest_scales_and_no_duplicate_locations(photo: np.ndarray) -> None:
    everything = detect_keypoints(photo, DetectionConfig(max_keypoints=100_000))
    capped = detect_keypoints(photo, DetectionConfig(max_keypoints=500))
    assert len(capped) == 500 < len(everything)
    assert len(np.unique(everything.xy, axis=0)) == len(everything)  # second orientations removed
    cut = np.sort(everything.scales)[::-1][499]
    assert capped.scales.min() >= cut - 1e-6
    by_response = detect_keypoints(photo, DetectionConfig(max_keypoints=500, selection="response"))
    assert by_response.scores.min() >= np.sort(everything.scores)[::-1][499] - 1e-9
    upright = detect_keypoints(photo, DetectionConfig(max_keypoints=500, upright=True))
    assert np.all(upright.orientations == 0)


@pytest.mark.parametrize("flip", [0, 1])
def test_keypoints_are_mirror_symmetric(photo: np.ndarray, flip: int) -> None:
    """No sub-pixel bias: detections on a mirrored image are the mirrored detections (OpenCV's upscaled first
    octave shifts them by +0.25 px unless enable_precise_upscale is on)."""
    h, w = photo.shape
    k1 = detect_keypoints(photo, DetectionConfig(max_keypoints=100_000))
    k2 = detect_keypoints(cv2.flip(photo, flip), DetectionConfig(max_keypoints=100_000))
    mirrored = k1.xy.copy()
    if flip == 1:
        mirrored[:, 0] = w - 1 - mirrored[:, 0]
    else:
        mirrored[:, 1] = h - 1 - mirrored[:, 1]
    dist = np.linalg.norm(mirrored[:, None] - k2.xy[None], axis=2)
    j, ok = dist.argmin(1), dist.min(1) < 1.0
    assert ok.sum() > 0.8 * len(k1)
    offset = np.median(k2.xy[j[ok]] - mirrored[ok], axis=0)
    assert np.all(np.abs(offset) < 0.02), offset


def test_orientation_turns_with_the_image(photo: np.ndarray) -> None:
    """Rotating the image 90° counter-clockwise on screen adds +90° to our orientations."""
    rotated = cv2.rotate(photo, cv2.ROTATE_90_COUNTERCLOCKWISE)
    k1 = detect_keypoints(photo, DetectionConfig(max_keypoints=800, selection="response"))
    k2 = detect_keypoints(rotated, DetectionConfig(max_keypoints=3000, selection="response"))
    w = photo.shape[1]
    expected = np.stack([k1.xy[:, 1], w - 1 - k1.xy[:, 0]], 1)
    dist = np.linalg.norm(expected[:, None] - k2.xy[None], axis=2)
    j, ok = dist.argmin(1), dist.min(1) < 0.3
    assert ok.sum() > 100
    turn = np.angle(np.exp(1j * (k2.orientations[j[ok]] - k1.orientations[ok])))
    assert abs(np.rad2deg(np.median(turn)) - 90.0) < 1.0
    # ... so the patches of corresponding keypoints look the same.
    p1 = extract_patches(photo, lafs_from_keypoints(k1.select(ok)))
    p2 = extract_patches(rotated, lafs_from_keypoints(k2.select(j[ok])))
    assert (p1 - p2).abs().mean() < 0.06
    flipped = k2.select(j[ok])
    flipped.orientations = -flipped.orientations  # the wrong sign convention gives other patches
    k1_flipped = k1.select(ok)
    k1_flipped.orientations = -k1_flipped.orientations
    p3 = extract_patches(photo, lafs_from_keypoints(k1_flipped))
    p4 = extract_patches(rotated, lafs_from_keypoints(flipped))
    assert (p3 - p4).abs().mean() > 2 * (p1 - p2).abs().mean()


def test_patches_are_32x32_in_unit_range_and_scale_with_magnification(photo: np.ndarray) -> None:
    k = detect_keypoints(photo, DetectionConfig(max_keypoints=64))
    p = extract_patches(photo, lafs_from_keypoints(k))
    assert p.shape == (64, 1, 32, 32) and p.dtype == torch.float32
    assert 0.0 <= p.min() and p.max() <= 1.0
    wide = extract_patches(photo, lafs_from_keypoints(k, magnification=12.0))
    assert not torch.allclose(p, wide)


def test_rootsift_rows_are_unit_and_hellinger(photo: np.ndarray) -> None:
    k = detect_keypoints(photo, DetectionConfig(max_keypoints=300))
    d = RootSIFT().describe(photo, k)
    assert d.shape == (300, 128) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert d.min() >= 0


def test_sdgmnet_batches_do_not_change_descriptors(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    net = SDGMNet().eval()
    k = detect_keypoints(photo, DetectionConfig(max_keypoints=300))
    patches = extract_patches(photo, lafs_from_keypoints(k))
    a = describe_patches(net, patches, batch_size=300)
    b = describe_patches(net, patches, batch_size=64)
    assert a.shape == (300, 128)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(300), atol=1e-5, rtol=0)


def test_sdgmnet_fused_inference_and_bf16_agree_with_the_autograd_forward(photo: np.ndarray) -> None:
    """The in-place FRN+TLU path (no autograd) computes the modules' function; bf16 stays close to it."""
    net, _ = load_sdgmnet("sdgmnet")
    net.eval()
    k = detect_keypoints(photo, DetectionConfig(max_keypoints=300))
    patches = extract_patches(photo, lafs_from_keypoints(k))
    untouched = patches.clone()
    modules = net(patches).detach()  # autograd on: FRN and TLU modules
    fused = describe_patches(net, patches)
    torch.testing.assert_close(fused, modules, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, untouched, atol=0, rtol=0)  # the input is not overwritten
    bf16 = describe_patches(net, patches, bf16=True)
    assert bf16.dtype == torch.float32 and next(net.parameters()).dtype == torch.float32
    assert (bf16 * fused).sum(1).min() > 0.995


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    config = load_config("default", [{"descriptor": {"name": "sdgmnet", "weights": str(tmp_path / "none.pt")}}])
    with pytest.raises(ModelWeightsError, match="none.pt"):
        build_descriptor(config.descriptor)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    config.descriptor.weights = str(bad)
    with pytest.raises(ModelWeightsError, match="bad.pt"):
        build_descriptor(config.descriptor)


def _brute_force_mnn(a: np.ndarray, b: np.ndarray, ratio: float) -> set[tuple[int, int]]:
    dist = np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))
    out = set()
    for i in range(len(a)):
        order = np.argsort(dist[i], kind="stable")
        j = order[0]
        if np.argmin(dist[:, j]) != i:
            continue
        if ratio > 0 and dist[i, j] > ratio * dist[i, order[1]]:
            continue
        out.add((i, int(j)))
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ratio", [0.0, 0.9])
def test_blocked_mnn_equals_brute_force(ratio: float, precision: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((700, 128)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.concatenate([a[:400] + 0.1 * rng.standard_normal((400, 128)), rng.standard_normal((500, 128))])
    b = (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)
    expected = _brute_force_mnn(a, b, ratio)
    for block in (64, 300, 4096):
        m, s = mutual_nearest_neighbours(a, b, MatchingConfig(ratio=ratio, block_size=block, precision=precision))
        assert {tuple(x) for x in m} == expected
        np.testing.assert_allclose(s, np.sum(a[m[:, 0]] * b[m[:, 1]], 1), atol=1e-5)
    assert len(expected) >= 350


def test_bf16_candidates_give_the_float32_matches_on_real_descriptors(entry_p10: Path) -> None:
    """bfloat16 only proposes candidates; float32 decides, so real RootSIFT matches agree to within 0.2 %."""
    images = [resize_for_detection(read_image(entry_p10, n).gray, 1024)[0] for n in ("0003.jpg", "0004.jpg")]
    d1, d2 = (RootSIFT().describe(g, detect_keypoints(g, DetectionConfig(max_keypoints=4096))) for g in images)
    exact, exact_scores = mutual_nearest_neighbours(d1, d2, MatchingConfig(precision="fp32"))
    fast, fast_scores = mutual_nearest_neighbours(d1, d2, MatchingConfig(precision="bf16"))
    assert len(exact) > 1000
    same = {tuple(x) for x in exact} & {tuple(x) for x in fast}
    assert len(same) >= 0.998 * max(len(exact), len(fast))
    exact_score = {tuple(m): s for m, s in zip(exact.tolist(), exact_scores)}
    fast_score = {tuple(m): s for m, s in zip(fast.tolist(), fast_scores)}
    assert max(abs(exact_score[m] - fast_score[m]) for m in same) < 1e-5  # scores are float32 dot products
    with pytest.raises(ConfigError, match="precision"):
        mutual_nearest_neighbours(d1, d2, MatchingConfig(precision="fp8"))


def test_mnn_handles_empty_sets() -> None:
    m, s = mutual_nearest_neighbours(np.zeros((0, 128), np.float32), np.ones((5, 128), np.float32))
    assert m.shape == (0, 2) and s.shape == (0,)


def test_verification_finds_the_homography_of_a_planar_sequence() -> None:
    seq = require_shared("homography", "v_churchill")
    g1 = cv2.imread(str(seq / "1.ppm"), cv2.IMREAD_GRAYSCALE)
    g2 = cv2.imread(str(seq / "2.ppm"), cv2.IMREAD_GRAYSCALE)
    H_gt = np.loadtxt(seq / "H_1_2")
    k1, k2 = (detect_keypoints(g, DetectionConfig(max_keypoints=2000)) for g in (g1, g2))
    d1, d2 = RootSIFT().describe(g1, k1), RootSIFT().describe(g2, k2)
    m, _ = mutual_nearest_neighbours(d1, d2, MatchingConfig(ratio=0.9))
    result = verify_pair(k1.xy[m[:, 0]], k2.xy[m[:, 1]], 1.0)
    assert result.model == "planar" and result.H is not None and result.inliers.sum() > 200
    x = np.c_[k1.xy[m[result.inliers, 0]], np.ones(result.inliers.sum())] @ H_gt.T
    err = np.linalg.norm(x[:, :2] / x[:, 2:] - k2.xy[m[result.inliers, 1]], axis=1)
    assert np.median(err) < 1.5
    # As many random correspondences as survive the ratio test between unrelated photos are not verified.
    for seed, n in enumerate((60, 100, 300, 1000)):
        rng = np.random.default_rng(seed)
        noise = verify_pair(rng.uniform(0, 800, (n, 2)), rng.uniform(0, 800, (n, 2)), 1.0)
        assert noise.model == "none" and noise.inliers.sum() == 0


def test_pairs_strategies(tmp_path: Path) -> None:
    names = ["c.jpg", "a.jpg", "b.jpg", "d.jpg"]
    assert exhaustive_pairs(names) == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("a.jpg", "d.jpg"),
                                       ("b.jpg", "c.jpg"), ("b.jpg", "d.jpg"), ("c.jpg", "d.jpg")]
    assert sequential_pairs(names, 1) == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg"), ("c.jpg", "d.jpg")]
    assert len(sequential_pairs(names, 2)) == 5
    path = tmp_path / "pairs.txt"
    path.write_text("# comment\nd.jpg a.jpg\n\na.jpg d.jpg\nb.jpg c.jpg  # trailing\n")
    assert read_pairs_file(path, names) == [("a.jpg", "d.jpg"), ("b.jpg", "c.jpg")]
    path.write_text("a.jpg b.jpg c.jpg\n")
    with pytest.raises(PairsFileError, match="pairs.txt:1"):
        read_pairs_file(path, names)


def test_config_merges_defaults_preset_and_overrides(tmp_path: Path) -> None:
    assert {"default", "rootsift", "sdgmnet"} <= set(available_presets())
    config = load_config("default", [parse_override("matching.ratio=0.8"), {"detection": {"upright": "true"}}])
    assert config.matching.ratio == 0.8 and config.detection.upright is True
    assert config.images.max_edge == 1600  # from the preset
    path = tmp_path / "saved.toml"
    path.write_text(config_to_toml(config))
    assert load_config(str(path)) == config
    with pytest.raises(ConfigError, match="detection.max_keypoints"):
        load_config("default", [{"detection": {"max_keypoints": "many"}}])
    with pytest.raises(ConfigError, match="unknown section"):
        load_config("default", [{"detector": {"x": 1}}])
    # Presets apply over the dataclass defaults, which are the default preset's but for its keypoint budget and DoG
    # threshold (5,120 at 0.01; the dataclasses keep 4,096 at 0.02, as the rootsift and sdgmnet presets and the hard
    # patch benchmark): "sequential" describes with SDGMNet.
    default = load_config("default")
    assert (default.detection.max_keypoints, default.detection.contrast_threshold) == (5120, 0.01)
    assert (load_config("rootsift").detection.max_keypoints, load_config("sdgmnet").detection.max_keypoints) == (4096, 4096)
    assert PipelineConfig() == dataclasses.replace(default, detection=PipelineConfig().detection)
    assert load_config("sequential").descriptor.name == "sdgmnet" == PipelineConfig().descriptor.name
    assert load_config("rootsift").descriptor.name == "rootsift"


def test_wheel_carries_presets_and_models(tmp_path: Path) -> None:
    """A non-editable install finds pipelines/ and models/ as the data packages matcher._pipelines/_models."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("matcher-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in (REPO / "pipelines").glob("*.toml"):
        assert f"matcher/_pipelines/{preset.name}" in names
    for model in (REPO / "models").glob("*.pt"):
        assert f"matcher/_models/{model.name}" in names
    for module in ("matcher/cli.py", "matcher/losses/__init__.py", "matcher/evaluation/__init__.py",
                   "matcher/training/__init__.py", "matcher/descriptors/__init__.py"):
        assert module in names


def test_cache_fingerprint_leaves_the_config_alone() -> None:
    """Settings that do not change results are left out of the cache fingerprint, without touching the config."""
    from matcher.pipeline import MATCH_SECTIONS, _fingerprint

    config = load_config("rootsift", [parse_override("descriptor.batch_size=64"), parse_override("matching.workers=3")])
    fingerprint = _fingerprint(config, MATCH_SECTIONS)
    assert config.descriptor.batch_size == 64 and "batch_size" in config.descriptor.__dict__
    assert "workers" not in fingerprint and "precision" in fingerprint
    config.matching.workers = 1
    assert _fingerprint(config, MATCH_SECTIONS) == fingerprint
