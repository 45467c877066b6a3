"""A synthetic street of any length with known cameras: a collection for scale benchmarks (1,000+ images).

The street runs along world x. On its far side stands a facade of 3 m panels, each set back or forward by up
to 0.6 m, joined by short returns (faces along x); in front of it square pillars on every other panel
boundary (1.2-1.8 m before the facade, turned by a seeded yaw); the pavement is a row of ground panels. Every
face carries its own procedural texture (seeded noise at three scales, filled shapes, lines and lettering, all
drawn by OpenCV), so no two places on the street look alike: a collection this long must not repeat itself, or
far-apart views would match for real.

The camera walks along the street with a step of ``step`` metres (0.25 by default: 1,000 views cover 250 m),
about 1.6 m above the pavement and 5.5 m from the facade, weaving a little towards it and away, up and down,
and turning left and right by up to 20 degrees, all smooth and seeded; it looks 6 degrees down. Views are
640x480 with a 63-degree horizontal field (focal 520 px) by default, so each view sees about 7 m of facade and
overlaps its neighbours for about +-20 steps.

Views depend only on the seed and their own index, so the first N views of a longer collection are the same
files as a collection of N views. Conventions (pixels, poses, ``cameras.json``) are those of
:mod:`matcher.evaluation.synthetic_scene`, whose renderer this module uses; textures are built on demand and
only the panels near the camera are kept, so memory does not grow with the street's length.

Run ``python -m matcher.evaluation.synthetic_street OUT_DIR --num-images 1000`` to write
``OUT_DIR/images/view_0000.jpg ...`` and ``OUT_DIR/cameras.json``; :func:`street_collection` does the same
but reuses an existing folder rendered with the same parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .synthetic_scene import (
    TEXELS_PER_METRE,
    Quad,
    SyntheticScene,
    _box,
    cameras_json,
    intrinsics,
    load_scene,
    look_at,
    mipmaps,
    render_view,
    write_view,
)

__all__ = [
    "procedural_texture",
    "render_street",
    "street_cameras",
    "street_collection",
    "street_quads",
]

PANEL_WIDTH = 3.0  # metres of facade per panel
FACADE_Z = 6.0  # mean facade distance from the street's axis (world z)
GROUND_Y = 1.5  # pavement (y is down)
FACADE_TOP_Y = -4.5  # top edge of the facade
GROUND_NEAR_Z = -1.0  # the pavement starts behind the cameras
PROCEDURAL = "procedural"  # Quad.photo of faces textured by procedural_texture
SUPERSAMPLING = 1  # edges are not anti-aliased (textures are, by mip-mapping): 4x faster than the demo's 2
FORMAT_VERSION = 2  # bump when the rendering changes, so cached collections are rendered again


def _panel_rng(seed: int, kind: str, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), k + 1000])


def _facade_depth(seed: int, k: int) -> float:
    return FACADE_Z + float(_panel_rng(seed, "depth", k).uniform(-0.6, 0.6))


def _panel_quads(seed: int, k: int) -> list[Quad]:
    """The quads of panel ``k`` (x in [3k, 3k + 3]): facade, return to panel k + 1, pavement, maybe a pillar."""
    x0, x1 = k * PANEL_WIDTH, (k + 1) * PANEL_WIDTH
    z, z_next = _facade_depth(seed, k), _facade_depth(seed, k + 1)
    height = GROUND_Y - FACADE_TOP_Y
    quads = [
        Quad(f"facade{k}", (x0, FACADE_TOP_Y, z), (PANEL_WIDTH, 0.0, 0.0), (0.0, height, 0.0), PROCEDURAL, ""),
        Quad(f"ground{k}", (x0, GROUND_Y, max(z, z_next)), (PANEL_WIDTH, 0.0, 0.0), (0.0, 0.0, GROUND_NEAR_Z - max(z, z_next)),
             PROCEDURAL, ""),
    ]
    if abs(z_next - z) > 1e-6:  # the return seen from the street: from the nearer panel's face towards the deeper
        quads.append(Quad(f"return{k}", (x1, FACADE_TOP_Y, min(z, z_next)), (0.0, 0.0, abs(z_next - z)),
                          (0.0, height, 0.0), PROCEDURAL, ""))
    if k % 2 == 1:
        rng = _panel_rng(seed, "pillar", k)
        size = (float(rng.uniform(0.4, 0.7)), float(rng.uniform(2.2, 4.0)), float(rng.uniform(0.4, 0.7)))
        centre = (x1, min(z, z_next) - float(rng.uniform(1.2, 1.8)))
        quads += _box(f"pillar{k}", centre, GROUND_Y, size, float(rng.uniform(-30.0, 30.0)),
                      [(PROCEDURAL, (0.0, 0.0, 1.0, 1.0))] * 5, [""])
    return quads


def street_quads(x_min: float, x_max: float, seed: int = 0) -> list[Quad]:
    """Every quad of the panels that cover world x in [x_min, x_max], in panel order."""
    first, last = math.floor(x_min / PANEL_WIDTH), math.ceil(x_max / PANEL_WIDTH)
    return [q for k in range(first, last + 1) for q in _panel_quads(seed, k)]


def street_cameras(num_images: int, step: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses of views 0..N-1: R (N, 3, 3) and t (N, 3) cam_from_world, centres (N, 3); view i depends on
    (seed, i) only. The camera is at x = i * step, weaving in z (+-0.5 m), y (+-0.25 m) and yaw (+-20 deg)."""
    rng = np.random.default_rng([seed, 7])
    phases = rng.uniform(0.0, 2 * math.pi, 3)
    Rs, ts, cs = [], [], []
    for i in range(num_images):
        x = i * step
        centre = np.array([
            x,
            GROUND_Y - 1.6 + 0.25 * math.sin(2 * math.pi * x / 5.3 + phases[0]),
            0.5 * math.sin(2 * math.pi * x / 11.7 + phases[1]),
        ])
        yaw = math.radians(20.0) * math.sin(2 * math.pi * x / 8.9 + phases[2])
        pitch = math.radians(6.0)
        direction = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        R = look_at(centre, centre + direction)
        Rs.append(R), ts.append(-R @ centre), cs.append(centre)
    return np.array(Rs).reshape(-1, 3, 3), np.array(ts).reshape(-1, 3), np.array(cs).reshape(-1, 3)


