"""Retrieval pairs (``match --retrieval K``) on entry-P10 (10 real photos, 640 px, 1024 RootSIFT keypoints), with
the verified-neighbour rounds that follow them (``pairs.expand_rounds``), GPS pairs (``--gps K``) on lund's EXIF."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner

from conftest import require_shared

import matcher

from matcher.cli import _overrides, match_command
from matcher.config import PairsConfig, load_config
from matcher.errors import ConfigError, IncompatibleDatabaseError
from matcher.gps import gps_pairs, gps_position
from matcher.pairs import exhaustive_pairs, make_pairs, sequential_pairs
from matcher.retrieval import retrieval_pairs, top_k_neighbours
from matcher.retrieval_expansion import verified_neighbour_pairs
from matcher.stages import expand_pairs
from matcher.storage import FeatureStore, MatchStore

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


def _exhaustive_inliers(db: Path, names: list[str]) -> dict[tuple[str, str], int]:
    """Every pair's verified inliers in the exhaustive run (0: unverified)."""
    with MatchStore(db.with_name(db.stem + ".matches.h5"), "r") as store:
        return {pair: store.verified_inliers(*pair) for pair in exhaustive_pairs(names)}


def test_match_with_retrieval_writes_those_pairs_and_their_verified_neighbours_and_reconstructs(
    entry_p10: Path, exhaustive_run: Path, names: list[str], tmp_path: Path
) -> None:
    """``--retrieval K``: the retrieved pairs plus one round of verified-neighbour pairs proposed from their results
    (matching is deterministic, so the exhaustive run's results predict them); a rerun reuses every pair."""
    db = tmp_path / "retrieval.db"
    result = CliRunner().invoke(
        match_command, [str(entry_p10), "--out", str(db), "--retrieval", str(K), "--reconstruct", str(tmp_path / "sparse"),
                        *FAST]
    )
    assert result.exit_code == 0, result.output
    retrieved = _retrieve(exhaustive_run, names, K)
    inliers = _exhaustive_inliers(exhaustive_run, names)
    added = verified_neighbour_pairs(names, {p: inliers[p] for p in retrieved}, K, 50)
    assert added and not set(added) & set(retrieved)
    assert _pairs_in(db) == set(retrieved) | set(added)
    sparse = tmp_path / "sparse"
    model = pycolmap.Reconstruction(sparse if (sparse / "images.bin").is_file() else sparse / "0")  # largest model
    assert model.num_reg_images() == len(names)
    rerun = matcher.match(entry_p10, db, "default", _overrides(max_edge=640, max_keypoints=1024, descriptor="rootsift",
                                                               retrieval=K), overwrite=True)
    assert rerun.pairs == len(retrieved) + len(added) == rerun.pairs_reused and rerun.pairs_added == [len(added)]


def test_verified_neighbour_rounds_find_the_partners_top_k_misses(exhaustive_run: Path, names: list[str]) -> None:
    """On the exhaustive run's files (which hold every pair, so nothing is matched again): 2 rounds after top-3
    retrieval reach every pair verified with >= 50 inliers; each round adds at most N K pairs, only new ones."""
    inliers = _exhaustive_inliers(exhaustive_run, names)
    reference = {p for p, n in inliers.items() if n >= 50}
    retrieved = _retrieve(exhaustive_run, names, K)
    config = load_config("default", _overrides(max_edge=640, max_keypoints=1024, descriptor="rootsift"))
    config.pairs = PairsConfig(strategy="retrieval", retrieval_k=K, expand_rounds=2)
    features = exhaustive_run.with_name(exhaustive_run.stem + ".features.h5")
    matches = exhaustive_run.with_name(exhaustive_run.stem + ".matches.h5")
    expanded = expand_pairs(features, retrieved, matches, config.pairs, config.matching, config.verification)
    assert expanded.computed == 0 and expanded.reused == sum(expanded.added)
    assert len(expanded.pairs) == len(retrieved) + sum(expanded.added) and set(retrieved) <= set(expanded.pairs)
    assert len(expanded.added) == 2 and all(0 < n <= len(names) * K for n in expanded.added)
    assert len(reference & set(retrieved)) < 0.5 * len(reference)  # top-3 lists; images have 6-9 such partners
    assert reference <= set(expanded.pairs)
    again = expand_pairs(features, retrieved, matches, config.pairs, config.matching, config.verification)
    assert again.pairs == expanded.pairs  # the same results propose the same pairs
    config.pairs.expand_rounds = 0
    assert expand_pairs(features, retrieved, matches, config.pairs).pairs == sorted(retrieved)


def test_verified_neighbour_ranking_threshold_and_bound() -> None:
    """Edges need min_inliers (b-x with 20 is not followed); candidates are neighbours of neighbours not matched
    yet; each image proposes at most per_image, strongest paths first (the weaker edge of each path, summed)."""
    verified = {("a", "b"): 100, ("b", "c"): 60, ("c", "d"): 80, ("a", "e"): 90, ("b", "x"): 20, ("b", "y"): 55}
    names = ["a", "b", "c", "d", "e", "x", "y"]
    new = verified_neighbour_pairs(names, verified, per_image=5)
    assert set(new) == {("a", "c"), ("a", "y"), ("b", "d"), ("b", "e"), ("c", "y")}
    assert new == sorted(new) and not any("x" in p for p in new)
    # one proposal each: a takes c (min(100, 60) = 60) over y (55), b takes e (90) over d (60), d takes b,
    # y takes a over c (55 each: ties by name)
    one = verified_neighbour_pairs(names, verified, per_image=1)
    assert one == [("a", "c"), ("a", "y"), ("b", "d"), ("b", "e")]
    # a square p-q-s-r: each corner proposes its opposite one
    assert verified_neighbour_pairs(["p", "q", "r", "s"], {("p", "q"): 60, ("p", "r"): 60, ("q", "s"): 60,
                                                           ("r", "s"): 60}, per_image=1) == [("p", "s"), ("q", "r")]
    assert verified_neighbour_pairs(names, verified, per_image=0) == []
    assert verified_neighbour_pairs(names, verified, per_image=5, min_inliers=200) == []


def test_expanding_pairs_that_were_not_matched_is_refused(exhaustive_run: Path, tmp_path: Path) -> None:
    features = exhaustive_run.with_name(exhaustive_run.stem + ".features.h5")
    MatchStore(tmp_path / "m.h5", "a").close()
    with pytest.raises(IncompatibleDatabaseError, match="match the pairs before expanding"):
        expand_pairs(features, [("0000.jpg", "0001.jpg")], tmp_path / "m.h5", PairsConfig(retrieval_k=2))


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
