"""Anatomical clean-up of reconstructed bone labels.

Each bone inside the 144 mm knee cube is one connected piece (distal femur, proximal tibia, fibular head
and shaft, patella) with no background cavity inside it (the labels cover cortex and marrow alike). The point
decoder labels every voxel on its own, so it can leave small islands of a bone where the films are ambiguous
(an overlap ghost along a ray) and pin-holes inside a bone. Both are impossible anatomy and both cost
surface distance far more than their volume. :func:`clean_labels` keeps, per bone, the connected pieces of at
least ``min_fraction`` of its largest piece (a thin fibula may legitimately break into two large pieces in a
reconstruction; a stray island is small), returns the rest to background, and fills background cavities
enclosed by a bone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

MIN_FRACTION: Final = 0.25
_CONN26: Final = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class CleanupStats:
    """Voxels removed (islands returned to background) and filled (cavities given the bone), per label."""

    removed: dict[int, int]
    filled: dict[int, int]


def clean_labels(
    labels: NDArray[np.uint8], bones: tuple[int, ...] = (1, 2, 3, 4), min_fraction: float = MIN_FRACTION
) -> tuple[NDArray[np.uint8], CleanupStats]:
    """A cleaned copy of ``labels`` (0 background, ``bones`` the bone labels) and what changed."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in [0, 1], got {min_fraction}")
    out = np.array(labels, dtype=np.uint8, copy=True)
    removed: dict[int, int] = {}
    filled: dict[int, int] = {}
    # Islands of every bone first, then cavities: an island of one bone inside another's cavity is
    # background by the time the cavities are filled.
    for c in bones:
        sl = _box(out == c)
        if sl is None:
            continue
        comp, n = ndimage.label(out[sl] == c, structure=_CONN26)
        if n < 2:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
        drop = (comp > 0) & ~np.isin(comp, keep)
        if drop.any():
            out[sl][drop] = 0
            removed[c] = int(drop.sum())
    for c in bones:
        sl = _box(out == c)
        if sl is None:
            continue
        sub = out[sl] == c
        holes = ndimage.binary_fill_holes(sub) & ~sub & (out[sl] == 0)
        if holes.any():
            out[sl][holes] = c
            filled[c] = int(holes.sum())
    return out, CleanupStats(removed, filled)


def _box(mask: NDArray[np.bool_]) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by one voxel (the fill needs a background border), or None."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found[0], mask.shape, strict=True)
    )
