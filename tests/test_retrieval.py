"""Retrieval pairs (``match --retrieval K``) on entry-P10 (10 real photos, 640 px, 1024 RootSIFT keypoints), GPS
pairs (``--gps K``) on lund's EXIF."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner

from conftest import require_shared

from matcher.cli import _overrides, match_command
from matcher.config import PairsConfig, load_config
from matcher.errors import ConfigError
from matcher.gps import gps_pairs, gps_position
from matcher.pairs import exhaustive_pairs, make_pairs, sequential_pairs
from matcher.retrieval import retrieval_pairs, top_k_neighbours
from matcher.storage import FeatureStore

FAST = ["--max-edge", "640", "--max-keypoints", "1024", "--descriptor", "rootsift", "-q"]
K = 3


def _pairs_in(db: Path) -> set[tuple[str, str]]:
    with pycolmap.Database.open(db) as database:
        names = {im.image_id: im.name for im in database.read_all_images()}
        pair_ids, _ = database.read_all_matches()
        return {tuple(sorted((names[a], names[b]))) for a, b in map(pycolmap.pair_id_to_image_pair, pair_ids)}


@pytest.fixture(scope="module")
def exhaustive_run(entry_p10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exhaustive database of entry-P10 (its features.h5 sits beside it)."""
    db = tmp_path_factory.mktemp("retrieval") / "exhaustive.db"
    result = CliRunner().invoke(match_command, [str(entry_p10), "--out", str(db), *FAST])
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture(scope="module")
def names(entry_p10: Path) -> list[str]:
    return sorted(p.name for p in entry_p10.glob("*.jpg"))


def _compute(db: Path, names: list[str], k: int) -> list[tuple[str, str]]:
    with FeatureStore(db.with_name(db.stem + ".features.h5"), "r") as store:
        return retrieval_pairs(names, lambda n: store.read(n).descriptors, k)


@functools.lru_cache
def _cached(db: Path, names: tuple[str, ...], k: int) -> tuple[tuple[str, str], ...]:
    return tuple(_compute(db, list(names), k))


def _retrieve(db: Path, names: list[str], k: int) -> list[tuple[str, str]]:
    """Retrieval pairs from the run's features.h5 (computed once per k in this module)."""
    return list(_cached(db, tuple(names), k))


def test_retrieval_pairs_are_few_deterministic_and_include_the_true_neighbours(
    exhaustive_run: Path, names: list[str]
) -> None:
    pairs = _retrieve(exhaustive_run, names, K)
    assert set(pairs) <= set(exhaustive_pairs(names)) == _pairs_in(exhaustive_run)
    assert len(pairs) <= len(names) * K < len(exhaustive_pairs(names))
    assert pairs == sorted(set(pairs)) and all(a < b for a, b in pairs)
    # entry-P10 is a walk along a facade: each photo's true neighbours are the next ones in name order
    assert set(sequential_pairs(names, 1)) <= set(pairs)
    # every image retrieves K others
    for name in names:
        assert sum(name in p for p in pairs) >= K
    assert _compute(exhaustive_run, names, K) == pairs  # recomputed: same inputs, same codebook, VLAD and pairs


def test_retrieved_pairs_are_the_strongly_matching_ones(exhaustive_run: Path, names: list[str]) -> None:
    """Each image's best partner (most inliers in the exhaustive run) is retrieved, and retrieved pairs match well.

    (With K = 3 of 9 others, the >= 95 % recall of the issue cannot hold here: entry-P10 has 39 pairs with >= 50
    inliers, up to 9 per image; bench/retrieval.py measures it on the larger scenes.)
    """
    with pycolmap.Database.open(exhaustive_run) as database:
        ids = {im.image_id: im.name for im in database.read_all_images()}
        pair_ids, geometries = database.read_two_view_geometries()
        inliers = {
            tuple(sorted((ids[a], ids[b]))): len(g.inlier_matches)
            for (a, b), g in zip(map(pycolmap.pair_id_to_image_pair, pair_ids), geometries)
        }
    retrieved = set(_retrieve(exhaustive_run, names, K))
    for name in names:
        best = max((p for p in inliers if name in p), key=lambda p: (inliers[p], p))
        assert best in retrieved, (name, best)
    assert sum(inliers.get(p, 0) >= 50 for p in retrieved) >= 0.9 * len(retrieved)


