"""Plots (accuracy curves, match drawings) and the Markdown report helpers."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_data
from matcher.evaluation import draw_matches, markdown_table, plot_accuracy_curves, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_accuracy_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional dependency (extra 'eval')")
    thresholds = np.arange(1, 11)
    curves = {"sift": (thresholds, 1 - np.exp(-thresholds / 3)), "ours": (thresholds, 1 - np.exp(-thresholds / 2))}
    path = plot_accuracy_curves(curves, tmp_path / "sub" / "mma.png", title="MMA", xlabel="px", ylabel="MMA")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = cv2.imread(str(path))
    assert image.shape == (480, 600, 3)
    assert image.std() > 10  # not a blank canvas


def test_draw_matches_colours_inliers_and_outliers(tmp_path):
    image1 = np.full((60, 80), 128, np.uint8)
    image2 = np.full((50, 70, 3), 128, np.uint8)
    xy1 = np.array([[10.0, 40.0], [70.0, 50.0]])
    xy2 = np.array([[20.0, 45.0], [60.0, 10.0]])
    path = tmp_path / "matches.png"
    canvas = draw_matches(image1, image2, xy1, xy2, np.array([True, False]), path)
    assert canvas.shape == (60, 150, 3)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    np.testing.assert_array_equal(cv2.imread(str(path)), canvas)
    b, g, r = canvas[40, 10].astype(int)  # inlier endpoint in image 1: green
    assert g > 150 and r < 60 and b < 60
    b, g, r = canvas[10, 80 + 60].astype(int)  # outlier endpoint in image 2 (shifted by W1): red
    assert r > 200 and g < 60 and b < 60
    assert (canvas[50:, 80:] == 0).all()  # padding below the shorter image 2
    # no mask: everything is an inlier; max_draw keeps a subset
    many = np.random.default_rng(0).uniform(5, 45, size=(50, 2))
    draw_matches(image1, image2, many, many, None, tmp_path / "all.png", max_draw=10)
    many[3] = np.nan  # non-finite points are skipped, not an error
    draw_matches(image1, image2, many, many, None, tmp_path / "nan.png")
    with pytest.raises(ValueError):
        draw_matches(image1.astype(np.float32), image2, xy1, xy2, None, tmp_path / "x.png")


def test_draw_matches_on_a_real_pair(tmp_path):
    folder = shared_data() / "pairs" / "boat"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (set MATCHER_SHARED_DATA)")
    image1 = cv2.imread(str(folder / "boat1.png"))
    image2 = cv2.imread(str(folder / "boat2.png"))
    sift = cv2.SIFT_create(nfeatures=1500)
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(image1, cv2.COLOR_BGR2GRAY), None)
    k2, d2 = sift.detectAndCompute(cv2.cvtColor(image2, cv2.COLOR_BGR2GRAY), None)
    matches = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(d1, d2)
    xy1 = np.float64([k1[m.queryIdx].pt for m in matches])
    xy2 = np.float64([k2[m.trainIdx].pt for m in matches])
    _, mask = cv2.findFundamentalMat(xy1, xy2, cv2.USAC_MAGSAC, 1.0, 0.999)
    mask = mask.ravel() > 0
    assert 0.1 < mask.mean() < 0.95  # both colours appear
    out = Path(os.environ.get("MATCHER_PLOT_DIR", tmp_path))
    canvas = draw_matches(image1, image2, xy1, xy2, mask, out / "boat_matches.png", max_draw=400)
    assert canvas.shape == (680, 1700, 3)
    assert (out / "boat_matches.png").stat().st_size > 10_000


# --- reports (kept here with the other output helpers) ------------------------------------------------


def test_markdown_table():
    rows = [
        {"method": "sift", "mma@3": 0.61234, "pairs": 5, "ok": True},
        {"method": "a|b", "mma@3": float("nan"), "pairs": 12},
    ]
    table = markdown_table(rows, ["method", "mma@3", "pairs", "ok"], floatfmt=".2f")
    assert table == (
        "| method | mma@3 | pairs | ok |\n"
        "|---|---:|---:|---|\n"
        "| sift | 0.61 | 5 | yes |\n"
        "| a\\|b | nan | 12 |  |\n"
    )
    per_column = markdown_table(rows[:1], ["mma@3"], floatfmt={"mma@3": ".1%"})
    assert per_column.splitlines()[2] == "| 61.2% |"


def test_write_report(tmp_path):
    path = write_report(tmp_path / "out" / "report.md", {"HPatches": "table 1\n", "Pose": "table 2"}, title="Eval")
    assert path.read_text() == "# Eval\n\n## HPatches\n\ntable 1\n\n## Pose\n\ntable 2\n"
    write_report(path, [("Only", "x")])
    assert path.read_text() == "## Only\n\nx\n"
