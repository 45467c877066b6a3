"""Inference engines for SDGMNet: the same network, run by torch (reference) or by OpenVINO (optional, faster).

An engine maps patches ``(N, 1, 32, 32)`` float32 in [0, 1] to descriptors ``(N, 128)`` float32 with unit rows.

* ``torch``: the network's own forward pass under ``inference_mode`` (fused in-place FRN+TLU), in float32 or as
  a bfloat16 copy of the network; on ``device`` (``auto``: CUDA or MPS where torch has them, else the CPU).
* ``openvino``: the network converted to OpenVINO's IR once per weights file and OpenVINO version and cached on
  disk (:func:`cache_dir`); compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32 or bf16 and run as
  OpenVINO's throughput mode (parallel requests of ``batch_size`` patches). Installed by ``pip install
  matcher[fast]``.
* ``auto``: ``openvino`` when it is installed and the device is the CPU, else ``torch``.

Any failure to import, convert or compile an optional engine logs one warning and falls back to torch, so a
run never fails because of an accelerator; the engine recorded with the features (:func:`resolved_engine`) is
the one that runs, compilation included. ``precision``: ``auto`` is bfloat16 where the processor has native
bfloat16 (AVX512-BF16 or AMX, the probe of :mod:`matcher.matching`), float32 elsewhere.

Without torch: :func:`openvino_engine_of_file` builds the OpenVINO engine of a weights *file* from a cache entry
keyed by the file's bytes (its manifest keeps the file's metadata), so a run whose engine is ``openvino`` never
imports torch once the entry exists (the first run on a machine loads the weights with torch and converts them
once). This module imports torch only where an engine needs it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from matcher.errors import ConfigError, MatcherError
from matcher.matching import native_bf16

if TYPE_CHECKING:
    import torch

    from matcher.descriptors.sdgmnet import SDGMNet

PATCH_SIZE = 32  # SDGMNet's input side and output size (matcher.descriptors.sdgmnet's, without importing torch)
DESCRIPTOR_DIM = 128

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "DEVICES",
    "Engine",
    "TorchEngine",
    "OpenVINOEngine",
    "build_engine",
    "cache_dir",
    "has_cached_ir_of_file",
    "openvino_engine_of_file",
    "openvino_usable",
    "resolved_engine",
    "resolve_device",
    "resolve_engine",
    "resolve_precision",
    "weights_digest",
]

log = logging.getLogger("matcher")

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
IR_FORMAT = "sdgmnet-ir/1"  # bump when the conversion below changes: older cache entries are then ignored


class Engine(Protocol):
    """Runs SDGMNet: ``engine(patches (N, 1, 32, 32) float32) -> (N, 128) float32 unit rows``."""

    name: str
    precision: str

    def __call__(self, patches: torch.Tensor) -> torch.Tensor: ...


def _torch():  # noqa: ANN202 (the torch module)
    import torch

    return torch


def _openvino():  # noqa: ANN202 (the openvino module)
    """``import openvino`` without its model-conversion tools: the package imports ``openvino.tools.ovc`` (and
    NumPy's masked arrays) when that is importable, 0.3-0.6 s of start-up that only a conversion needs
    (:func:`_convert_to_ir` imports it then). An import error propagates as from ``import openvino``."""
    module = sys.modules.get("openvino")
    if module is not None:
        return module
    hide = "openvino.tools.ovc" not in sys.modules
    if hide:
        sys.modules["openvino.tools.ovc"] = None  # seen by openvino/__init__ as not installed (it allows that)
    try:
        import openvino
    finally:
        if hide and "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def resolve_precision(precision: str) -> str:
    """``auto`` | ``fp32`` | ``bf16`` -> ``fp32`` or ``bf16`` (``auto``: bf16 where the CPU has it natively)."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    if precision in ("fp32", "bf16"):
        return precision
    raise ConfigError(f"descriptor.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def _cpu_only_torch() -> bool:
    """Whether the installed torch is a CPU-only build (its version's ``+cpu`` tag, read without importing it)."""
    try:
        return importlib.metadata.version("torch").endswith("+cpu") and sys.platform != "darwin"
    except importlib.metadata.PackageNotFoundError:
        return False


def device_is_cpu(device: str) -> bool:
    """Whether ``device`` resolves to the CPU (:func:`resolve_device`), without importing a CPU-only torch."""
    if device == "cpu" or (device == "auto" and _cpu_only_torch()):
        return True
    if device not in DEVICES:
        raise ConfigError(f"descriptor.device must be one of {', '.join(DEVICES)}, not {device!r}")
    return resolve_device(device).type == "cpu"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU (whatever this torch build has); other names as given."""
    torch = _torch()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in DEVICES:
        raise ConfigError(f"descriptor.device must be one of {', '.join(DEVICES)}, not {device!r}")
    return torch.device(device)


def _openvino_available() -> bool:
    """Whether OpenVINO is installed (found, not imported: a broken install fails later and falls back)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # e.g. a module entry set to None: treated as missing
        return False


_openvino_probe: dict[str, str] = {}  # "ok" once OpenVINO has imported with a CPU device; else "failed": why


def openvino_usable() -> bool:
    """Whether OpenVINO is installed, imports and has its CPU plugin (a success is remembered per process).
    Resolving ``auto`` through this keeps the settings recorded with the features (``descriptor_settings``)
    equal to the engine that runs when the install is broken; a conversion or compilation failure of one
    network is only known when it is built (:func:`build_engine` then falls back to torch)."""
    if not _openvino_available():
        _openvino_probe.pop("ok", None)
        _openvino_probe["failed"] = "not installed (pip install matcher[fast])"
        return False
    if "ok" in _openvino_probe:
        return True
    try:
        ov = _openvino()

        if "CPU" not in ov.Core().available_devices:
            raise RuntimeError("no CPU device")
    except Exception as exc:  # a broken install: the torch fallback will run
        _openvino_probe["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return False
    _openvino_probe["ok"] = ""
    return True


def resolve_engine(engine: str, device: str = "auto") -> str:
    """The engine that will run: ``auto`` -> ``openvino`` when it is usable (:func:`openvino_usable`) and the
    device is the CPU, else ``torch``; ``openvino`` -> ``torch`` when OpenVINO is not usable (the fallback)."""
    if engine not in ENGINES:
        raise ConfigError(f"descriptor.engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "auto":
        return "openvino" if device_is_cpu(device) and openvino_usable() else "torch"
    if engine == "openvino" and not openvino_usable():
        return "torch"
    return engine


def weights_digest(model: SDGMNet) -> str:
    """SHA-256 of the network's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().float().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """``$MATCHER_CACHE_DIR``, else ``$XDG_CACHE_HOME/matcher``, else ``~/.cache/matcher``."""
    if os.environ.get("MATCHER_CACHE_DIR"):
        return Path(os.environ["MATCHER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "matcher"


class TorchEngine:
    """The reference: SDGMNet's forward pass in torch, ``batch_size`` patches at a time."""

    name = "torch"

    def __init__(self, model: SDGMNet, precision: str = "fp32", batch_size: int = 256, device: str = "cpu") -> None:
        torch = _torch()
        self.precision = resolve_precision(precision)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model = copy.deepcopy(model).eval().to(self.device, dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) float -> (N, 128) float32 unit rows (on the CPU)."""
        torch = _torch()
        out = []
        with torch.inference_mode():
            for i in range(0, patches.shape[0], self.batch_size):
                batch = patches[i : i + self.batch_size].to(self.device, self.dtype)
                out.append(self.model(batch.contiguous(memory_format=torch.channels_last)).float().cpu())
        if not out:
            return torch.zeros((0, self.model.descriptor_dim))
        return torch.nn.functional.normalize(torch.cat(out, 0), dim=1)


def _convert_to_ir(model: SDGMNet, batch_size: int, folder: Path) -> None:
    """Trace the network's module path (FRN and TLU as separate ops) and save OpenVINO IR in ``folder``."""
    from openvino.tools.ovc import convert_model

    ov = _openvino()
    torch = _torch()
    net = copy.deepcopy(model).float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    example = torch.zeros(batch_size, 1, PATCH_SIZE, PATCH_SIZE)
    with torch.enable_grad(), warnings.catch_warnings():  # the traced path: plain FRN/TLU modules, no in-place ops
        warnings.simplefilter("ignore")  # TracerWarning on the input-shape check, which the static shape makes moot
        traced = torch.jit.trace(net, example, check_trace=False)
        ir = convert_model(traced, example_input=example)
    ov.save_model(ir, str(folder / "model.xml"), compress_to_fp16=False)


def _intact_manifest(folder: Path) -> dict | None:
    """The manifest of the cache entry ``folder`` if it and the file hashes it lists agree, else None (missing,
    unreadable, corrupt or half-written)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        intact = all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == manifest["sha256"][name]
                     for name in ("model.xml", "model.bin"))
    except Exception:
        return None
    return manifest if intact else None


def _load_cached_ir(folder: Path):
    """(IR, manifest) in ``folder`` if the entry is intact (:func:`_intact_manifest`), else None."""
    manifest = _intact_manifest(folder)
    if manifest is None:
        return None
    try:
        return _openvino().Core().read_model(str(folder / "model.xml")), manifest
    except Exception:  # unreadable by OpenVINO: rebuilt by the caller
        return None


def openvino_ir(model: SDGMNet, batch_size: int, root: Path | None = None):
    """The network as OpenVINO IR with a static batch of ``batch_size``, from the on-disk cache or converted.

    The cache entry is keyed by the weights' digest, OpenVINO's version, the batch size and :data:`IR_FORMAT`;
    it is written to a temporary folder and renamed, and a manifest of file hashes lets a corrupt or
    half-written entry be detected and rebuilt.
    """
    ir, folder, hit, _ = _cached_ir(f"{weights_digest(model)}", lambda: (model, {}), batch_size, root)
    return ir, folder, hit


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _entry_key(identity: str, batch_size: int) -> str:
    ov = _openvino()

    return hashlib.sha256(f"{IR_FORMAT}|{identity}|{ov.get_version()}|{batch_size}".encode()).hexdigest()[:32]


def has_cached_ir_of_file(weights_path: Path, batch_size: int = 256, root: Path | None = None) -> bool:
    """Whether the IR cache holds an intact entry converted from this weights file's bytes (so the file was
    loaded and checked by :func:`matcher.descriptors.weights.load_sdgmnet` when it was written)."""
    folder = (root or cache_dir()) / "openvino" / _entry_key(f"file:{_file_sha256(Path(weights_path))}", batch_size)
    return _intact_manifest(folder) is not None


def _cached_ir(identity: str, load: Callable[[], tuple[SDGMNet, dict]], batch_size: int, root: Path | None):
    """(IR, its folder, cache hit, manifest) of the network ``identity`` names; ``load()`` gives the network and
    the metadata to keep in the manifest, and is called only when the entry must be (re)built."""
    ov = _openvino()

    root = (root or cache_dir()) / "openvino"
    key = _entry_key(identity, batch_size)
    folder = root / key
    found = _load_cached_ir(folder) if folder.exists() else None
    if found is not None:
        return found[0], folder, True, found[1]
    if folder.exists():
        log.warning("rebuilding the OpenVINO cache entry %s (corrupt or incomplete)", folder)
        shutil.rmtree(folder, ignore_errors=True)
    model, meta = load()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        _convert_to_ir(model, batch_size, tmp)
        digests = {n: hashlib.sha256((tmp / n).read_bytes()).hexdigest() for n in ("model.xml", "model.bin")}
        manifest = {"format": IR_FORMAT, "openvino": ov.get_version(), "batch_size": batch_size, "sha256": digests,
                    "meta": json.loads(json.dumps(meta, default=str)), "patch_size": int(model.patch_size),
                    "descriptor_dim": int(model.descriptor_dim)}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote the same entry first: use ours, leave theirs
            return ov.Core().read_model(str(tmp / "model.xml")), tmp, False, manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ov.Core().read_model(str(folder / "model.xml")), folder, False, manifest


class OpenVINOEngine:
    """SDGMNet compiled by OpenVINO for the CPU (f32 or bf16 inference precision), throughput mode.

    Patches are sent in static batches of ``batch_size`` (the last one zero-padded) to as many parallel infer
    requests as OpenVINO finds optimal; each batch's result lands in its own rows, so the output does not
    depend on the order in which requests finish.

    Built from a network (``model``; torch) or from a weights file (``weights_path``: the IR cache entry of the
    file's bytes, no torch when it exists; :func:`openvino_engine_of_file`). ``meta``: the weights file's
    metadata (empty when built from a network).
    """

    name = "openvino"

    def __init__(self, model: SDGMNet | None = None, precision: str = "fp32", batch_size: int = 256,
                 cache_root: Path | None = None, threads: int | None = None, *,
                 weights_path: Path | None = None) -> None:
        ov = _openvino()

        from matcher.threads import compute_threads

        self.precision = resolve_precision(precision)
        self.batch_size = batch_size
        if model is not None:
            ir, self.cache_path, self.cache_hit = openvino_ir(model, batch_size, cache_root)
            self.meta: dict[str, Any] = {}
            self.patch_size, self.dim = int(model.patch_size), int(model.descriptor_dim)
        elif weights_path is not None:
            ir, self.cache_path, self.cache_hit, manifest = _cached_ir(
                f"file:{_file_sha256(Path(weights_path))}", lambda: _load_weights(weights_path), batch_size, cache_root)
            self.meta = dict(manifest.get("meta", {}))
            self.patch_size = int(manifest.get("patch_size", PATCH_SIZE))
            self.dim = int(manifest.get("descriptor_dim", DESCRIPTOR_DIM))
        else:
            raise ValueError("OpenVINOEngine needs a model or a weights_path")
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": int(threads or compute_threads()),
        }
        core = ov.Core()
        # OpenVINO's own cache of compiled blobs (keyed by OpenVINO on the model, device and config): a second
        # run loads the blob instead of compiling (0.6 -> 0.2 s here); an unusable blob is recompiled by OpenVINO
        core.set_property({"CACHE_DIR": str(Path(cache_root or cache_dir()) / "openvino" / "compiled")})
        self.compiled = core.compile_model(ir, "CPU", config)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # One inference here, in this thread: two threads making their first inference at once can deadlock inside
        # OpenVINO's pybind11 (one initialises a static without the GIL and waits for the GIL in NumPy's call_once,
        # the other holds the GIL and waits for that static's guard; seen once with two images in flight,
        # matcher.overlap). The first inference also builds OpenVINO's primitives, which the first batch pays anyway.
        self._infer(np.zeros((1, 1, self.patch_size, self.patch_size), np.float32), np.empty((1, self.dim), np.float32))

    def __call__(self, patches: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(N, 1, 32, 32) float -> (N, 128) float32 unit rows: a NumPy array for a NumPy input (no torch), a
        tensor for a tensor."""
        as_tensor = not isinstance(patches, np.ndarray)
        x = patches.detach().float().cpu().numpy() if as_tensor else np.asarray(patches, np.float32)
        n, bs = x.shape[0], self.batch_size
        out = np.empty((n, self.dim), np.float32)
        if n > 0:
            self._infer(x, out)
        if as_tensor:
            torch = _torch()
            return torch.nn.functional.normalize(torch.from_numpy(out), dim=1)
        # torch.nn.functional.normalize's rule, x / max(|x|, 1e-12), in NumPy
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))

    def _infer(self, x: np.ndarray, out: np.ndarray) -> None:
        n, bs = x.shape[0], self.batch_size
        # Plain infer requests, results copied by this thread: no Python callback runs on OpenVINO's threads.
        # (With AsyncInferQueue callbacks, destroying the compiled model could deadlock: its destructor holds
        # the GIL while joining a worker thread that waits for the GIL to release the callback.)
        requests = [self.compiled.create_infer_request() for _ in range(self.requests)]
        in_flight: list[tuple[object, int] | None] = [None] * len(requests)

        def collect(slot: int) -> None:
            pending = in_flight[slot]
            if pending is not None:
                request, start = pending
                request.wait()
                rows = min(bs, n - start)
                out[start : start + rows] = request.get_output_tensor(0).data[:rows]
                in_flight[slot] = None

        for k, start in enumerate(range(0, n, bs)):
            slot = k % len(requests)
            collect(slot)
            batch = x[start : start + bs]
            if batch.shape[0] < bs:
                batch = np.concatenate([batch, np.zeros((bs - batch.shape[0], *batch.shape[1:]), np.float32)])
            requests[slot].start_async({0: np.ascontiguousarray(batch)})
            in_flight[slot] = (requests[slot], start)
        for slot in range(len(requests)):
            collect(slot)


def _load_weights(path: Path) -> tuple[SDGMNet, dict]:
    from matcher.descriptors.weights import load_sdgmnet

    return load_sdgmnet(str(path))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


_file_engines: dict[tuple, OpenVINOEngine | str] = {}  # key -> the engine, or why it could not be built
_file_engines_lock = threading.Lock()


def openvino_engine_of_file(weights_path: Path, precision: str = "auto", batch_size: int = 256,
                            cache_root: Path | None = None) -> OpenVINOEngine | None:
    """The OpenVINO engine of a weights file (without torch when its IR cache entry exists), built once per
    process and settings; None, after one warning, when OpenVINO is not usable or fails to convert or compile
    it. A bad weights file raises its ModelWeightsError (it is not an engine failure)."""
    if not openvino_usable():
        return None
    from matcher.threads import compute_threads

    path = Path(weights_path)
    key = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size, resolve_precision(precision), batch_size,
           str(cache_root or cache_dir()), compute_threads())
    with _file_engines_lock:
        if key not in _file_engines:
            try:
                _file_engines[key] = OpenVINOEngine(None, precision, batch_size, cache_root, weights_path=path)
            except MatcherError:
                raise
            except Exception as exc:  # conversion or compilation error: the torch reference still runs
                _file_engines[key] = _reason(exc)
                log.warning("OpenVINO engine unavailable (%s); using torch", _file_engines[key])
        built = _file_engines[key]
    return built if isinstance(built, OpenVINOEngine) else None


def resolved_engine(engine: str, device: str, weights_path: Path | None, precision: str = "auto",
                    batch_size: int = 256) -> str:
    """The engine that runs for these settings: :func:`resolve_engine`, and ``torch`` when OpenVINO imports but
    cannot build this weights file's network (so the features' recorded engine is the one that ran)."""
    chosen = resolve_engine(engine, device)
    if chosen == "openvino" and weights_path is not None:
        if openvino_engine_of_file(weights_path, precision, batch_size) is None:
            return "torch"
    return chosen


def build_engine(model: SDGMNet, engine: str = "auto", precision: str = "auto", batch_size: int = 256,
                 device: str = "auto", cache_root: Path | None = None) -> Engine:
    """The engine a configuration asks for; torch when an optional engine is missing or fails to build."""
    if engine == "openvino" and not openvino_usable():
        reason = _openvino_probe.get("failed", "")
        log.warning("OpenVINO engine unavailable (%s); using torch", reason)
    chosen = resolve_engine(engine, device)
    if chosen == "openvino":
        try:
            return OpenVINOEngine(model, precision, batch_size, cache_root)
        except Exception as exc:  # missing package, conversion or compilation error: the reference still runs
            log.warning("OpenVINO engine unavailable (%s); using torch", _reason(exc))
        return TorchEngine(model, precision, batch_size, "cpu")
    return TorchEngine(model, precision, batch_size, "cpu" if engine == "openvino" else device)
