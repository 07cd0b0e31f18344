"""Anatomical clean-up of reconstructed labels: islands go, cavities fill, other bones are never touched."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.recon.label_cleanup import clean_labels


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    g = np.indices(shape).astype(float)
    return ((g - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= r * r


def test_island_removed_cavity_filled_neighbour_untouched() -> None:
    shape = (40, 40, 40)
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, (20, 20, 12), 8)] = 1  # femur
    lab[_ball(shape, (20, 20, 12), 2)] = 0  # a cavity inside it
    lab[30:32, 30:32, 30:32] = 1  # a stray femur island
    lab[_ball(shape, (20, 20, 30), 6)] = 2  # tibia, touching nothing
    lab[2:4, 2:4, 2:4] = 2  # a tibia island
    out, stats = clean_labels(lab)
    assert stats.removed == {1: 8, 2: 8}
    assert stats.filled[1] == int(_ball(shape, (20, 20, 12), 2).sum())
    assert out[30, 30, 30] == 0 and out[2, 2, 2] == 0 and out[20, 20, 12] == 1
    # Nothing else changed.
    changed = out != lab
    assert set(np.unique(lab[changed])) <= {0, 1, 2} and changed.sum() == 16 + stats.filled[1]
    again, stats2 = clean_labels(out)
    assert np.array_equal(again, out) and not stats2.removed and not stats2.filled


def test_two_large_pieces_of_a_thin_bone_both_stay() -> None:
    lab = np.zeros((30, 30, 60), np.uint8)
    lab[10:13, 10:13, 2:28] = 3  # fibula shaft broken in the middle
    lab[10:13, 10:13, 31:50] = 3
    out, stats = clean_labels(lab)
    assert np.array_equal(out, lab) and stats.removed == {}


def test_cavity_holding_another_bone_is_not_filled() -> None:
    shape = (30, 30, 30)
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, (15, 15, 15), 10)] = 1
    lab[_ball(shape, (15, 15, 15), 3)] = 4  # another label enclosed: not background, stays
    out, _ = clean_labels(lab)
    assert np.array_equal(out, lab)


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="min_fraction"):
        clean_labels(np.zeros((4, 4, 4), np.uint8), min_fraction=1.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), density=st.floats(0.05, 0.6))
def test_cleanup_only_moves_voxels_between_a_bone_and_background(seed: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    lab = np.where(rng.random((12, 12, 12)) < density, rng.integers(1, 5, (12, 12, 12)), 0).astype(np.uint8)
    out, stats = clean_labels(lab)
    changed = out != lab
    # A voxel either lost its bone (-> 0) or was background and gained one: never bone -> other bone.
    assert np.all((out[changed] == 0) | (lab[changed] == 0))
    assert sum(stats.removed.values()) + sum(stats.filled.values()) == int(changed.sum())
    # No background voxel is enclosed by a single bone afterwards.
    from scipy import ndimage

    for c in range(1, 5):
        m = out == c
        assert not np.any(ndimage.binary_fill_holes(m) & ~m & (out == 0))
