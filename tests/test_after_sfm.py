"""After SfM: COLMAP's mapper layout (DIR/0), text models, undistortion, known intrinsics and image masks.

Real entry-P10 photos through the real CLI; every model and database is read back with pycolmap.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner
from PIL import Image

from matcher.cli import main, match_command
from matcher.config import load_config
from matcher.masks import masks_digest
from matcher.pipeline import FEATURE_SECTIONS, OutputPaths, _fingerprint
from matcher.storage import FeatureStore

FAST = ["--descriptor", "rootsift", "--max-edge", "640", "--max-keypoints", "1024", "-q"]
# Strecha's calibration of entry-P10 (gt_dense_cameras), as COLMAP's SIMPLE_RADIAL "f,cx,cy,k" (+0.5: COLMAP's
# pixel centres).
KNOWN = "1438.7,792.29,524.81,0"


def _invoke(command, args: list[str]):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def run(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `match --reconstruct --undistort --text` run on four entry-P10 photos."""
    out = tmp_path_factory.mktemp("after_sfm")
    _invoke(match_command, [small_scene, "--out", out / "db.db", "--reconstruct", out / "sparse",
                            "--undistort", out / "dense", "--text", *FAST])
    return out


def test_models_are_written_as_colmaps_mapper_does_with_text(run: Path) -> None:
    sparse = run / "sparse"
    assert sorted(p.name for p in sparse.iterdir()) == ["0"]  # no flat model, no work folder left
    names = {"cameras", "images", "points3D", "rigs", "frames"}
    assert {p.name for p in (sparse / "0").iterdir()} == {f"{n}.{ext}" for n in names for ext in ("bin", "txt")}
    binary = pycolmap.Reconstruction(sparse / "0")
    text = pycolmap.Reconstruction()
    text.read_text(sparse / "0")
    assert binary.num_reg_images() == text.num_reg_images() == 4
    assert binary.num_points3D() == text.num_points3D() > 100
    assert not binary.cameras[1].has_prior_focal_length  # no EXIF, no --camera-params: COLMAP's guess, refined
    assert binary.cameras[1].focal_length != pytest.approx(1.2 * 1600)


def test_undistort_writes_pinhole_cameras_images_of_their_size_and_the_mvs_layout(run: Path, small_scene: Path) -> None:
    dense = run / "dense"
    assert (dense / "stereo" / "patch-match.cfg").is_file() and (dense / "stereo" / "fusion.cfg").is_file()
    for folder in (dense / "sparse", dense / "sparse" / "0"):  # COLMAP/OpenMVS read sparse/, 3DGS sparse/0
        model = pycolmap.Reconstruction(folder)
        assert model.num_reg_images() == 4 and model.num_points3D() > 100
        assert (folder / "cameras.txt").is_file()
        for image in model.images.values():
            camera = model.cameras[image.camera_id]
            assert camera.model == pycolmap.CameraModelId.PINHOLE
            with Image.open(dense / "images" / image.name) as picture:
                assert picture.size == (camera.width, camera.height)
    distorted = pycolmap.Reconstruction(run / "sparse" / "0")
    assert distorted.cameras[1].model == pycolmap.CameraModelId.SIMPLE_RADIAL
    assert sorted(p.name for p in (dense / "images").iterdir()) == sorted(p.name for p in small_scene.iterdir())


def test_reconstruct_command_writes_the_same_layout(run: Path, small_scene: Path) -> None:
    out, dense = run / "again", run / "again_dense"
    _invoke(main, ["reconstruct", run / "db.db", small_scene, out, "--undistort", dense, "--text", "-q"])
    assert sorted(p.name for p in out.iterdir()) == ["0"]
    assert (out / "0" / "images.txt").is_file()
    assert pycolmap.Reconstruction(out / "0").num_reg_images() == 4
    assert pycolmap.Reconstruction(dense / "sparse" / "0").cameras[1].model == pycolmap.CameraModelId.PINHOLE


def test_known_intrinsics_are_a_prior_and_stay_fixed_in_mapping(run: Path, small_scene: Path) -> None:
    # Same settings as the fixture's run, so its features and matches are reused: only export and mapping run.
    for suffix in (".features.h5", ".matches.h5"):
        shutil.copy(run / f"db{suffix}", run / f"known{suffix}")
    db, sparse = run / "known.db", run / "known_sparse"
    _invoke(match_command, [small_scene, "--out", db, "--reconstruct", sparse, "--camera-params", KNOWN,
                            "--fix-intrinsics", *FAST])
    expected = [float(v) for v in KNOWN.split(",")]
    with pycolmap.Database.open(db) as database:
        cameras = database.read_all_cameras()
    assert len(cameras) == 4
    for camera in cameras:
        assert camera.has_prior_focal_length and list(camera.params) == expected
    model = pycolmap.Reconstruction(sparse / "0")
    assert model.num_reg_images() == 4
    for camera in model.cameras.values():
        assert list(camera.params) == expected  # bundle adjustment left them alone


