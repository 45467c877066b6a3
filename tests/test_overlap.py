"""matcher.overlap: results in input order, errors at their item's turn, bounded look-ahead, a lazy value built once."""

from __future__ import annotations

import threading
import time

import pytest

from matcher.overlap import once, ordered_map


def test_results_come_in_input_order_whatever_finishes_first() -> None:
    delays = [0.05, 0.0, 0.03, 0.0, 0.01]

    def slow(i: int) -> int:
        time.sleep(delays[i])
        return i * 10

    assert list(ordered_map(slow, range(5), workers=2)) == [0, 10, 20, 30, 40]
    assert list(ordered_map(slow, range(5), workers=1)) == [0, 10, 20, 30, 40]


def test_an_error_is_raised_at_its_items_turn() -> None:
    def fail_on_two(i: int) -> int:
        if i == 2:
            raise ValueError("image 2 is unreadable")
        return i

    got = []
    with pytest.raises(ValueError, match="image 2"):
        for x in ordered_map(fail_on_two, range(5), workers=2):
            got.append(x)
    assert got == [0, 1]


def test_look_ahead_is_bounded() -> None:
    started: list[int] = []
    gen = ordered_map(lambda i: started.append(i) or i, range(100), workers=2, ahead=1)
    assert next(gen) == 0
    time.sleep(0.05)
    assert len(started) <= 4  # the consumed item, two workers' items and one ahead at most
    gen.close()


def test_once_builds_a_single_time_across_threads() -> None:
    calls = []

    def build() -> object:
        calls.append(1)
        time.sleep(0.02)
        return object()

    get = once(build)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(s is seen[0] for s in seen)


def test_overlapped_extraction_writes_what_one_image_at_a_time_computes(small_scene, tmp_path) -> None:
    """extract_features (two images in flight when torch may use 2 threads) = extract_image in a loop."""
    import numpy as np
    import torch

    from matcher.config import load_config
    from matcher.descriptors import build_descriptor
    from matcher.overlap import extraction_workers
    from matcher.stages.extract import FeatureSettings, extract_features, extract_image
    from matcher.storage import FeatureStore

    config = load_config("default", [{"images": {"max_edge": 480}, "detection": {"max_keypoints": 200},
                                      "descriptor": {"engine": "torch", "precision": "fp32"}}])
    settings = FeatureSettings.from_config(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert extraction_workers() == 2
        counts = extract_features(small_scene, tmp_path / "f.h5", settings=settings)
        descriptor = build_descriptor(settings.descriptor, settings.patches)
        expected = {n: extract_image(small_scene, n, settings, lambda: descriptor) for n in counts.used}
    finally:
        torch.set_num_threads(threads)
    assert len(counts.used) == 4
    with FeatureStore(tmp_path / "f.h5", "r") as store:
        for name, features in expected.items():
            stored = store.read(name)
            np.testing.assert_array_equal(stored.keypoints, features.keypoints)
            np.testing.assert_allclose(stored.descriptors, features.descriptors, atol=1e-6)
