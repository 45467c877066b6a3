"""What makes the stages' HDF5 files reusable: settings fingerprints and image content keys.

A features file keeps the fingerprint of the settings it was computed with (the sections ``images``,
``detection``, ``patches``, ``descriptor``, the descriptor weights' SHA-256 and the masks' digest); a matches file
keeps that fingerprint plus the ``matching`` and ``verification`` sections. A file of other settings that holds
results is refused without ``overwrite``. Every image's SHA-1 is kept with its features and with each pair's
matches, so the results of an edited photo are recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from matcher.descriptors import descriptor_settings, resolve_weights
from matcher.errors import IncompatibleDatabaseError, StorageError
from matcher.matching import resolve_matching_engine, similarity_precision
from matcher.storage import ensure_space

__all__ = [
    "FEATURE_SECTIONS", "MATCH_SECTIONS", "fingerprint", "match_fingerprint", "matching_engine", "feature_settings",
    "make_folder", "open_cache", "same_content_groups",
]

FEATURE_SECTIONS = ("images", "detection", "patches", "descriptor")
MATCH_SECTIONS = FEATURE_SECTIONS + ("matching", "verification")
_MATCH_ONLY = ("matching", "verification")


def _section_data(name: str, section: Any, descriptor_engine: str | None = None, pairs: int | None = None) -> dict:
    data = dict(section.__dict__)  # a copy: the config is not touched
    if name == "descriptor":
        data.pop("batch_size", None)  # does not change results
    if name == "detection" and data.get("max_orientations", 1) == 1:
        data.pop("max_orientations", None)  # recorded only when on: files from before the setting stay valid
    if name == "matching":
        for key in ("threads", "workers"):
            data.pop(key, None)
        engine = resolve_matching_engine(getattr(section, "engine", "auto"), section.precision, descriptor_engine,
                                         pairs)
        if engine == "torch":  # recorded as before the numpy engine existed: torch's caches stay valid
            data.pop("engine", None)
            # ``auto`` as what it resolves to (torch's dtype names, as recorded since the first release)
            data["precision"] = "torch.bfloat16" if similarity_precision(section.precision) == "bf16" else "torch.float32"
        else:
            data.update(engine=engine, precision="fp32")
    return data


def fingerprint(sections: dict[str, Any], masks: str = "", pairs: int | None = None) -> str:
    """JSON of the settings in ``sections`` (name -> config section) that change results.

    ``masks``: :func:`matcher.masks.masks_digest` of the run (the masks' content, not their folder's path).
    ``pairs``: how many pairs the run matches (the matching engine ``auto`` resolves with it).
    """
    data = {name: _section_data(name, section) for name, section in sections.items() if name != "matching"}
    if "images" in data and data["images"].pop("mask_dir", ""):
        data["masks_sha256"] = masks
    descriptor = sections.get("descriptor")
    if descriptor is not None and descriptor.name == "sdgmnet":
        path = resolve_weights(descriptor.weights)
        data["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        data["descriptor"].update(descriptor_settings(descriptor), bf16=None)  # auto -> resolved
    if "matching" in sections:  # its engine follows the descriptor engine that ran (``auto``)
        data["matching"] = _section_data("matching", sections["matching"], _descriptor_engine(data), pairs)
    return json.dumps(data, sort_keys=True)


def _descriptor_engine(data: dict) -> str | None:
    """The descriptor engine recorded in fingerprint data (None: rootsift, or no descriptor section)."""
    descriptor = data.get("descriptor") or {}
    return descriptor.get("engine") if descriptor.get("name") == "sdgmnet" else None


def matching_engine(features_fingerprint: str, matching: Any, pairs: int | None = None) -> str:
    """The matching engine (``torch`` or ``numpy``) for ``pairs`` pairs of features of this fingerprint."""
    return resolve_matching_engine(getattr(matching, "engine", "auto"), matching.precision,
                                   _descriptor_engine(json.loads(features_fingerprint)), pairs)


def match_fingerprint(features_fingerprint: str, matching: Any, verification: Any, pairs: int | None = None) -> str:
    """The matches file's fingerprint: the features file's plus the ``matching`` and ``verification`` sections
    (equal to :func:`fingerprint` over :data:`MATCH_SECTIONS`) for a run of ``pairs`` pairs."""
    data = json.loads(features_fingerprint)
    data.update(matching=_section_data("matching", matching, _descriptor_engine(data), pairs),
                verification=_section_data("verification", verification))
    return json.dumps(data, sort_keys=True)


def feature_settings(path: Path, store: Any) -> dict:
    """The settings a features file was computed with (its fingerprint, parsed); IncompatibleDatabaseError when
    the file has none (not written by :func:`matcher.stages.extract_features`)."""
    stored = store.file.attrs.get("fingerprint", None)
    if stored is None:
        raise IncompatibleDatabaseError(f"{path}: not a features file of this program (no settings recorded)")
    return json.loads(stored)


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) for a stage's output; StorageError naming it when that fails."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None


def open_cache(store_type: type, path: Path, fingerprint: str, overwrite: bool):  # noqa: ANN201 (a store)
    """Open (create) a cache for this run's settings. A cache of other settings that holds results is refused
    without ``overwrite``; one that holds nothing (a run that failed before computing anything) is reused. The
    fingerprint is written only when it changes (a write can fail on a full disk). Its folder is created."""
    make_folder(Path(path).parent)
    store = store_type(path, "a")
    stored = store.file.attrs.get("fingerprint", None)
    if stored is not None and stored != fingerprint and len(store.file.keys()) > 0:
        store.close()
        if not overwrite:
            raise IncompatibleDatabaseError(
                f"{path}: cached {store_type.kind} were computed with other settings; "
                "pass --overwrite to recompute them"
            )
        Path(path).unlink()
        store = store_type(path, "a")
    if store.file.attrs.get("fingerprint", None) != fingerprint:
        ensure_space(path, 4096, "the cache's settings")
        store.file.attrs["fingerprint"] = fingerprint
    return store


def same_content_groups(
    image_dir: Path, names: list[str], hashes: dict[str, str] | None = None
) -> dict[str, str]:
    """name -> why it is left out: the earlier name it duplicates (same bytes, or the same name up to letter
    case), or that it cannot be read. ``hashes`` is filled with the SHA-1 of every file read (the caches'
    content keys: features and matches of a changed file are recomputed)."""
    seen_hash: dict[str, str] = {}
    seen_lower: dict[str, str] = {}
    duplicate_of: dict[str, str] = {}
    for name in names:
        lower = name.lower()
        if lower in seen_lower:
            duplicate_of[name] = f"name differs from {seen_lower[lower]} only by letter case"
            continue
        seen_lower[lower] = name
        try:
            with open(Path(image_dir) / name, "rb") as file:
                digest = hashlib.file_digest(file, "sha1").hexdigest()
        except OSError as exc:
            duplicate_of[name] = f"cannot read file ({exc.strerror or exc})"
            continue
        if hashes is not None:
            hashes[name] = digest
        if digest in seen_hash:
            duplicate_of[name] = f"same file content as {seen_hash[digest]}"
            continue
        seen_hash[digest] = name
    return duplicate_of
