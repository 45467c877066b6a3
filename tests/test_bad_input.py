"""Bad input: each bad file is skipped with a one-line reason naming it, the run goes on, nothing is lost."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner
from PIL import Image

from matcher.cli import main, match_command
from matcher.colmap_db import DatabaseImage, write_database
from matcher.config import ExportConfig, load_config
from matcher.images import list_images, read_image
from matcher.pipeline import run_match
from matcher.storage import ImageFeatures, PairMatches

FAST = ["--max-edge", "640", "--max-keypoints", "1024", "-q"]


def _photo(entry_p10: Path, name: str) -> np.ndarray:
    return cv2.imread(str(entry_p10 / name), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory, entry_p10: Path) -> Path:
    """Real photos in every format users have, plus every kind of bad file."""
    folder = tmp_path_factory.mktemp("messy")
    (folder / "sub").mkdir()
    shutil.copy(entry_p10 / "0002.jpg", folder / "0002.jpg")
    shutil.copy(entry_p10 / "0002.jpg", folder / "copy_of_0002.jpg")  # duplicate content
    bgr3 = _photo(entry_p10, "0003.jpg")
    cv2.imwrite(str(folder / "sub" / "0003_gray.JPG"), cv2.cvtColor(bgr3, cv2.COLOR_BGR2GRAY))
    bgr4 = _photo(entry_p10, "0004.jpg")
    rgba = cv2.cvtColor(bgr4, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    cv2.imwrite(str(folder / "0004_rgba.png"), rgba)
    bgr5 = _photo(entry_p10, "0005.jpg")
    cv2.imwrite(str(folder / "0005_16bit.PNG"), bgr5.astype(np.uint16) * 257)
    # Bad files.
    (folder / "empty.jpg").write_bytes(b"")
    data = (entry_p10 / "0006.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("this is not a picture\n")
    (folder / "K.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    (folder / "Readme.txt").write_text("a scene\n")
    cv2.imwrite(str(folder / "tiny.png"), bgr3[:10, :10])
    cv2.imwrite(str(folder / "flat.png"), np.full((480, 640), 128, np.uint8))
    return folder


EXPECTED_SKIPS = {
    "copy_of_0002.jpg": "same file content as 0002.jpg",
    "empty.jpg": "empty file",
    "truncated.jpg": "cannot decode",
    "notes.jpg": "not a readable image",
    "tiny.png": "too small",
    "flat.png": "no keypoints",
    "K.txt": "not an image file",
    "Readme.txt": "not an image file",
}
EXPECTED_USED = ["0002.jpg", "0004_rgba.png", "0005_16bit.PNG", "sub/0003_gray.JPG"]


def test_listing_is_recursive_case_insensitive_and_ignores_other_files(messy_folder: Path) -> None:
    names = list_images(messy_folder)
    assert "sub/0003_gray.JPG" in names and "0005_16bit.PNG" in names
    assert not any(n.endswith(".txt") for n in names)


def test_each_bad_file_is_skipped_with_its_reason_and_the_run_goes_on(messy_folder: Path, tmp_path: Path) -> None:
    db = tmp_path / "messy.db"
    result = CliRunner().invoke(match_command, [str(messy_folder), "--out", str(db), "--max-edge", "640",
                                                "--max-keypoints", "1024"])
    assert result.exit_code == 0, result.output
    for name, reason in EXPECTED_SKIPS.items():
        warning = [line for line in result.output.splitlines() if line.startswith("skipped") and name in line]
        assert warning and reason in warning[0], (name, result.output)
    summary = result.output[result.output.index("skipped 8 file(s):") :]
    for name in EXPECTED_SKIPS:
        assert name in summary
    with pycolmap.Database.open(db) as database:
        assert sorted(im.name for im in database.read_all_images()) == EXPECTED_USED
        assert database.num_verified_image_pairs() >= 4


def test_formats_decode_to_the_same_grey_pixels(messy_folder: Path, entry_p10: Path) -> None:
    reference = {n: read_image(entry_p10, n).gray.astype(int) for n in ("0003.jpg", "0004.jpg", "0005.jpg")}
    gray = read_image(messy_folder, "sub/0003_gray.JPG").gray
    assert np.abs(gray - reference["0003.jpg"]).mean() < 2.0  # re-encoded JPEG
    rgba = read_image(messy_folder, "0004_rgba.png").gray
    assert np.abs(rgba - reference["0004.jpg"]).max() <= 1
    deep = read_image(messy_folder, "0005_16bit.PNG").gray
    assert np.abs(deep - reference["0005.jpg"]).max() <= 1


def test_exif_rotated_jpeg_keeps_the_pixels_colmap_reads(entry_p10: Path, tmp_path: Path) -> None:
    with Image.open(entry_p10 / "0002.jpg") as img:
        exif = img.getexif()
        exif[274] = 6  # "rotate 90 CW to display"
        img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    ours = read_image(tmp_path, "rotated.jpg").gray
    colmap = pycolmap.Bitmap.read(tmp_path / "rotated.jpg", False).to_array()
    assert ours.shape == colmap.shape[:2] == (1067, 1600)  # stored raster, not the displayed one
    assert np.abs(ours.astype(int) - colmap.reshape(ours.shape).astype(int)).mean() < 1.5


def test_missing_or_empty_folder_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "out" / "db.db"
    result = runner.invoke(match_command, [str(tmp_path / "nope"), "--out", str(db)])
    assert result.exit_code == 2
    assert "nope" in result.output and "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "Readme.txt").write_text("x")
    result = runner.invoke(match_command, [str(tmp_path / "empty"), "--out", str(db)])
    assert result.exit_code == 2 and "no images found" in result.output
    assert not (tmp_path / "out").exists()


def test_existing_database_is_refused_then_replaced_with_overwrite(small_scene: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    db.write_bytes(b"precious")
    runner = CliRunner()
    result = runner.invoke(match_command, [str(small_scene), "--out", str(db), *FAST])
    assert result.exit_code == 2 and "--overwrite" in result.output and str(db) in result.output
    assert db.read_bytes() == b"precious"
    assert not (tmp_path / "db.features.h5").exists()
    result = runner.invoke(match_command, [str(small_scene), "--out", str(db), "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    with pycolmap.Database.open(db) as database:
        assert database.num_images() == 4


def test_bad_preset_and_bad_override_are_one_line_errors(small_scene: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(match_command, [str(small_scene), "--out", str(tmp_path / "a.db"), "--pipeline", "nope"])
    assert result.exit_code == 2 and "unknown pipeline preset 'nope'" in result.output
    result = runner.invoke(match_command, [str(small_scene), "--out", str(tmp_path / "a.db"), "--set", "matching.foo=1"])
    assert result.exit_code == 2 and "matching.foo" in result.output
    assert not (tmp_path / "a.db").exists()


def test_pairs_file_errors_name_the_line(small_scene: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0002.jpg 0003.jpg\n0002.jpg missing.jpg\n")
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(tmp_path / "p.db"),
                                                "--pairs", str(pairs), *FAST])
    assert result.exit_code == 2 and f"{pairs}:2" in result.output and "missing.jpg" in result.output


def test_pair_without_matches_is_exported_without_rows(entry_p10: Path, tmp_path: Path) -> None:
    features = ImageFeatures(
        keypoints=np.zeros((3, 2), np.float32), scales=np.ones(3, np.float32), orientations=np.zeros(3, np.float32),
        scores=np.ones(3, np.float32), descriptors=np.full((3, 128), 128 ** -0.5, np.float32), width=1600, height=1067,
    )
    images = [DatabaseImage(n, entry_p10 / n, features) for n in ("0000.jpg", "0001.jpg")]
    empty = PairMatches(np.zeros((0, 2), np.int32), np.zeros(0, np.float32), np.zeros(0, bool), None, None, "none")
    counts = write_database(tmp_path / "e.db", images, [("0000.jpg", "0001.jpg", empty)], ExportConfig())
    assert counts["matched_pairs"] == 0 and counts["images"] == 2
    with pycolmap.Database.open(tmp_path / "e.db") as db:
        assert db.num_matched_image_pairs() == 0


def test_unrelated_image_pairs_stay_unverified(small_scene: Path, tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "imgs"
    shutil.copytree(small_scene, folder)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    config = load_config("default", [{"images": {"max_edge": 640}}, {"detection": {"max_keypoints": 1024}}])
    report = run_match(folder, tmp_path / "u.db", config, progress=False)
    assert report.pairs == 10
    assert report.pairs_verified == 6  # the 4 entry-P10 photos pairwise; nothing with the astronaut


def test_python_module_entry_point_shows_help() -> None:
    out = subprocess.run([sys.executable, "-m", "matcher", "--help"], capture_output=True, text=True, check=True)
    assert "match" in out.stdout and "reconstruct" in out.stdout


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["match", "--help"])
    assert result.exit_code == 0
    for param in match_command.params:
        if param.param_type_name == "option":
            assert param.help, f"option {param.opts} has no help"
            assert param.opts[0] in result.output
