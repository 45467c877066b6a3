"""Pairs from EXIF GPS: each image with the images taken nearest to it (``pairs.gps_k``).

Positions are EXIF ``GPSLatitude``/``GPSLongitude`` (PIL), projected to metres on a plane tangent at the
collection's mean position (equirectangular; under 0.1 % error over a few kilometres). Altitude is ignored:
phone altitudes are too noisy to rank neighbours. An image without GPS gets no GPS pairs (it keeps those of the
other strategies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["gps_position", "gps_pairs"]

_GPS_IFD = 0x8825
_EARTH_RADIUS_M = 6_371_000.0


def gps_position(path: Path) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from the image's EXIF, or None when it has none (or it is unreadable)."""
    try:
        with Image.open(path) as image:
            gps = image.getexif().get_ifd(_GPS_IFD)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    try:
        lat = _degrees(gps[2]) * (-1.0 if gps.get(1) == "S" else 1.0)
        lon = _degrees(gps[4]) * (-1.0 if gps.get(3) == "W" else 1.0)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if not (np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180) or (lat, lon) == (0.0, 0.0):
        return None  # (0, 0): cameras that write empty GPS tags
    return lat, lon


def _degrees(dms: Sequence[float]) -> float:
    return float(dms[0]) + float(dms[1]) / 60.0 + float(dms[2]) / 3600.0


def gps_pairs(names: Sequence[str], positions: dict[str, tuple[float, float]], k: int) -> list[tuple[str, str]]:
    """Each image that has a position with its ``k`` nearest (horizontal distance, ties by name), symmetric union;
    sorted ``(a, b)``, a < b. O(M^2) distances for M located images, computed one image at a time."""
    located = sorted(n for n in names if n in positions)
    if k < 1 or len(located) < 2:
        return []
    latlon = np.radians(np.array([positions[n] for n in located], np.float64))
    centre = latlon.mean(axis=0)
    xy = np.stack([(latlon[:, 1] - centre[1]) * np.cos(centre[0]), latlon[:, 0] - centre[0]], 1) * _EARTH_RADIUS_M
    pairs = set()
    for i, a in enumerate(located):
        distance = np.linalg.norm(xy - xy[i], axis=1)
        distance[i] = np.inf
        for j in np.argsort(distance, kind="stable")[: min(k, len(located) - 1)]:
            b = located[int(j)]
            pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs)
