"""Stage 1, extraction: image files -> ``features.h5`` (keypoints, descriptors, image size, focal prior).

:func:`extract_features` is resumable: images whose features the file already holds (same settings, same file
content, valid checksums) are skipped. Results are written in name order by the calling process, whether they
are computed here or on a Ray cluster (:mod:`matcher.distributed`), so the file does not depend on where they
were computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matcher.colmap_db import focal_prior
from matcher.config import DescriptorConfig, DetectionConfig, ImagesConfig, PatchConfig, PipelineConfig
from matcher.descriptors import Descriptor, build_descriptor, describe_orientations
from matcher.detect import detect_keypoints
from matcher.errors import ImageReadError
from matcher.images import list_images, read_image, resize_for_detection
from matcher.masks import masks_digest, read_mask, resize_mask, unmasked
from matcher.overlap import extraction_workers, once, ordered_map
from matcher.progress import progress_bar
from matcher.stages.cache import fingerprint, open_cache, same_content_groups
from matcher.storage import FeatureStore, ImageFeatures

__all__ = ["ExtractionCounts", "FeatureSettings", "extract_features", "extract_image"]

log = logging.getLogger("matcher")


@dataclass(frozen=True)
class FeatureSettings:
    """The config sections extraction reads (and that key the features file)."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> FeatureSettings:
        """The extraction sections of a whole pipeline configuration."""
        return cls(config.images, config.detection, config.patches, config.descriptor)

    def sections(self) -> dict:
        return {"images": self.images, "detection": self.detection, "patches": self.patches,
                "descriptor": self.descriptor}


@dataclass
class ExtractionCounts:
    """What :func:`extract_features` did: ``used`` images (name order; ``reused`` of them were in the file
    already) and ``skipped`` ones with the reason (duplicates, unreadable files, no keypoints)."""

    used: list[str] = field(default_factory=list)
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def extract_image(
    image_dir: Path, name: str, settings: FeatureSettings, descriptor: Callable[[], Descriptor]
) -> ImageFeatures:
    """Detect and describe one image: (N, 2) full-resolution keypoints, (N, D) descriptors, size, focal prior.

    ``descriptor``: returns the descriptor to use (called only once detection found keypoints, so a folder of
    unreadable files never loads a network). Raises ImageReadError naming the file when it cannot be used.
    """
    image = read_image(image_dir, name)
    mask = read_mask(settings.images.mask_dir, name, image.width, image.height)
    small, sx, sy = resize_for_detection(image.gray, settings.images.max_edge)
    if mask is None:
        keypoints = detect_keypoints(small, settings.detection)
    else:  # COLMAP's rule, exactly, at full resolution (the detection mask is its resized copy)
        keypoints = detect_keypoints(small, settings.detection, resize_mask(mask, small.shape[1], small.shape[0]))
        keypoints = keypoints.select(unmasked(keypoints.rescaled(sx, sy).xy, mask))
    if len(keypoints) == 0:
        why = "masked out" if mask is not None else "image too small or too flat"
        raise ImageReadError(f"{Path(image_dir) / name}: no keypoints ({why})")
    focal, has_prior = focal_prior(Path(image_dir) / name, image.width, image.height)
    descriptors, extra_descriptors = describe_orientations(descriptor(), small, keypoints)
    full = keypoints.rescaled(sx, sy)
    return ImageFeatures(
        keypoints=full.xy, scales=full.scales, orientations=full.orientations, scores=full.scores,
        descriptors=descriptors, width=image.width, height=image.height, focal=focal, focal_prior=has_prior,
        extra_orientations=full.extra_orientations, extra_index=full.extra_index,
        extra_descriptors=extra_descriptors if keypoints.num_extra else None,
    )


def extract_batch(
    image_dir: Path, names: Sequence[str], settings: FeatureSettings, descriptor: Callable[[], Descriptor]
) -> list[ImageFeatures | str]:
    """:func:`extract_image` over ``names``: features, or the one-line ImageReadError message of a skipped file."""
    results: list[ImageFeatures | str] = []
    for name in names:
        try:
            results.append(extract_image(image_dir, name, settings, descriptor))
        except ImageReadError as exc:
            results.append(str(exc))
    return results


def _local_results(
    image_dir: Path, todo: list[str], settings: FeatureSettings
) -> Iterator[tuple[str, ImageFeatures | str]]:
    # two images in flight (matcher.overlap): decode/detection of one beside the network of the other
    descriptor = once(lambda: build_descriptor(settings.descriptor, settings.patches))
    work = lambda name: (name, extract_batch(image_dir, [name], settings, descriptor)[0])  # noqa: E731
    yield from ordered_map(work, todo, workers=extraction_workers())


def extract_features(
    image_dir: Path,
    features_path: Path,
    names: Sequence[str] | None = None,
    settings: FeatureSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    ray: str | None = None,
) -> ExtractionCounts:
    """Features of ``names`` (default: every image under ``image_dir``) into ``features_path``, resumably.

    Files with the same content as an earlier name (or a name differing only by letter case) and unreadable
    files are skipped, as are images without keypoints; the reasons are in the returned counts (and logged).

    Args:
        settings: the ``images``, ``detection``, ``patches`` and ``descriptor`` sections (default: defaults).
        overwrite: replace a features file computed with other settings (else IncompatibleDatabaseError).
        ray: a Ray cluster address (``"auto"``: join or start a local one) to extract on, in batches of images.

    Raises:
        IncompatibleDatabaseError: the file holds features of other settings and ``overwrite`` is False.
        StorageError: a write failed (the file stays consistent; a rerun resumes).
    """
    image_dir, settings = Path(image_dir), settings or FeatureSettings()
    names = list(names) if names is not None else list_images(image_dir)
    counts = ExtractionCounts()
    hashes: dict[str, str] = {}  # name -> SHA-1 of the file: the content key of its features
    left_out = same_content_groups(image_dir, names, hashes)
    for name, reason in left_out.items():
        log.warning("skipped %s: %s", image_dir / name, reason)
        counts.skipped.append((name, reason))
    names = [n for n in names if n not in left_out]
    mask_dir = settings.images.mask_dir
    key = fingerprint(settings.sections(), masks_digest(mask_dir, list_images(image_dir)) if mask_dir else "")
    with open_cache(FeatureStore, Path(features_path), key, overwrite) as store:
        todo = [n for n in names if not store.usable(n, hashes[n])]
        done = set(names) - set(todo)
        counts.reused = len(done)
        if ray:
            from matcher.distributed import extract_on_ray

            results = extract_on_ray(ray, image_dir, todo, settings)
        else:
            results = _local_results(image_dir, todo, settings)
        bar = progress_bar(total=len(todo), enabled=progress, desc="extract", unit="img", leave=False)
        try:
            for name, result in results:
                bar.update(1)
                if isinstance(result, str):
                    log.warning("skipped %s", result)
                    counts.skipped.append((name, result.split(": ", 1)[-1]))
                    continue
                store.write(name, result, descriptor=settings.descriptor.name, content=hashes[name])
                done.add(name)
                log.info("extracted %s (%d keypoints) [%d/%d]", name, len(result), len(done), len(names))
        finally:
            results.close()  # Ray: batches still in flight are cancelled
            bar.close()
    counts.used = [n for n in names if n in done]
    return counts
