"""A synthetic scene with known cameras: real photographs on a 3D room, rendered by the project itself.

This is the scene behind ``matcher demo`` and an evaluation dataset: ground truth is exact, so reconstructions
can be compared with :func:`compare_to_scene` (the geometry is evaluation's: :mod:`matcher.evaluation.pose` for
cameras and relative poses, :mod:`matcher.evaluation.sfm` for the alignment and the pose errors).

The scene is an open room (floor, back wall, two side walls) with two boxes standing on the floor. Every
face carries a different photograph shipped inside scikit-image's wheel (``skimage.data``), modulated by a
pixel-level detail texture (brick, grass or gravel) so that no face has large flat regions. It is not a single
plane (that would be degenerate for the fundamental matrix): there are 14 rectangles at depths 4-12 m with
normals along x, y, z and two yaw angles, with occlusions between them.

Cameras look at the room from an arc of radius 7 m (+-22 degrees) in front of its open side, about 2.9 m above
the floor and looking down by about 15 degrees, so neighbouring views overlap strongly (about 5 degrees and
0.5 m apart for 10 views): about 90% of the visible surface is seen by 3 or more of the 10 views.

Conventions
-----------
* World frame: metres, x to the right, y **down**, z into the room (a camera with R = I looks along +z).
* Poses are ``cam_from_world``: ``X_cam = R @ X_world + t``; the camera centre is ``-R.T @ t``.
* Pixels follow OpenCV: the centre of the top-left pixel is (0, 0), x to the right, y down, so a pixel
  ``(u, v)`` of view ``i`` is ``P_i = K [R_i | t_i]`` applied to a world point, and the principal point is
  ``((W - 1) / 2, (H - 1) / 2)``. COLMAP's convention (top-left *corner* at (0, 0)) is this plus 0.5.
* Pinhole camera, no distortion, square pixels, focal length = image width (53 degree horizontal field).

Rendering is a per-pixel ray cast with a z-buffer, vectorised in numpy: for each rectangle the map from image
pixels to texture pixels is a homography whose third coordinate is the inverse depth, so the z-buffer keeps
the largest one. Textures are sampled with mip-mapping (trilinear), the image is rendered at 2x and reduced
with ``cv2.INTER_AREA`` (anti-aliased edges), then a small seeded Gaussian sensor noise and a per-view gain of
at most 2% are added. The output is deterministic: same inputs, same bytes.

Run ``python -m matcher.evaluation.synthetic_scene OUT_DIR`` to write ``OUT_DIR/images/view_00.jpg ...`` and
``OUT_DIR/cameras.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .pose import StrechaCamera, relative_pose
from .sfm import absolute_pose_errors, reconstruction_poses

if TYPE_CHECKING:
    import pycolmap

__all__ = [
    "CONVENTION",
    "Quad",
    "SceneComparison",
    "SyntheticScene",
    "cameras_json",
    "compare_to_scene",
    "demo_quads",
    "intrinsics",
    "load_scene",
    "look_at",
    "mipmaps",
    "quad_texture",
    "render_demo_scene",
    "render_view",
    "write_view",
]

TEXELS_PER_METRE = 160.0  # texture resolution on every face: 6.25 mm per texel
SUPERSAMPLING = 2  # render at 2x, reduce with INTER_AREA
MIP_LEVELS = 4
NOISE_SIGMA = 1.5  # grey levels (of 255), Gaussian, per channel
JPEG_QUALITY = 95

CONVENTION = (
    "OpenCV pixels: the centre of the top-left pixel is (0, 0); x = P @ X with P = K [R | t]; "
    "R, t are cam_from_world (X_cam = R X_world + t); centre = -R^T t; world in metres, y down; "
    "pinhole, no distortion. COLMAP pixel coordinates = these + 0.5."
)


@dataclass(frozen=True)
class Quad:
    """A textured rectangle: ``origin + a * axis_u + b * axis_v`` for ``a, b`` in [0, 1].

    ``origin`` (3,) is the corner where the texture's top-left lies, ``axis_u`` (3,) runs along the texture's
    columns and ``axis_v`` (3,) along its rows (both in metres and orthogonal). The texture is the photograph
    ``photo`` (a ``skimage.data`` function name), cut to the fractional box ``crop`` = (x0, y0, x1, y1),
    modulated by the grey detail texture ``detail`` tiled from pixel offset ``detail_offset``.
    """

    name: str
    origin: tuple[float, float, float]
    axis_u: tuple[float, float, float]
    axis_v: tuple[float, float, float]
    photo: str
    detail: str
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    detail_offset: tuple[int, int] = (0, 0)

    @property
    def texture_size(self) -> tuple[int, int]:
        """(width, height) of the texture in texels, multiples of 2**(MIP_LEVELS - 1)."""
        m = 2 ** (MIP_LEVELS - 1)
        w = np.linalg.norm(self.axis_u) * TEXELS_PER_METRE
        h = np.linalg.norm(self.axis_v) * TEXELS_PER_METRE
        return max(m, int(round(w / m)) * m), max(m, int(round(h / m)) * m)

    def world_from_texture(self) -> np.ndarray:
        """(3, 3) matrix mapping homogeneous texel coordinates (OpenCV convention, texel centres at integers)
        to the world point: ``X = M @ [x, y, 1]``."""
        tw, th = self.texture_size
        u, v, o = (np.asarray(a, np.float64) for a in (self.axis_u, self.axis_v, self.origin))
        su, sv = u / tw, v / th  # metres per texel along each axis
        return np.stack([su, sv, o + 0.5 * su + 0.5 * sv], axis=1)

    def corners(self) -> np.ndarray:
        """(4, 3) world corners: origin, origin + u, origin + u + v, origin + v."""
        u, v, o = (np.asarray(a, np.float64) for a in (self.axis_u, self.axis_v, self.origin))
        return np.stack([o, o + u, o + u + v, o + v])


def _box(name: str, centre: tuple[float, float], floor_y: float, size: tuple[float, float, float],
         yaw_deg: float, faces: list[tuple[str, tuple[float, float, float, float]]],
         details: list[str]) -> list[Quad]:
    """Five quads (top, front, right, back, left) of a box standing on the floor; textures upright seen from
    outside. ``centre`` is (x, z) on the floor, ``size`` (width, height, depth) in metres."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    ex, ez = np.array([c, 0.0, -s]), np.array([s, 0.0, c])  # the box's horizontal axes, turned by the yaw
    down = np.array([0.0, 1.0, 0.0])
    w, h, d = size
    base = np.array([centre[0], floor_y, centre[1]])
    top = base - h * down
    # (outward normal, half-extent along it, horizontal width of the face) for the four vertical faces
    sides = [(-ez, d / 2, w), (ex, w / 2, d), (ez, d / 2, w), (-ex, w / 2, d)]
    quads: list[Quad] = []
    u, v = ex * w, ez * d  # top face: x to the right, v towards the back (texture top at the front)
    quads.append(Quad(f"{name}_top", tuple(top - u / 2 + v / 2), tuple(u), tuple(-v),
                      faces[0][0], details[0], faces[0][1], (37, 91)))
    for k, (n, half, width) in enumerate(sides):
        right = np.cross(down, -n)  # looking at the face from outside (forward = -n), y down
        origin = top + n * half - right * width / 2
        quads.append(Quad(f"{name}_side{k}", tuple(origin), tuple(right * width), tuple(down * h),
                          faces[k + 1][0], details[(k + 1) % len(details)], faces[k + 1][1],
                          (101 * k + 13, 57 * k + 200)))
    return quads


