"""Metrics (FPR95, AP), the P×K sampler, verification pairs and the homography patch set."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from matcher.training import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    PKSampler,
    average_precision,
    fpr95,
    fpr_at_recall,
    make_homography_patches,
    mean_average_precision,
    verification_pairs,
)
from matcher.patches import homography_jacobian
from matcher.training.homography_patches import random_homography


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------- FPR95
def brute_fpr(labels: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """Sweep the candidate thresholds in decreasing score order; the first reaching the recall defines FPR."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    tp = fp = 0
    for i in order:
        tp += labels[i]
        fp += 1 - labels[i]
        if tp >= recall * n_pos - 1e-9:
            return fp / n_neg
    raise AssertionError


def test_fpr95_test_vector_tu1() -> None:
    assert fpr95(np.array([1, 0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_fpr_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 301)
    scores = rng.normal(labels * 1.5, 1.0)
    for recall in (0.5, 0.95, 1.0):
        assert fpr_at_recall(labels, scores, recall) == pytest.approx(brute_fpr(labels.tolist(), scores.tolist(), recall))


def test_fpr95_extremes_and_errors() -> None:
    labels = np.array([1] * 20 + [0] * 20)
    assert fpr95(labels, np.linspace(1, 0, 40)) == 0.0  # perfect separation
    assert fpr95(labels, np.linspace(0, 1, 40)) == 1.0  # inverted
    # 95% of 20 positives = 19: with 18 on top the 19th comes after every negative; with 19 on top, none.
    assert fpr95(labels, np.r_[np.linspace(1, 0.5, 18), -1.0, -2.0, np.linspace(0.4, 0, 20)]) == 1.0
    assert fpr95(labels, np.r_[np.linspace(1, 0.5, 19), -1.0, np.linspace(0.4, 0, 20)]) == 0.0
    with pytest.raises(ValueError):
        fpr95(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError):
        fpr95(np.array([1, 0]), np.array([np.nan, 0.0]))
    with pytest.raises(ValueError):
        fpr_at_recall(np.array([1, 0]), np.array([1.0, 0.0]), 0.0)


# ------------------------------------------------------------------------------------------------------- AP
def brute_ap(labels: list[int], scores: list[float]) -> float:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / sum(labels)


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(labels, 1.0)
    assert average_precision(labels, scores) == pytest.approx(brute_ap(labels.tolist(), scores.tolist()))


def test_average_precision_known_values() -> None:
    assert average_precision(np.array([1, 1, 0, 0]), np.array([4.0, 3, 2, 1])) == 1.0
    # ranks of the positives: 2 and 3 -> (1/2 + 2/3) / 2
    assert average_precision(np.array([0, 1, 1, 0]), np.array([4.0, 3, 2, 1])) == pytest.approx((0.5 + 2 / 3) / 2)
    groups_l = [np.array([1, 0]), np.array([0, 1]), np.array([0, 0])]
    groups_s = [np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0])]
    assert mean_average_precision(groups_l, groups_s) == pytest.approx((1.0 + 0.5) / 2)  # group without positive skipped
    with pytest.raises(ValueError):
        average_precision(np.zeros(3), np.arange(3.0))


# -------------------------------------------------------------------------------------------------- sampler
def test_pk_sampler_batches_are_valid_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), rng.integers(1, 6, 50))
    sampler = PKSampler(labels, identities_per_batch=8, views_per_identity=3, seed=4)
    eligible = {int(u) for u, c in zip(*np.unique(labels, return_counts=True)) if c >= 3}
    assert sampler.num_skipped == 50 - len(eligible)
    seen: list[int] = []
    batches = list(sampler)
    assert len(batches) == len(eligible) // 8
    for b in batches:
        lab = labels[b]
        assert len(b) == 24 and len(set(b.tolist())) == 24  # distinct samples
        ids = lab[::3]
        assert len(set(ids.tolist())) == 8  # P distinct identities...
        assert (lab.reshape(8, 3) == ids[:, None]).all()  # ...each with K consecutive views
        seen.extend(ids.tolist())
    assert len(set(seen)) == len(seen)  # an identity at most once per epoch
    assert set(seen) <= eligible
    again = list(PKSampler(labels, 8, 3, seed=4))
    assert all((a == b).all() for a, b in zip(batches, again))
    other = list(PKSampler(labels, 8, 3, seed=5))
    assert not all((a == b).all() for a, b in zip(batches, other))
    sampler.set_epoch(1)
    assert not all((a == b).all() for a, b in zip(batches, sampler))


def test_pk_sampler_hardnet_style_and_stream() -> None:
    labels = torch.arange(10).repeat_interleave(2)  # exactly two views each: both are used
    sampler = PKSampler(labels, identities_per_batch=4, views_per_identity=2, seed=0, drop_last=False)
    assert len(sampler) == 3
    stream = list(sampler.batches(7))
    assert len(stream) == 7 and [len(b) for b in stream[:3]] == [8, 8, 4]
    for b in stream:
        lab = labels[torch.from_numpy(b)].reshape(-1, 2)
        assert (lab[:, 0] == lab[:, 1]).all() and len(set(lab[:, 0].tolist())) == len(lab)
    with pytest.raises(ValueError):
        PKSampler(labels, 4, views_per_identity=3)


