"""Images: find them in a folder, read them as COLMAP reads them, resize a copy for detection.

* Every file under the folder, recursively, with an image extension (any case) is an image; its name is its
  path relative to the folder with ``/`` separators, as COLMAP's image reader names it. Symbolic links to
  files are followed; everything else that is not used is named with a reason (:func:`scan_folder`): other
  files, hidden files and folders, broken links, links to folders (not followed, as COLMAP does not follow
  them either, and so no loop or escape from the folder), special files, and folders that cannot be listed.
* Pixels are decoded without applying the EXIF orientation tag, because COLMAP does not apply it either
  (checked: ``pycolmap.Bitmap.read`` returns the stored, unrotated raster). Keypoints therefore refer to the
  same pixels COLMAP and the mapper see.
* Colour, alpha, palette, 16-bit and float images become 8-bit grey (ITU-R 601 luma, as OpenCV and COLMAP).
* A truncated, empty or undecodable file raises :class:`matcher.errors.ImageReadError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from matcher.errors import ImageReadError, NoImagesError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "ImageData",
    "list_images",
    "list_other_files",
    "scan_folder",
    "read_image",
    "read_picture",
    "resize_for_detection",
    "rescale_pixels",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".ppm", ".pgm", ".bmp", ".webp")
MIN_IMAGE_SIDE = 16

Image.MAX_IMAGE_PIXELS = None  # large aerial images are legitimate input


@dataclass
class ImageData:
    """One decoded image.

    Attributes:
        name: path relative to the image folder (``/`` separators).
        gray: (H, W) uint8 full-resolution grey pixels.
    """

    name: str
    gray: np.ndarray

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])


def scan_folder(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Walk ``folder``: (image names, [(name, reason), ...] for every entry that is not used), both sorted.

    Names are relative with ``/`` separators (folders end with ``/``). Raises NoImagesError when ``folder`` is
    missing or not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise NoImagesError(f"{folder}: image folder does not exist")
    if not folder.is_dir():
        raise NoImagesError(f"{folder}: not a folder")
    images: list[str] = []
    skipped: list[tuple[str, str]] = []

    def visit(directory: str, prefix: str) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append((prefix or "./", f"cannot list folder ({exc.strerror or exc})"))
            return
        for entry in entries:
            name, hidden = prefix + entry.name, entry.name.startswith(".")
            try:
                if entry.is_symlink() and not os.path.exists(entry.path):
                    skipped.append((name, "broken symbolic link"))
                elif entry.is_symlink() and entry.is_dir():
                    skipped.append((name + "/", "symbolic link to a folder (not followed)"))
                elif entry.is_dir():
                    if hidden:
                        skipped.append((name + "/", "hidden folder (not searched)"))
                    else:
                        visit(entry.path, name + "/")
                elif not entry.is_file():
                    skipped.append((name, "not a regular file"))
                elif hidden:
                    skipped.append((name, "hidden file"))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    images.append(name)
                else:
                    skipped.append((name, "not an image file"))
            except OSError as exc:
                skipped.append((name, f"cannot inspect ({exc.strerror or exc})"))

    visit(str(folder), "")
    return sorted(images), sorted(skipped)


def list_images(folder: Path) -> list[str]:
    """Relative names of all images under ``folder`` (recursive, sorted, ``/`` separators; see :func:`scan_folder`).

    Raises:
        NoImagesError: the folder is missing, not a folder, or holds no image.
    """
    names, _ = scan_folder(folder)
    if not names:
        raise NoImagesError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return names


def list_other_files(folder: Path) -> list[str]:
    """Relative names of the entries under ``folder`` that are not used as images (reported as skipped, so
    users see that e.g. ``K.txt`` was not used); their reasons come from :func:`scan_folder`."""
    return [name for name, _ in scan_folder(folder)[1]]


def _to_gray_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16)
        return np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.round(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "P", "PA", "RGBa", "La") or "A" in img.getbands():
        img = img.convert("RGBA").convert("RGB")
    elif mode not in ("RGB",):
        img = img.convert("RGB")
    rgb = np.asarray(img, dtype=np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def read_image(folder: Path, name: str) -> ImageData:
    """Decode ``folder/name`` to full-resolution 8-bit grey, ignoring EXIF orientation (as COLMAP does).

    Raises:
        ImageReadError: empty, truncated, undecodable, or smaller than 16 pixels on a side.
    """
    path = Path(folder) / name
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as img:
            img.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is off)
            gray = _to_gray_uint8(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image") from None
    except PermissionError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{path}: cannot decode image ({reason})") from None
    if gray.ndim != 2:
        raise ImageReadError(f"{path}: unsupported pixel layout {gray.shape}")
    if min(gray.shape) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"{path}: image too small ({gray.shape[1]}x{gray.shape[0]} pixels)")
    return ImageData(name=name, gray=np.ascontiguousarray(gray))


def read_picture(path: Path) -> np.ndarray:
    """An image to draw on: (H, W, 3) uint8 BGR as OpenCV decodes it, EXIF orientation ignored (as COLMAP);
    formats OpenCV cannot decode come back as (H, W) grey from :func:`read_image` (its errors included)."""
    path = Path(path)
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return picture if picture is not None else read_image(path.parent, path.name).gray


def rescale_pixels(xy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(N, 2) pixel coordinates in an image resized by (sx, sy) (OpenCV pixel centres, which scale about the
    image edges): ``(x + 0.5) * s - 0.5`` per axis. The one place of this convention; (N, 2) of ``xy``'s dtype."""
    out = np.empty_like(xy)
    out[:, 0] = (xy[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (xy[:, 1] + 0.5) * sy - 0.5
    return out


def resize_for_detection(gray: np.ndarray, max_edge: int) -> tuple[np.ndarray, float, float]:
    """Downscale so the longer edge is at most ``max_edge`` (0: never). Never upscales.

    Returns:
        (resized (h, w) uint8, sx, sy); full-resolution = :func:`rescale_pixels` (resized, sx, sy).
    """
    h, w = gray.shape
    if max_edge <= 0 or max(h, w) <= max_edge:
        return gray, 1.0, 1.0
    factor = max_edge / max(h, w)
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    small = cv2.resize(gray, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return small, w / new_w, h / new_h
