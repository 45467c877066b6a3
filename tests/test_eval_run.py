"""``matcher eval`` on a real HPatches sequence (smoke test) and ``matcher show`` on a real database."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_data
from matcher.cli import main
from matcher.config import load_config
from matcher.evaluation.methods import EvalSettings, build_methods
from matcher.evaluation.run import evaluate_homography
from matcher.pipeline import run_match


def churchill() -> Path:
    folder = shared_data() / "homography" / "v_churchill"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (set MATCHER_SHARED_DATA)")
    return folder


# --- evaluate_homography -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def churchill_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    settings = EvalSettings(max_edge=640, max_keypoints=1024)
    methods, notes = build_methods(["ours-rootsift", "opencv-sift"], settings=settings)
    assert [m.name for m in methods] == ["ours-rootsift", "opencv-sift"] and notes == []
    work = tmp_path_factory.mktemp("eval_work")
    return evaluate_homography(churchill(), methods, work, picture_dir=work / "pictures")


def test_homography_rows_are_sane(churchill_rows: list[dict]) -> None:
    assert [r["method"] for r in churchill_rows] == ["ours-rootsift", "opencv-sift"]
    for row in churchill_rows:
        assert row["error"] == ""
        assert row["pairs"] == 5 and len(row["per_pair"]) == 5
        assert 200 < row["keypoints"] <= 1.01 * 1024  # OpenCV keeps ties at the cut-off response
        assert row["mma@10"] > row["mma@1"] > 0.0
        assert all(np.diff(row["mma_curve"]) >= 0)
        assert row["h_acc@5"] >= row["h_acc@3"] >= row["h_acc@1"]
        assert 0 < row["correct"] <= row["matches"]
        assert 0 < row["inliers"] <= row["matches"]
        for pair in row["per_pair"]:
            assert 0 <= pair["correct"] <= pair["matches"]
            assert pair["correct_inliers"] <= pair["inliers"] <= pair["matches"]
        easy = row["per_pair"][0]
        assert easy["pair"] == "1-2"
        assert easy["mma"][2] > 0.5  # MMA@3px of the known-easy pair
        assert easy["corner_error"] < 5.0
        assert Path(row["picture"]).is_file()


# --- matcher show ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_image_db(tmp_path_factory: pytest.TempPathFactory, entry_p10: Path) -> tuple[Path, Path]:
    """A database written by the real pipeline on 3 entry-P10 photos (640 px, 1024 keypoints)."""
    images = tmp_path_factory.mktemp("three")
    for name in ("0003.jpg", "0004.jpg", "0005.jpg"):
        shutil.copy(entry_p10 / name, images / name)
    db = tmp_path_factory.mktemp("three_db") / "three.db"
    config = load_config("default", [{"images": {"max_edge": 640}}, {"detection": {"max_keypoints": 1024}}])
    run_match(images, db, config, progress=False)
    return db, images


def _drawn(canvas: np.ndarray, plain: np.ndarray) -> tuple[int, int]:
    """(green, red) pixels that were drawn over the side-by-side images."""
    changed = np.abs(canvas.astype(int) - plain.astype(int)).sum(axis=2) > 60
    b, g, r = (canvas[..., i].astype(int) for i in range(3))
    green = changed & (g > 150) & (r < 90) & (b < 90)
    red = changed & (r > 180) & (g < 90) & (b < 90)
    return int(green.sum()), int(red.sum())


def test_show_draws_inliers_green_and_rejected_red(three_image_db, tmp_path: Path) -> None:
    db, images = three_image_db
    out = tmp_path / "pair.png"
    result = CliRunner().invoke(main, ["show", str(db), "0003.jpg", "0004.jpg", "--out", str(out),
                                       "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert "verified inliers" in result.output
    canvas = cv2.imread(str(out))
    left, right = cv2.imread(str(images / "0003.jpg")), cv2.imread(str(images / "0004.jpg"))
    assert canvas.shape == (1067, 3200, 3)
    green, red = _drawn(canvas, np.hstack([left, right]))
    assert green > 1000 and red > 100, (green, red)
    # The reverse order draws the same pair mirrored.
    out2 = tmp_path / "reverse.png"
    result = CliRunner().invoke(main, ["show", str(db), "0004.jpg", "0003.jpg", "--out", str(out2),
                                       "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert result.output.split(":", 1)[1] == CliRunner().invoke(
        main, ["show", str(db), "0003.jpg", "0004.jpg", "--out", str(out), "--images", str(images)]
    ).output.split(":", 1)[1]


def test_show_keypoints_are_drawn_in_pixel_coordinates(three_image_db) -> None:
    """COLMAP's +0.5 is removed: the database's matches land on the pipeline's own keypoints."""
    from matcher.colmap_db import read_keypoints_and_matches
    from matcher.pipeline import OutputPaths
    from matcher.storage import FeatureStore, MatchStore

    db, _ = three_image_db
    pair = read_keypoints_and_matches(db, "0003.jpg", "0004.jpg")
    paths = OutputPaths(db)
    with FeatureStore(paths.features, "r") as features, MatchStore(paths.matches, "r") as matches:
        ours = matches.read("0003.jpg", "0004.jpg")
        xy1 = features.read_keypoints("0003.jpg")
    np.testing.assert_allclose(pair.keypoints1, xy1, atol=1e-4)
    np.testing.assert_array_equal(pair.matches, ours.matches)
    np.testing.assert_array_equal(pair.inliers, ours.inliers)
    assert 0 < pair.inliers.sum() < len(pair.matches)