def demo_quads() -> list[Quad]:
    """The 14 textured rectangles of the demo room (see the module docstring)."""
    floor_y, top_y = 1.5, -2.2  # floor and top edge of the walls (y is down)
    x0, x1, z0, z1 = -3.6, 3.6, -2.5, 4.5
    hgt = floor_y - top_y
    quads = [
        Quad("floor", (x0, floor_y, z1), (x1 - x0, 0, 0), (0, 0, z0 - z1), "coffee", "gravel"),
        Quad("back_wall_left", (x0, top_y, z1), ((x1 - x0) / 2, 0, 0), (0, hgt, 0), "astronaut", "brick"),
        Quad("back_wall_right", (0.0, top_y, z1), ((x1 - x0) / 2, 0, 0), (0, hgt, 0), "rocket", "brick",
             (0.15, 0.0, 0.85, 1.0), (256, 128)),
        Quad("left_wall", (x0, top_y, z0), (0, 0, z1 - z0), (0, hgt, 0), "chelsea", "grass"),
        Quad("right_wall", (x1, top_y, z1), (0, 0, z0 - z1), (0, hgt, 0), "immunohistochemistry", "gravel",
             (0.0, 0.2, 1.0, 0.8), (300, 77)),
    ]
    quads += _box("box", (0.4, 0.6), floor_y, (1.5, 1.3, 1.5), 32.0,
                  [("camera", (0, 0, 1, 1)), ("coins", (0, 0, 1, 1)), ("logo", (0.05, 0.05, 0.95, 0.95)),
                   ("clock", (0, 0, 1, 1)), ("cell", (0, 0, 1, 1))], ["grass", "gravel", "brick"])
    quads += _box("crate", (-1.9, 2.6), floor_y, (1.0, 1.6, 1.0), -24.0,
                  [("text", (0, 0, 1, 1)), ("page", (0, 0, 1, 1)), ("moon", (0, 0, 1, 1)),
                   ("microaneurysms", (0, 0, 1, 1)), ("retina", (0.05, 0.25, 0.55, 0.75))],
                  ["gravel", "brick", "grass"])
    return quads