def procedural_texture(quad: Quad, seed: int = 0) -> np.ndarray:
    """A texture unique to ``quad.name`` and ``seed``: float32 RGB (texture_size[1], texture_size[0], 3) in [0, 255].

    A random base colour, seeded noise at cells of 96, 24 and 6 texels (cubic interpolation), then filled
    ellipses, rectangles, polylines and lettering in random colours, sizes and places (about 12 per m^2).
    """
    tw, th = quad.texture_size
    rng = np.random.default_rng([seed, zlib.crc32(quad.name.encode())])
    img = np.empty((th, tw, 3), np.float32)
    img[:] = rng.uniform(60.0, 190.0, 3)
    for cell, amplitude in ((96, 30.0), (24, 22.0), (6, 14.0)):
        grid = rng.normal(0.0, 1.0, (th // cell + 3, tw // cell + 3, 3)).astype(np.float32)
        grid[:, :, 1:] = 0.6 * grid[:, :, :1] + 0.4 * grid[:, :, 1:]  # mostly luminance
        up = cv2.resize(grid, ((tw // cell + 3) * cell, (th // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
        img += amplitude * up[cell:cell + th, cell:cell + tw]
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    area = (tw / TEXELS_PER_METRE) * (th / TEXELS_PER_METRE)
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    for _ in range(int(12 * area)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, tw)), int(rng.integers(0, th))
        size = int(rng.integers(4, 48))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.ellipse(canvas, (x, y), (size, int(rng.integers(3, 48))), float(rng.uniform(0, 180)), 0, 360, colour,
                        -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (x, y), (x + size, y + int(rng.integers(4, 48))), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            points = (np.array([x, y]) + rng.integers(-60, 61, (int(rng.integers(2, 5)), 2))).astype(np.int32)
            cv2.polylines(canvas, [points], False, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            text = "".join(rng.choice(list(letters), int(rng.integers(2, 7))))
            cv2.putText(canvas, text, (x, y), int(rng.choice([0, 2, 3, 4])), float(rng.uniform(0.5, 2.5)), colour,
                        int(rng.integers(1, 4)), cv2.LINE_AA)
    return canvas.astype(np.float32)


class _Textures(Sequence):
    """Mip pyramids of ``quads`` built on first use, the ``capacity`` most recently used kept."""

    def __init__(self, quads: list[Quad], seed: int, capacity: int = 96) -> None:
        self.quads, self.seed, self.capacity = quads, seed, capacity
        self.cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.quads)

    def __getitem__(self, index: int) -> list[np.ndarray]:  # type: ignore[override]
        if index in self.cache:
            self.cache.move_to_end(index)
        else:
            self.cache[index] = mipmaps(procedural_texture(self.quads[index], self.seed))
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        return self.cache[index]


def _near(quads: list[Quad], centre: np.ndarray, radius: float) -> list[int]:
    return [k for k, q in enumerate(quads) if np.abs(q.corners()[:, 0] - centre[0]).min() < radius
            or q.corners()[:, 0].min() <= centre[0] <= q.corners()[:, 0].max()]


def _plane_json(q: Quad, seed: int) -> dict:
    return {"name": q.name, "origin": list(q.origin), "axis_u": list(q.axis_u), "axis_v": list(q.axis_v),
            "corners": q.corners().tolist(), "normal": np.cross(q.axis_u, q.axis_v).tolist(),
            "texture": {"procedural": {"name": q.name, "seed": seed}, "size": list(q.texture_size)}}


def _parameters(num_images: int, width: int, height: int, focal: float, step: float, seed: int) -> dict:
    return {"kind": "street", "version": FORMAT_VERSION, "num_images": num_images, "width": width, "height": height,
            "focal": focal, "step": step, "seed": seed}


def render_street(out_dir: Path, num_images: int = 1000, width: int = 640, height: int = 480,
                  focal: float | None = None, step: float = 0.25, seed: int = 0) -> SyntheticScene:
    """Render the street into ``out_dir/images/view_NNNN.jpg`` and write ``out_dir/cameras.json`` (last, so a
    folder with a cameras.json is complete). ``focal`` defaults to 520 px per 640 px of width.

    An interrupted render resumes: views already written with the same settings (``out_dir/settings.json``)
    are kept (each image file is renamed into place only when complete).
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    focal = float(focal if focal is not None else 520.0 * width / 640.0)
    settings = dict(_parameters(0, width, height, focal, step, seed), num_images=None)
    settings_path = out_dir / "settings.json"
    if image_dir.is_dir() and (not settings_path.is_file() or json.loads(settings_path.read_text()) != settings):
        for stale in image_dir.glob("view_*.jpg"):
            stale.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings))
    K = intrinsics(width, height, focal)
    R, t, centres = street_cameras(num_images, step, seed)
    x_max = centres[:, 0].max() if num_images else 0.0
    quads = street_quads(-12.0, x_max + 12.0, seed)
    textures = _Textures(quads, seed)
    names = [f"view_{i:04d}.jpg" for i in range(num_images)]
    for i, name in enumerate(names):
        if (image_dir / name).is_file():
            continue
        near = _near(quads, centres[i], 12.0)
        img, _ = render_view([quads[k] for k in near], _Subset(textures, near), K, R[i], t[i], width, height,
                             supersampling=SUPERSAMPLING)
        write_view(image_dir / name, img, seed, i)
    scene = SyntheticScene(image_dir, names, K, R, t, centres, width, height, seed, quads)
    description = (f"a street along world x: a facade of {PANEL_WIDTH:g} m panels at z = {FACADE_Z:g} +- 0.6 m, "
                   "pillars in front of it, the pavement at y = 1.5; every face a unique procedural texture; "
                   "world metres, x along the street, y down, z towards the facade")
    meta = cameras_json(scene, description, [_plane_json(q, seed) for q in quads])
    meta["parameters"] = _parameters(num_images, width, height, focal, step, seed)
    (out_dir / "cameras.json").write_text(json.dumps(meta, indent=1))
    return scene


class _Subset(Sequence):
    def __init__(self, textures: _Textures, index: list[int]) -> None:
        self.textures, self.index = textures, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> list[np.ndarray]:  # type: ignore[override]
        return self.textures[self.index[k]]


def street_collection(out_dir: Path, num_images: int = 1000, width: int = 640, height: int = 480,
                      step: float = 0.25, seed: int = 0) -> SyntheticScene:
    """The street in ``out_dir``: loaded when it was already rendered there with the same parameters and all
    its images are present, else rendered (see :func:`render_street`)."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "cameras.json"
    focal = 520.0 * width / 640.0
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("parameters") == _parameters(num_images, width, height, focal, step, seed) and all(
                (out_dir / "images" / m["name"]).is_file() for m in meta["images"]):
            return load_scene(out_dir)
        meta_path.unlink()
    return render_street(out_dir, num_images, width, height, focal, step, seed)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m matcher.evaluation.synthetic_street OUT_DIR [--num-images N] [--width W] [--height H]
    [--step S] [--seed S]``."""
    p = argparse.ArgumentParser(description="Render the synthetic street (images + ground-truth cameras).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--step", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    scene = street_collection(a.out_dir, a.num_images, a.width, a.height, a.step, a.seed)
    print(f"{len(scene.names)} images in {scene.image_dir}, cameras in {a.out_dir / 'cameras.json'}")


if __name__ == "__main__":
    main()