@pytest.mark.parametrize(
    "args, message",
    [
        (["0003.jpg", "nope.jpg"], "no image named 'nope.jpg'"),
        (["0003.jpg", "0004.jpg", "--images", "/nonexistent/folder"], "image folder does not exist"),
    ],
)
def test_show_user_errors_are_one_line(three_image_db, tmp_path: Path, args, message) -> None:
    db, images = three_image_db
    if "--images" not in args:
        args = [*args, "--images", str(images)]
    result = CliRunner().invoke(main, ["show", str(db), *args, "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "x.png").exists()


def test_show_missing_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["show", str(tmp_path / "none.db"), "a.jpg", "b.jpg", "--out",
                                       str(tmp_path / "x.png")])
    assert result.exit_code != 0
    assert result.output.strip() == f"error: {tmp_path / 'none.db'}: database not found"
    assert not (tmp_path / "none.db").exists()  # pycolmap would have created an empty one


def test_eval_user_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "--scene", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and result.output.strip().startswith("error:")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["eval", "--methods", "nonsense", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "unknown method" in result.output
    result = runner.invoke(main, ["eval", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "weights file not found" in result.output


def test_a_weights_file_is_evaluated_as_its_own_method(tmp_path: Path) -> None:
    """--weights FILE runs the real pipeline with SDGMNet and that file (untrained here: plumbing only)."""
    import torch

    from matcher.descriptors import SDGMNet, save_sdgmnet

    torch.manual_seed(0)
    weights = tmp_path / "random.pt"
    save_sdgmnet(SDGMNet().eval(), weights, {"magnification": 6.0})
    settings = EvalSettings(max_edge=400, max_keypoints=256)
    methods, _ = build_methods(["ours-rootsift"], [weights], settings)
    assert [m.name for m in methods] == ["ours-rootsift", "ours:random.pt"]
    rows = evaluate_homography(churchill(), methods[1:], tmp_path / "work")
    assert rows[0]["method"] == "ours:random.pt" and rows[0]["error"] == ""
    assert rows[0]["keypoints"] > 100 and rows[0]["matches"] > 0
    config = (tmp_path / "work" / "ours_random.pt" / "database.config.toml").read_text()
    assert 'name = "sdgmnet"' in config and str(weights) in config


def test_ours_methods_say_which_preset_and_weights_they_run() -> None:
    """ours-default is the default preset as shipped (its compact network), ours-sdgmnet the full network."""
    methods, notes = build_methods(["ours-default", "ours-sdgmnet", "ours-rootsift"], settings=EvalSettings())
    assert notes == [] and [m.name for m in methods] == ["ours-default", "ours-sdgmnet", "ours-rootsift"]
    default, full, rootsift = methods
    shipped = load_config("default")
    assert default.config().descriptor.weights == shipped.descriptor.weights == "sdgmnet-half"
    assert default.config().matching.ratio == shipped.matching.ratio
    assert full.config().descriptor.weights == "sdgmnet" and rootsift.config().descriptor.name == "rootsift"
    assert "preset default" in default.description and "models/sdgmnet-half.pt" in default.description
    assert "preset sdgmnet" in full.description and "models/sdgmnet.pt" in full.description
    assert f"ratio {shipped.matching.ratio:g}" in default.description


def test_eval_set_overrides_the_pipeline_settings_and_refuses_a_bad_one(tmp_path: Path) -> None:
    """``matcher eval --set``: ours-default with detection.max_orientations = 2 says so; a bad value is one line."""
    settings = EvalSettings(overrides=["detection.max_orientations=2"])
    (default,), _ = build_methods(["ours-default"], settings=settings)
    assert default.config().detection.max_orientations == 2
    assert default.config().descriptor.weights == load_config("default").descriptor.weights  # the rest as shipped
    assert "up to 2 orientations per location" in default.description
    (plain,), _ = build_methods(["ours-default"], settings=EvalSettings())
    assert "one orientation per location" in plain.description
    result = CliRunner().invoke(main, ["eval", "--scene", str(tmp_path), "--set", "detection.max_orientations=9",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "max_orientations" in result.output and not (tmp_path / "out").exists()