def test_match_with_retrieval_writes_those_pairs_and_reconstructs(
    entry_p10: Path, exhaustive_run: Path, names: list[str], tmp_path: Path
) -> None:
    db = tmp_path / "retrieval.db"
    result = CliRunner().invoke(
        match_command, [str(entry_p10), "--out", str(db), "--retrieval", str(K), "--reconstruct", str(tmp_path / "sparse"),
                        *FAST]
    )
    assert result.exit_code == 0, result.output
    assert _pairs_in(db) == set(_retrieve(exhaustive_run, names, K))
    sparse = tmp_path / "sparse"
    model = pycolmap.Reconstruction(sparse if (sparse / "images.bin").is_file() else sparse / "0")  # largest model
    assert model.num_reg_images() == len(names)


def test_retrieval_combines_with_overlap(exhaustive_run: Path, names: list[str]) -> None:
    """``--retrieval 1 --overlap 2``: the union of both; ``--retrieval 1`` alone: retrieval pairs only."""
    features = exhaustive_run.with_name(exhaustive_run.stem + ".features.h5")
    with FeatureStore(features, "r") as store:
        def pairs_for(**flags: int) -> list[tuple[str, str]]:
            config = load_config("default", _overrides(**flags))
            return make_pairs(config.pairs, names, descriptors=lambda n: store.read(n).descriptors)

        assert set(pairs_for(retrieval=1, overlap=2)) == set(_retrieve(exhaustive_run, names, 1)) | set(
            sequential_pairs(names, 2))
        assert pairs_for(retrieval=1) == _retrieve(exhaustive_run, names, 1)


def test_top_k_is_blocked_exact_and_never_self() -> None:
    rng = np.random.default_rng(0)
    index = rng.standard_normal((37, 16)).astype(np.float16)
    blocked = top_k_neighbours(index, 5, block=4)
    assert np.array_equal(blocked, top_k_neighbours(index, 5, block=256))
    scores = index.astype(np.float32) @ index.astype(np.float32).T
    np.fill_diagonal(scores, -np.inf)
    assert np.array_equal(blocked, np.argsort(-scores, axis=1, kind="stable")[:, :5])
    assert top_k_neighbours(index[:3], 10).shape == (3, 2)


def test_retrieval_needs_k_and_descriptors() -> None:
    with pytest.raises(ConfigError, match="retrieval_k"):
        make_pairs(PairsConfig(strategy="retrieval"), ["a.jpg", "b.jpg"])
    with pytest.raises(ConfigError, match="descriptors"):
        make_pairs(PairsConfig(strategy="retrieval", retrieval_k=2), ["a.jpg", "b.jpg"])


def test_gps_pairs_from_exif_on_lund() -> None:
    """lund's photos carry EXIF GPS along a street: the nearest photo by GPS is the next or previous one."""
    lund = require_shared("scenes", "lund", "images")
    names = sorted(p.name for p in lund.glob("*.jpg"))[:8]
    positions = {n: gps_position(lund / n) for n in names}
    assert positions["01.jpg"] == pytest.approx((55.69817, 13.19539), abs=1e-5)  # 55°41'53.4"N 13°11'43.4"E
    pairs = gps_pairs(names, positions, 1)
    assert pairs == [("01.jpg", "02.jpg"), ("02.jpg", "03.jpg"), ("03.jpg", "04.jpg"), ("04.jpg", "05.jpg"),
                     ("05.jpg", "06.jpg"), ("07.jpg", "08.jpg")]
    assert gps_pairs(names, {}, 3) == []


def test_gps_pairs_join_the_strategy_and_skip_images_without_gps(entry_p10: Path, names: list[str]) -> None:
    lund = require_shared("scenes", "lund", "images")
    assert gps_position(entry_p10 / "0000.jpg") is None and gps_position(entry_p10 / "K.txt") is None
    config = PairsConfig(strategy="sequential", overlap=1, gps_k=2)
    assert make_pairs(config, names, image_dir=entry_p10) == sequential_pairs(names, 1)  # no GPS: nothing added
    lund_names = sorted(p.name for p in lund.glob("*.jpg"))
    with_gps = make_pairs(config, lund_names, image_dir=lund)
    positions = {n: gps_position(lund / n) for n in lund_names}
    assert set(with_gps) == set(sequential_pairs(lund_names, 1)) | set(gps_pairs(lund_names, positions, 2))
    assert len(with_gps) > len(lund_names) - 1