def _load_photo(name: str) -> np.ndarray:
    """A photograph from ``skimage.data`` as float32 RGB (H, W, 3) in [0, 255]."""
    import skimage.data  # the demo's only use of scikit-image: its bundled photographs

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3].astype(np.float32)


def _cover(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop ``img`` to the aspect ratio width/height and resize it to (height, width)."""
    h, w = img.shape[:2]
    if w * height > h * width:  # too wide
        cw = max(1, int(round(h * width / height)))
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = max(1, int(round(w * height / width)))
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    interp = cv2.INTER_AREA if img.shape[1] > width else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def quad_texture(quad: Quad) -> np.ndarray:
    """The texture of ``quad``: float32 RGB (texture_size[1], texture_size[0], 3) in [0, 255].

    The photograph (cropped and resized to the face) is multiplied by ``1 + 0.15 d`` and shifted by ``8 d``,
    where ``d`` is the zero-mean, unit-variance detail texture tiled at its native resolution.
    """
    tw, th = quad.texture_size
    photo = _load_photo(quad.photo)
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = quad.crop
    photo = photo[int(y0 * h):max(int(y1 * h), int(y0 * h) + 1), int(x0 * w):max(int(x1 * w), int(x0 * w) + 1)]
    photo = _cover(photo, tw, th)
    detail = _load_photo(quad.detail)[:, :, 0]
    dh, dw = detail.shape
    reps = (th + quad.detail_offset[1]) // dh + 1, (tw + quad.detail_offset[0]) // dw + 1
    detail = np.tile(detail, reps)[quad.detail_offset[1]:quad.detail_offset[1] + th,
                                   quad.detail_offset[0]:quad.detail_offset[0] + tw]
    d = (detail - detail.mean()) / (detail.std() + 1e-6)
    d = d[:, :, None]
    return np.clip(photo * (1.0 + 0.15 * d) + 8.0 * d, 0.0, 255.0).astype(np.float32)


def mipmaps(tex: np.ndarray) -> list[np.ndarray]:
    """Box-filtered mip levels; texel j of level k is centred on level-0 coordinate 2**k (j + 0.5) - 0.5."""
    levels = [tex]
    for _ in range(MIP_LEVELS - 1):
        t = levels[-1]
        levels.append(cv2.resize(t, (t.shape[1] // 2, t.shape[0] // 2), interpolation=cv2.INTER_AREA))
    return levels


def look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_from_world rotation (3, 3) of a camera at ``centre`` looking at ``target``, image y pointing down
    (world y is down, so the horizon stays horizontal)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def _cameras(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses on an arc of radius 7 m spanning +-22 degrees around the room, 1.8 m above the look-at point,
    with a seeded jitter of a few cm. Returns R (N, 3, 3), t (N, 3), centres (N, 3)."""
    rng = np.random.default_rng([seed, 1])
    target = np.array([0.0, 0.4, 1.2])
    angles = np.radians(np.linspace(-22.0, 22.0, num_images)) if num_images > 1 else np.zeros(1)
    Rs, ts, cs = [], [], []
    for a in angles:
        c = target + np.array([7.0 * math.sin(a), -1.8, -7.0 * math.cos(a)]) + rng.uniform(-0.05, 0.05, 3)
        R = look_at(c, target + rng.uniform(-0.1, 0.1, 3))
        Rs.append(R), ts.append(-R @ c), cs.append(c)
    return np.array(Rs), np.array(ts), np.array(cs)


def render_view(quads: Sequence[Quad], textures: Sequence[list[np.ndarray]], K: np.ndarray, R: np.ndarray,
                t: np.ndarray, width: int, height: int, supersampling: int = SUPERSAMPLING) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the quads into a float32 RGB image (height, width, 3) in [0, 255], without noise. Also returns
    the z-buffer: inverse depth (1/m, 0 = background) at the 2x resolution, (s * height, s * width) float32.

    ``textures[k]`` is the mip pyramid of ``quads[k]`` (see :func:`mipmaps`); it is only read for quads in view,
    so a sequence that builds textures on demand keeps a large scene's memory bounded.

    Works at ``supersampling`` x resolution (1: no anti-aliasing of edges, 4x faster): hi-res pixel j is centred on low-res coordinate (j + 0.5) / s - 0.5,
    so ``INTER_AREA`` reduction puts low-res pixel centres where ``K`` says they are.
    """
    s = supersampling
    W, H = width * s, height * s
    K_hi = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1.0]]) @ K
    # background: a vertical grey gradient (only seen above the walls)
    grad = np.linspace(205.0, 150.0, H, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(grad * np.array([0.97, 1.0, 1.04], np.float32), (H, W, 3)).copy()
    inv_depth = np.zeros((H, W), np.float32)  # z-buffer on 1/depth: nearest hit = largest; background = 0
    Rt = np.concatenate([R, t[:, None]], axis=1)
    for index, quad in enumerate(quads):
        G = K_hi @ Rt @ np.vstack([quad.world_from_texture(), [[0.0, 0.0, 1.0]]])
        # G maps homogeneous texels to depth * [j, i, 1]; its inverse maps pixels to [x, y, 1] / depth
        tw, th = quad.texture_size
        tc = np.array([[-0.5, -0.5, 1], [tw - 0.5, -0.5, 1], [tw - 0.5, th - 0.5, 1], [-0.5, th - 0.5, 1]]).T
        pc = G @ tc
        if np.all(pc[2] <= 0):
            continue
        if not np.all(pc[2] > 0):  # straddles the camera plane: the part in front of it bounds the pixels
            pc = _clip_in_front(pc)
            if pc.size == 0:
                continue
        xy = pc[:2] / pc[2]
        c0, c1 = int(max(0, math.floor(xy[0].min()))), int(min(W, math.ceil(xy[0].max()) + 1))
        r0, r1 = int(max(0, math.floor(xy[1].min()))), int(min(H, math.ceil(xy[1].max()) + 1))
        if c0 >= c1 or r0 >= r1:
            continue
        if abs(np.linalg.det(G)) <= 1e-12 * np.linalg.norm(G) ** 3:
            continue  # the quad's plane passes through the camera centre: seen edge-on, it covers no pixel
        levels = textures[index]
        h = np.linalg.inv(G).tolist()  # python floats keep the arithmetic below in float32
        jj = np.arange(c0, c1, dtype=np.float32)[None, :]
        ii = np.arange(r0, r1, dtype=np.float32)[:, None]
        w = h[2][0] * jj + (h[2][1] * ii + h[2][2])  # 1 / depth
        with np.errstate(divide="ignore", invalid="ignore"):
            mx = (h[0][0] * jj + (h[0][1] * ii + h[0][2])) / w
            my = (h[1][0] * jj + (h[1][1] * ii + h[1][2])) / w
        hit = (w > inv_depth[r0:r1, c0:c1]) & (mx >= -0.5) & (mx < tw - 0.5) & (my >= -0.5) & (my < th - 0.5)
        rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
        if rows.size == 0:
            continue
        crop = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # only where the quad is drawn
        w, mx, my, hit = w[crop], mx[crop], my[crop], hit[crop]
        r0, r1, c0, c1 = r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1
        # mip level: log2 of the texel footprint of one hi-res pixel (the longer of d texel / d column and
        # d texel / d row, from the derivative of the homography)
        with np.errstate(divide="ignore", invalid="ignore"):
            fj = np.square(h[0][0] - h[2][0] * mx) + np.square(h[1][0] - h[2][0] * my)
            fi = np.square(h[0][1] - h[2][1] * mx) + np.square(h[1][1] - h[2][1] * my)
            lod = 0.5 * np.log2(np.maximum(np.maximum(fj, fi) / np.square(w), 1e-12))
        np.clip(lod, 0, MIP_LEVELS - 1, out=lod)
        colour = np.zeros(hit.shape + (3,), np.float32)
        for k, level in enumerate(levels):
            wk = np.maximum(0.0, 1.0 - np.abs(lod - k))
            if not wk[hit].any():
                continue
            sc = 2.0 ** -k
            sample = cv2.remap(level, (mx + 0.5) * sc - 0.5, (my + 0.5) * sc - 0.5, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
            colour += wk[:, :, None] * sample
        np.copyto(img[r0:r1, c0:c1], colour, where=hit[:, :, None])
        np.copyto(inv_depth[r0:r1, c0:c1], w, where=hit)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA), inv_depth


def _clip_in_front(polygon: np.ndarray, near: float = 1e-3) -> np.ndarray:
    """The part of a convex polygon (3, M) of homogeneous pixels ``depth * [x, y, 1]`` with depth >= ``near``
    (Sutherland-Hodgman against one plane); (3, M'), empty (size 0) when no part is that far in front."""
    out = []
    points = list(polygon.T)
    for a, b in zip(points, points[1:] + points[:1]):
        if a[2] >= near:
            out.append(a)
        if (a[2] >= near) != (b[2] >= near):
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out).T


@dataclass
class SyntheticScene:
    """Ground truth of a rendered synthetic scene (the demo room, or a collection built on the same renderer).

    ``names`` image file names (relative to ``image_dir``); ``K`` (3, 3) shared intrinsics (OpenCV pixels);
    ``R`` (N, 3, 3) and ``t`` (N, 3) cam_from_world; ``centres`` (N, 3) world metres; ``quads`` the geometry.
    """

    image_dir: Path
    names: list[str]
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    centres: np.ndarray
    width: int
    height: int
    seed: int = 0
    quads: list[Quad] = field(default_factory=demo_quads)

    def camera(self, i: int) -> StrechaCamera:
        """View ``i`` as an evaluation camera (K, cam_from_world R and t, centre, image size)."""
        return StrechaCamera(K=self.K, R=self.R[i], t=self.t[i], center=self.centres[i], width=self.width,
                             height=self.height)

    def projection(self, i: int) -> np.ndarray:
        """(3, 4) projection matrix ``K [R_i | t_i]`` of view ``i`` (OpenCV pixels)."""
        return self.camera(i).P

    def project(self, i: int, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points X (M, 3) into view i: pixels (M, 2) and depths (M,) in metres."""
        return self.camera(i).project(X)

    def relative_pose(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)) of cam_j_from_cam_i; |t| is the baseline in metres."""
        return relative_pose(self.R[i], self.t[i], self.R[j], self.t[j])

    def fundamental(self, i: int, j: int) -> np.ndarray:
        """(3, 3) ground-truth F with ``x_j^T F x_i = 0`` for OpenCV pixels x_i of view i, x_j of view j."""
        R, t = self.relative_pose(i, j)
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        Kinv = np.linalg.inv(self.K)
        F = Kinv.T @ tx @ R @ Kinv
        return F / np.linalg.norm(F)


def _quad_json(q: Quad) -> dict:
    return {"name": q.name, "origin": list(q.origin), "axis_u": list(q.axis_u), "axis_v": list(q.axis_v),
            "corners": q.corners().tolist(), "normal": np.cross(q.axis_u, q.axis_v).tolist(),
            "texture": {"photo": f"skimage.data.{q.photo}", "crop": list(q.crop), "detail": f"skimage.data.{q.detail}",
                        "detail_offset": list(q.detail_offset), "size": list(q.texture_size),
                        "texels_per_metre": TEXELS_PER_METRE}}


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """(3, 3) pinhole K with square pixels and the principal point at the image centre (OpenCV pixels)."""
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def write_view(path: Path, img: np.ndarray, seed: int, index: int) -> None:
    """Add the view's seeded gain (<= 2 %) and sensor noise to a float RGB render (H, W, 3) and write a JPEG."""
    rng = np.random.default_rng([seed, 2, index])
    gain = np.float32(1.0 + rng.uniform(-0.02, 0.02))
    img = img * gain + rng.normal(0.0, NOISE_SIGMA, img.shape).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    partial = path.with_name(path.stem + ".partial" + path.suffix)  # renamed when complete: a file is whole
    if not cv2.imwrite(str(partial), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")
    partial.replace(path)


def cameras_json(scene: SyntheticScene, description: str, planes: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``cameras.json`` document of a scene: convention, intrinsics, one entry per view, the geometry."""
    K, R, t, c = scene.K, scene.R, scene.t, scene.centres
    return {
        "convention": CONVENTION,
        "width": scene.width, "height": scene.height, "seed": scene.seed, "K": K.tolist(),
        "images": [{"name": n, "K": K.tolist(), "R": R[i].tolist(), "t": t[i].tolist(), "centre": c[i].tolist()}
                   for i, n in enumerate(scene.names)],
        "scene": {"description": description, "planes": planes},
    }


def render_demo_scene(out_dir: Path, num_images: int = 10, width: int = 1024, height: int = 768,
                      seed: int = 0) -> SyntheticScene:
    """Render the demo room into ``out_dir/images/view_XX.jpg`` and write ``out_dir/cameras.json``.

    ``seed`` drives the camera jitter (a few cm) and the sensor noise; the room itself is fixed. Returns the
    ground truth as a :class:`SyntheticScene`.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    K = intrinsics(width, height, float(width))
    R, t, centres = _cameras(num_images, seed)
    quads = demo_quads()
    textures = [mipmaps(quad_texture(q)) for q in quads]
    names = [f"view_{i:02d}.jpg" for i in range(num_images)]
    for i, name in enumerate(names):
        img, _ = render_view(quads, textures, K, R[i], t[i], width, height)
        write_view(image_dir / name, img, seed, i)
    scene = SyntheticScene(image_dir, names, K, R, t, centres, width, height, seed, quads)
    description = ("open room (floor, back wall in two halves, side walls) with two boxes; world metres, x right, "
                   "y down, z into the room; every face a different skimage photo modulated by a tiled detail texture")
    meta = cameras_json(scene, description, [_quad_json(q) for q in quads])
    (out_dir / "cameras.json").write_text(json.dumps(meta, indent=1))
    return scene


def load_scene(out_dir: Path) -> SyntheticScene:
    """Read ``out_dir/cameras.json`` (written by :func:`render_demo_scene` or another renderer of this module's
    format) back into a :class:`SyntheticScene`; ``quads`` is empty when the planes carry no photo texture."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "cameras.json").read_text())
    ims = meta["images"]
    quads = []
    for p in meta["scene"]["planes"]:
        tex = p.get("texture", {})
        if "photo" not in tex:
            continue
        quads.append(Quad(p["name"], tuple(p["origin"]), tuple(p["axis_u"]), tuple(p["axis_v"]),
                          tex["photo"].removeprefix("skimage.data."), tex["detail"].removeprefix("skimage.data."),
                          tuple(tex["crop"]), tuple(tex["detail_offset"])))
    return SyntheticScene(out_dir / "images", [m["name"] for m in ims], np.array(meta["K"]),
                          np.array([m["R"] for m in ims]), np.array([m["t"] for m in ims]),
                          np.array([m["centre"] for m in ims]), meta["width"], meta["height"], meta["seed"], quads)


@dataclass(frozen=True)
class SceneComparison:
    """Registered cameras of a reconstruction against a synthetic scene's ground truth.

    ``names`` (M,) registered views with ground truth; ``rotation_deg`` (M,) and ``position_m`` (M,) their errors
    after a similarity alignment (:func:`matcher.evaluation.sfm.absolute_pose_errors`); ``num_views`` the
    scene's view count. With fewer than 3 registered views the error arrays are empty.
    """

    names: list[str]
    rotation_deg: np.ndarray
    position_m: np.ndarray
    num_views: int

    def format(self) -> str:
        """One line: the median and max of both errors (what ``matcher demo`` prints)."""
        if len(self.names) < 3:
            return "pose error: fewer than 3 images registered"
        r, p = self.rotation_deg, self.position_m
        return (f"pose error vs ground truth ({len(self.names)} cameras, after a similarity alignment): rotation "
                f"median {np.median(r):.3f} deg (max {r.max():.3f}), position median {1000 * np.median(p):.1f} mm "
                f"(max {1000 * p.max():.1f} mm)")


def compare_to_scene(rec: "pycolmap.Reconstruction", scene: SyntheticScene, robust: bool = False) -> SceneComparison:
    """Camera poses of ``rec`` against the scene's ground truth, images matched by name."""
    poses = reconstruction_poses(rec)
    index = [i for i, name in enumerate(scene.names) if name in poses]
    names = [scene.names[i] for i in index]
    if len(index) < 3:
        return SceneComparison(names, np.zeros(0), np.zeros(0), len(scene.names))
    R_est = np.array([poses[n][0] for n in names])
    C_est = np.array([poses[n][1] for n in names])
    rotation, position = absolute_pose_errors(R_est, C_est, scene.R[index], scene.centres[index], robust=robust)
    return SceneComparison(names, rotation, position, len(scene.names))


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m matcher.evaluation.synthetic_scene OUT_DIR [--num-images N] [--width W] [--height H]
    [--seed S]``."""
    p = argparse.ArgumentParser(description="Render the matcher demo scene (images + ground-truth cameras).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-images", type=int, default=10)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    scene = render_demo_scene(a.out_dir, a.num_images, a.width, a.height, a.seed)
    print(f"wrote {len(scene.names)} images to {scene.image_dir} and cameras to {a.out_dir / 'cameras.json'}")


if __name__ == "__main__":
    main()