def test_pk_sampler_wide_share_takes_each_identitys_widest_pair() -> None:
    """With rays, ``wide_share`` of the identities show their two views at the widest angle (checked against a
    loop over every pair); the rest, and a sampler without ``wide_share``, draw as without rays."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(60), rng.integers(2, 7, 60))
    rays = rng.normal(size=(len(labels), 3))
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    rays[labels == 7] = np.nan  # an identity without known rays: always two random views
    widest = {}
    for ident in np.unique(labels):
        rows = np.flatnonzero(labels == ident)
        best = max(((a, b) for a in rows for b in rows if a < b), key=lambda ab: -rays[ab[0]] @ rays[ab[1]])
        widest[int(ident)] = set(best)
    always = PKSampler(labels, 10, 2, seed=3, rays=rays, wide_share=1.0)
    batches = list(always.batches(12))
    for b in batches:
        for a, c in b.reshape(-1, 2):
            if labels[a] != 7:
                assert {a, c} == widest[int(labels[a])]
    half = [tuple(map(int, pair)) for b in PKSampler(labels, 10, 2, seed=3, rays=rays, wide_share=0.5).batches(12)
            for pair in b.reshape(-1, 2)]
    share = np.mean([set(p) == widest[int(labels[p[0]])] for p in half])
    assert 0.4 < share < 0.85  # half of them, plus the random pairs that happen to be the widest
    plain = list(PKSampler(labels, 10, 2, seed=3).batches(12))
    zero = list(PKSampler(labels, 10, 2, seed=3, rays=rays, wide_share=0.0).batches(12))
    assert all((a == b).all() for a, b in zip(plain, zero))
    with pytest.raises(ValueError, match="wide_share needs rays"):
        PKSampler(labels, 10, 3, rays=rays, wide_share=0.5)
    with pytest.raises(ValueError, match="wide_share needs rays"):
        PKSampler(labels, 10, 2, wide_share=0.5)


def test_verification_pairs() -> None:
    labels = np.repeat(np.arange(40), 3)
    groups = labels // 10  # 4 "photos" of 10 identities
    i1, i2, match = verification_pairs(labels, 500, seed=1, groups=groups)
    assert len(i1) == 500 and match.sum() == 250
    assert (labels[i1[match == 1]] == labels[i2[match == 1]]).all() and (i1 != i2).all()
    assert (labels[i1[match == 0]] != labels[i2[match == 0]]).all()
    assert (groups[i1[match == 0]] == groups[i2[match == 0]]).all()  # hard negatives: same photo
    j1, j2, m2 = verification_pairs(labels, 500, seed=1, groups=groups)
    assert (j1 == i1).all() and (j2 == i2).all() and (m2 == match).all()


# ------------------------------------------------------------------------------------------ homography set
def test_homography_jacobian_matches_finite_differences() -> None:
    H = random_homography(400, 600, np.random.default_rng(0))
    pts = np.array([[10.0, 20.0], [300.0, 200.0], [590.0, 390.0]])
    mapped, J = homography_jacobian(H, pts)
    ph = np.c_[pts, np.ones(3)] @ H.T
    np.testing.assert_allclose(mapped, ph[:, :2] / ph[:, 2:], rtol=1e-12)
    h = 1e-4
    for k in range(2):
        d = np.zeros(2)
        d[k] = h
        fwd, _ = homography_jacobian(H, pts + d)
        bwd, _ = homography_jacobian(H, pts - d)
        np.testing.assert_allclose(J[:, :, k], (fwd - bwd) / (2 * h), rtol=1e-6, atol=1e-9)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def test_homography_patch_set_is_deterministic_and_corresponds() -> None:
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    t0 = time.perf_counter()
    ps = make_homography_patches(("camera", "coffee"), max_keypoints=120, seed=3)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20.0  # about 1 s unloaded
    n = len(ps)
    assert ps.patches.shape == (n, 1, 32, 32) and ps.patches.dtype == torch.float32
    assert 0.0 <= float(ps.patches.min()) and float(ps.patches.max()) <= 1.0
    counts = torch.bincount(ps.labels)
    assert int(counts.min()) >= 2 and int(counts.max()) <= 3  # source + up to 2 warps
    assert ps.num_identities > 100 and set(ps.photo.tolist()) == {0, 1}
    assert (ps.view[torch.cat([torch.tensor([0]), torch.nonzero(torch.diff(ps.labels)).reshape(-1) + 1])] == 0).all()
    # Deterministic for a seed, different for another.
    again = make_homography_patches(("camera", "coffee"), max_keypoints=120, seed=3)
    assert torch.equal(again.patches, ps.patches) and torch.equal(again.labels, ps.labels)
    other = make_homography_patches(("camera", "coffee"), max_keypoints=120, seed=4)
    assert other.patches.shape != ps.patches.shape or not torch.equal(other.patches, ps.patches)
    # Views of one identity look alike: the geometry is right (NCC of matching patches >> random pairs).
    i1, i2, match = verification_pairs(ps.labels, 600, seed=0, groups=ps.photo)
    ncc = _ncc(ps.patches[i1], ps.patches[i2])
    pos, neg = ncc[torch.from_numpy(match == 1)], ncc[torch.from_numpy(match == 0)]
    assert float(pos.median()) > 0.6 and float(neg.median()) < 0.45
    assert fpr95(match, ncc.numpy()) < 0.5


def test_homography_patch_set_without_noise_matches_better() -> None:
    """Frame noise and photometric changes make views harder: removing them raises the positive NCC."""
    clean = make_homography_patches(("camera",), max_keypoints=80, seed=1, frame_noise=0.0, photometric=False)
    noisy = make_homography_patches(("camera",), max_keypoints=80, seed=1, frame_noise=2.0, photometric=True)

    def pos_ncc(ps):
        i1, i2, m = verification_pairs(ps.labels, 300, seed=0, positive_fraction=1.0)
        return float(_ncc(ps.patches[i1], ps.patches[i2]).median())

    assert pos_ncc(clean) > pos_ncc(noisy) and pos_ncc(clean) > 0.8