@pytest.mark.parametrize("fixed", [True, False])
def test_global_mapper_keeps_known_intrinsics_fixed_only_when_asked(run: Path, small_scene: Path, fixed: bool) -> None:
    db = run / "known.db"  # written by the test above
    if not db.is_file():
        pytest.skip("needs test_known_intrinsics_are_a_prior_and_stay_fixed_in_mapping")
    out = run / f"global_{fixed}"
    _invoke(main, ["reconstruct", db, small_scene, out, "--mapper", "global", "-q"]
            + (["--fix-intrinsics"] if fixed else []))
    model = pycolmap.Reconstruction(out / "0")
    assert model.num_reg_images() == 4
    expected = [float(v) for v in KNOWN.split(",")]
    same = [list(camera.params) == expected for camera in model.cameras.values()]
    assert all(same) if fixed else not any(same)


@pytest.mark.parametrize("params, message", [
    ("1500,800", "a SIMPLE_RADIAL camera takes 4 numbers: f, cx, cy, k"),
    ("1500,800,533,zero", "export.camera_params"),
    ("1500,800,533,nan", "export.camera_params"),
])
def test_bad_camera_params_are_a_one_line_error_before_anything_is_written(
    small_scene: Path, tmp_path: Path, params: str, message: str
) -> None:
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(tmp_path / "db.db"),
                                                "--camera-params", params, *FAST])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_undistort_without_reconstruct_or_into_a_file_is_exit_2(small_scene: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(tmp_path / "db.db"),
                                                "--undistort", str(tmp_path / "dense"), *FAST])
    assert result.exit_code == 2 and "--undistort needs --reconstruct" in result.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(tmp_path / "out" / "db.db"),
                                                "--reconstruct", str(tmp_path / "sparse"), "--undistort",
                                                str(tmp_path / "file"), *FAST])
    assert result.exit_code == 2 and "is a file" in result.output  # click's check (the API has its own)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.fixture(scope="module")
def masked(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two photos; 0002.jpg's mask (COLMAP's name: 0002.jpg.png) blanks its left half, 0003.jpg has no mask."""
    root = tmp_path_factory.mktemp("masked")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("0002.jpg", "0003.jpg"):
        shutil.copy(small_scene / name, images / name)
    mask = np.full((1067, 1600), 255, np.uint8)
    mask[:, :800] = 0
    Image.fromarray(mask).save(masks / "0002.jpg.png")
    _invoke(match_command, [images, "--out", root / "db.db", "--mask-dir", masks, *FAST])
    return root


def test_mask_drops_keypoints_on_zero_pixels_as_colmap_does(masked: Path) -> None:
    with FeatureStore(OutputPaths(masked / "db.db").features, "r") as store:
        left = store.read_keypoints("0002.jpg")
        free = store.read_keypoints("0003.jpg")
    assert np.floor(left[:, 0] + 0.5).min() >= 800  # COLMAP's test: mask[int(y + 0.5), int(x + 0.5)] != 0
    assert len(left) == 1024  # the keypoint budget went to the unmasked half
    assert (free[:, 0] < 799).sum() > 100  # the image without a mask keeps its keypoints everywhere
    with pycolmap.Database.open(masked / "db.db") as database:
        image = next(i for i in database.read_all_images() if i.name == "0002.jpg")
        colmap_xy = database.read_keypoints(image.image_id)[:, :2]
    assert np.floor(colmap_xy[:, 0]).min() >= 800  # the database agrees in COLMAP's pixel convention


def test_mask_content_is_part_of_the_feature_cache_check(masked: Path) -> None:
    config = load_config("default", [{"images": {"mask_dir": str(masked / "masks")}}])
    names = ["0002.jpg", "0003.jpg"]
    before = _fingerprint(config, FEATURE_SECTIONS, masks_digest(masked / "masks", names))
    moved = masked / "masks_copy"
    shutil.copytree(masked / "masks", moved)
    assert masks_digest(moved, names) == masks_digest(masked / "masks", names)  # the folder's path does not count
    mask = np.array(Image.open(moved / "0002.jpg.png"))
    mask[:, :400] = 255
    Image.fromarray(mask).save(moved / "0002.jpg.png")
    assert _fingerprint(config, FEATURE_SECTIONS, masks_digest(moved, names)) != before
    # Through the CLI: the cache beside the database refuses features computed with the other mask.
    (masked / "db.db").unlink()
    result = CliRunner().invoke(match_command, [str(masked / "images"), "--out", str(masked / "db.db"),
                                                "--mask-dir", str(moved), *FAST])
    assert result.exit_code == 2 and "computed with other settings" in result.output


def test_mask_of_the_wrong_size_skips_the_image_naming_the_mask(masked: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(masks / "0003.jpg.png")
    images = tmp_path / "images"
    shutil.copytree(masked / "images", images)
    result = CliRunner().invoke(match_command, [str(images), "--out", str(tmp_path / "db.db"), "--mask-dir",
                                                str(masks), "--descriptor", "rootsift", "--max-edge", "640",
                                                "--max-keypoints", "1024"])
    assert result.exit_code == 0, result.output
    assert "0003.jpg: mask is 100x100, the image is 1600x1067" in result.output
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        assert [i.name for i in database.read_all_images()] == ["0002.jpg"]


def test_missing_mask_folder_is_exit_2(small_scene: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(tmp_path / "db.db"),
                                                "--mask-dir", str(tmp_path / "nowhere"), *FAST])
    assert result.exit_code == 2 and "mask folder not found" in result.output
