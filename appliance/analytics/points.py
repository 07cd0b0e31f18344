"""Validation of landmark dictionaries shared by the 2D and 3D measurements."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from appliance.analytics.landmarks import LANDMARKS_3D
from appliance.errors import InputError

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
Points = dict[str, FloatArray]

SIDES: dict[str, str] = {"l": "L", "left": "L", "r": "R", "right": "R"}


def normalise_side(side: str | None) -> str | None:
    """``"L"``/``"R"`` from any of L, R, left, right (any case); None stays None."""
    if side is None:
        return None
    key = str(side).strip().lower()
    if key not in SIDES:
        raise InputError(f"side must be L, R, left or right, got {side!r}", reason="bad_side")
    return SIDES[key]


def parse_points(
    landmarks: Mapping[str, Sequence[float] | None],
    dim: int,
    used: Iterable[str],
) -> Points:
    """Landmarks as float arrays of length ``dim``, keeping only the names in ``used``.

    A name xr3d does not know is an error (a typo would otherwise silently drop an angle). Known
    names this measurement does not use are ignored. ``None`` or non-finite coordinates mean "not
    found" (detectors report undetected landmarks that way), so they count as missing.
    """
    if not isinstance(landmarks, Mapping):
        raise InputError("landmarks must be a mapping of name -> coordinates", reason="bad_landmarks")
    unknown = sorted(str(k) for k in landmarks if k not in LANDMARKS_3D)
    if unknown:
        raise InputError(
            f"unknown landmark name(s) {', '.join(unknown)}; known: {', '.join(LANDMARKS_3D)}",
            reason="unknown_landmark",
        )
    wanted = set(used)
    out: Points = {}
    for name, value in landmarks.items():
        if name not in wanted:
            log.debug("landmark %s not used by this measurement", name)
            continue
        if value is None:
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"landmark {name}: coordinates are not numbers", reason="bad_coordinates"
            ) from exc
        if arr.shape != (dim,):
            raise InputError(
                f"landmark {name}: expected {dim} coordinates, got shape {arr.shape}",
                reason="bad_coordinates",
            )
        if not np.all(np.isfinite(arr)):
            log.info("landmark %s has non-finite coordinates; treated as missing", name)
            continue
        out[name] = arr
    return out


def positive_finite(value: float, what: str, reason: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a number, got {value!r}", reason=reason) from exc
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be finite and positive, got {value!r}", reason=reason)
    return v
