"""The stages as functions over files (matcher.stages): each runs alone, resumes from its own file, and their
composition writes run_match's database. Four real photos at 400x267, RootSIFT, 512 keypoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from matcher.config import load_config
from matcher.errors import DatabaseExistsError, IncompatibleDatabaseError
from matcher.pipeline import MATCH_SECTIONS, _fingerprint, feature_settings, run_match
from matcher.stages import export_database, extract_features, make_pairs, match_features
from matcher.stages.cache import match_fingerprint
from matcher.storage import escape_name, pair_key
from conftest import SMALL_SCENE_NAMES
from test_resume import _dump

NAMES = SMALL_SCENE_NAMES


@pytest.fixture(scope="module")
def config():  # noqa: ANN201
    return load_config("rootsift", [{"detection": {"max_keypoints": 512}}])


@pytest.fixture(scope="module")
def reference(tiny: Path, config, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    db = tmp_path_factory.mktemp("reference") / "db.db"
    run_match(tiny, db, config, progress=False)
    return _dump(db)


@pytest.fixture(scope="module")
def staged(tiny: Path, config, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """The four stages run one after the other over files, as a user of the Python API would."""
    work = tmp_path_factory.mktemp("staged")
    files = {"features": work / "features.h5", "pairs": work / "pairs.txt", "matches": work / "matches.h5",
             "db": work / "db.db"}
    extracted = extract_features(tiny, files["features"], settings=feature_settings(config))
    pairs = make_pairs(files["features"], config.pairs, pairs_path=files["pairs"])
    matched = match_features(files["features"], files["pairs"], files["matches"], config.matching,
                             config.verification)
    exported = export_database(tiny, files["features"], files["matches"], files["pairs"], files["db"], config.export)
    return {"files": files, "extracted": extracted, "pairs": pairs, "matched": matched, "exported": exported}


def test_stages_composed_write_run_match_database(staged: dict, reference: dict) -> None:
    assert staged["extracted"].used == list(NAMES) and staged["extracted"].reused == 0
    assert staged["extracted"].skipped == []
    assert staged["pairs"] == [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1 :]]
    assert staged["files"]["pairs"].read_text().splitlines()[0] == "0002.jpg 0003.jpg"
    matched = staged["matched"]
    assert (matched.pairs, matched.reused, matched.computed) == (6, 0, 6)
    exported = staged["exported"]
    assert exported.database["images"] == 4 and exported.pairs_verified == exported.database["verified_pairs"] > 0
    assert _dump(staged["files"]["db"]) == reference


def test_the_match_file_key_is_the_pipeline_one(staged: dict, config) -> None:  # noqa: ANN001
    with h5py.File(staged["files"]["features"], "r") as f:
        features_key = f.attrs["fingerprint"]
    with h5py.File(staged["files"]["matches"], "r") as f:
        assert f.attrs["fingerprint"] == _fingerprint(config, MATCH_SECTIONS)
    assert match_fingerprint(features_key, config.matching, config.verification) == _fingerprint(config, MATCH_SECTIONS)


def test_each_stage_resumes_from_its_own_file(staged: dict, tiny: Path, config, reference: dict,  # noqa: ANN001
                                              tmp_path: Path) -> None:
    files = {k: tmp_path / v.name for k, v in staged["files"].items()}
    for key in ("features", "matches"):
        shutil.copy(staged["files"][key], files[key])
    with h5py.File(files["features"], "a") as f:
        del f[escape_name("0004.jpg")]
    with h5py.File(files["matches"], "a") as f:
        del f[pair_key("0002.jpg", "0005.jpg")]

    again = extract_features(tiny, files["features"], settings=feature_settings(config))
    assert again.used == list(NAMES) and again.reused == 3  # only the missing image is extracted
    pairs = make_pairs(files["features"], config.pairs)
    matched = match_features(files["features"], pairs, files["matches"], config.matching, config.verification)
    assert (matched.reused, matched.computed) == (5, 1)  # only the missing pair is matched
    export_database(tiny, files["features"], files["matches"], pairs, files["db"], config.export)
    assert _dump(files["db"]) == reference

    with pytest.raises(DatabaseExistsError, match="db.db: database exists"):
        export_database(tiny, files["features"], files["matches"], pairs, files["db"], config.export)
    other = load_config("rootsift", [{"matching": {"ratio": 0.7}}])
    with pytest.raises(IncompatibleDatabaseError, match="other settings"):  # a file of other settings is kept
        match_features(files["features"], pairs, files["matches"], other.matching, other.verification)
    assert match_features(files["features"], pairs, files["matches"], config.matching,
                          config.verification).reused == 6
