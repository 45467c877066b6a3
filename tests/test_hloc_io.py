"""hloc interop: ``matcher export hloc`` read back in hloc's layout, and ``matcher import-hloc`` of those files
giving the database of our own run on the same features."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner

from matcher.cli import main
from matcher.config import load_config
from matcher.errors import PairsFileError
from matcher.hloc_io import names_to_pair, read_hloc_matches
from matcher.pipeline import OutputPaths, run_match
from matcher.storage import FeatureStore, MatchStore

FAST = [{"images": {"max_edge": 800}}, {"detection": {"max_keypoints": 1024}}]


@pytest.fixture(scope="module")
def run(small_scene: Path, tmp_path_factory: pytest.TempPathFactory):
    """Our run on three entry-P10 photos, one in a subfolder (hloc's nested groups and '-' pair keys)."""
    root = tmp_path_factory.mktemp("hloc")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    names = sorted(p.name for p in small_scene.iterdir())[:3]
    shutil.copy(small_scene / names[0], images / names[0])
    shutil.copy(small_scene / names[1], images / names[1])
    shutil.copy(small_scene / names[2], images / "sub" / names[2])
    db = root / "run" / "ours.db"
    config = load_config("rootsift", FAST)
    run_match(images, db, config, progress=False)
    out = root / "hloc"
    result = CliRunner().invoke(main, ["export", "hloc", str(root / "run" / "ours"), str(out)])
    assert result.exit_code == 0, result.output
    return images, db, out


def test_export_reads_back_in_hlocs_layout(run) -> None:
    images, db, out = run
    paths = OutputPaths(db)
    with FeatureStore(paths.features, "r") as store, h5py.File(out / "features.h5", "r") as f:
        names = sorted(store.names())
        assert any("/" in name for name in names)
        assert "sub" in f and isinstance(f["sub"], h5py.Group)  # '/' in a name: nested groups, as hloc writes
        for name in names:
            ours, group = store.read(name), f[name]
            n, d = ours.descriptors.shape
            assert group["keypoints"].shape == (n, 2) and group["keypoints"].dtype == np.float32
            np.testing.assert_array_equal(group["keypoints"][()], ours.keypoints)  # pixel centre at 0, as hloc
            assert group["descriptors"].shape == (d, n)  # transposed
            np.testing.assert_array_equal(group["descriptors"][()].T, ours.descriptors)
            assert group["scores"].shape == (n,)
            np.testing.assert_array_equal(group["image_size"][()], [ours.width, ours.height])

    pairs = [tuple(line.split()) for line in (out / "pairs.txt").read_text().splitlines()]
    assert len(pairs) == 3
    with MatchStore(paths.matches, "r") as store, h5py.File(out / "matches.h5", "r") as f, \
            FeatureStore(paths.features, "r") as features:
        for name0, name1 in pairs:
            key = names_to_pair(name0, name1)
            assert key == f"{name0.replace('/', '-')}/{name1.replace('/', '-')}" and key.count("/") == 1
            group = f[key]
            ours = store.read(name0, name1)
            matches0 = group["matches0"][()]
            assert matches0.shape == (len(features.read(name0)),) and np.issubdtype(matches0.dtype, np.integer)
            assert (matches0 == -1).sum() == len(matches0) - len(ours.matches)  # -1: unmatched
            np.testing.assert_array_equal(matches0[ours.matches[:, 0]], ours.matches[:, 1])
            np.testing.assert_array_equal(group["matching_scores0"][()][ours.matches[:, 0]], ours.scores)
            # hloc's own reading (utils/io.py get_matches): indices where matches0 != -1
            idx = np.where(matches0 != -1)[0]
            np.testing.assert_array_equal(np.stack([idx, matches0[idx]], -1), ours.matches)


def _database(db_path: Path) -> dict:
    with pycolmap.Database.open(db_path) as db:
        images = {im.image_id: im.name for im in db.read_all_images()}
        content = {
            "cameras": sorted((c.camera_id, int(c.model), c.width, c.height, tuple(c.params), c.has_prior_focal_length)
                              for c in db.read_all_cameras()),
            "images": sorted(images.items()),
            "keypoints": {images[i]: db.read_keypoints(i) for i in images},
            "descriptors": {images[i]: db.read_descriptors(i).data for i in images},
        }
        pair_ids, matches = db.read_all_matches()
        content["matches"] = dict(zip(pair_ids, matches))
        pair_ids, tvgs = db.read_two_view_geometries()
        content["geometries"] = {p: (int(t.config), t.inlier_matches, t.F, t.H) for p, t in zip(pair_ids, tvgs)}
    return content


def test_import_gives_the_database_of_our_own_run(run, tmp_path: Path) -> None:
    images, db, out = run
    imported = tmp_path / "imported.db"
    result = CliRunner().invoke(main, [
        "import-hloc", str(out / "features.h5"), str(out / "matches.h5"), str(out / "pairs.txt"),
        "--images", str(images), "--out", str(imported), "--pipeline", "rootsift",
        "--set", "images.max_edge=800",  # the run's RANSAC threshold is given at this detection size
    ])
    assert result.exit_code == 0, result.output
    ours, theirs = _database(db), _database(imported)
    assert theirs["cameras"] == ours["cameras"] and theirs["images"] == ours["images"]
    for name, keypoints in ours["keypoints"].items():
        np.testing.assert_array_equal(theirs["keypoints"][name], keypoints)
        np.testing.assert_array_equal(theirs["descriptors"][name], ours["descriptors"][name])
    assert theirs["matches"].keys() == ours["matches"].keys()
    for pair_id, matches in ours["matches"].items():
        np.testing.assert_array_equal(theirs["matches"][pair_id], matches)
    assert theirs["geometries"].keys() == ours["geometries"].keys() and len(ours["geometries"]) > 0
    for pair_id, (config, inliers, F, H) in ours["geometries"].items():
        config2, inliers2, F2, H2 = theirs["geometries"][pair_id]
        assert config2 == config
        np.testing.assert_array_equal(inliers2, inliers)
        np.testing.assert_array_equal(F2, F)
        assert (H is None) == (H2 is None)
        if H is not None:
            np.testing.assert_array_equal(H2, H)


def test_import_into_a_colmap_3_8_database(run, tmp_path: Path) -> None:
    images, _, out = run
    result = CliRunner().invoke(main, [
        "import-hloc", str(out / "features.h5"), str(out / "matches.h5"), str(out / "pairs.txt"),
        "--images", str(images), "--out", str(tmp_path / "legacy.db"), "--colmap-version", "3.8",
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("COLMAP 3.8 schema")


def test_hloc_files_as_hloc_writes_them(tmp_path: Path) -> None:
    """A pair stored the other way round (name1/name0), int16 matches0 and float16 scores, as hloc's
    match_features writes them; a pair missing from the file is a one-line error."""
    path = tmp_path / "matches.h5"
    matches0 = np.array([-1, 3, -1, 0, 2], np.int16)  # indices of b's keypoints for a's
    with h5py.File(path, "w") as f:
        group = f.create_group(names_to_pair("b.jpg", "dir/a.jpg"))
        group.create_dataset("matches0", data=matches0)
        group.create_dataset("matching_scores0", data=np.array([0, 0.9, 0, 0.8, 0.7], np.float16))
    assert "b.jpg/dir-a.jpg" in h5py.File(path, "r")
    matches, scores = read_hloc_matches(path, "dir/a.jpg", "b.jpg")
    np.testing.assert_array_equal(matches, [[0, 3], [2, 4], [3, 1]])  # [a index, b index], sorted by a
    np.testing.assert_allclose(scores, [0.8, 0.7, 0.9], atol=1e-3)
    with pytest.raises(PairsFileError, match="no matches for the pair"):
        read_hloc_matches(path, "dir/a.jpg", "c.jpg")


def test_hlocs_reconstruction_steps_run_on_the_export(run, tmp_path: Path) -> None:
    """hloc's ``reconstruction.main`` replayed with pycolmap (hloc is not on PyPI): ``import_images``, its
    ``import_features`` (keypoints + 0.5), ``import_matches`` (``get_matches``: indices where matches0 != -1),
    ``pycolmap.verify_matches`` on the pairs file, incremental mapping: every image registers."""
    images, _, out = run
    database = tmp_path / "database.db"
    names = [line.split() for line in (out / "pairs.txt").read_text().splitlines()]
    pycolmap.Database.open(database).close()  # hloc's create_empty_db
    pycolmap.import_images(database, images, pycolmap.CameraMode.AUTO, sorted({n for p in names for n in p}))
    with pycolmap.Database.open(database) as db, h5py.File(out / "features.h5", "r") as f, \
            h5py.File(out / "matches.h5", "r") as m:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        for name, image_id in ids.items():
            db.write_keypoints(image_id, f[name]["keypoints"][()] + 0.5)  # hloc: "COLMAP origin"
        for name0, name1 in names:
            matches0 = m[names_to_pair(name0, name1)]["matches0"][()]
            idx = np.where(matches0 != -1)[0]
            db.write_matches(ids[name0], ids[name1], np.stack([idx, matches0[idx]], -1).astype(np.uint32))
    pycolmap.set_random_seed(0)
    pycolmap.verify_matches(database, out / "pairs.txt")
    with pycolmap.Database.open(database) as db:
        assert db.num_verified_image_pairs() == 3
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 1
    options.random_seed = 0
    reconstructions = pycolmap.incremental_mapping(database, images, tmp_path / "sfm", options)
    assert max(r.num_reg_images() for r in reconstructions.values()) == 3


def test_export_inliers_only(run, tmp_path: Path) -> None:
    _, db, _ = run
    result = CliRunner().invoke(main, ["export", "hloc", str(db), str(tmp_path), "--inliers-only", "-q"])
    assert result.exit_code == 0 and result.output == ""
    with MatchStore(OutputPaths(db).matches, "r") as store, h5py.File(tmp_path / "matches.h5", "r") as f:
        for line in (tmp_path / "pairs.txt").read_text().splitlines():
            name0, name1 = line.split()
            ours = store.read(name0, name1)
            matches0 = f[names_to_pair(name0, name1)]["matches0"][()]
            kept = ours.matches[ours.inliers]
            assert (matches0 != -1).sum() == len(kept) == ours.num_inliers
            np.testing.assert_array_equal(matches0[kept[:, 0]], kept[:, 1])


def test_export_of_a_missing_run_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", "hloc", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "nothing.features.h5: not found" in result.output
    assert not (tmp_path / "out").exists()
