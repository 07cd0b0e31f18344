"""A landmark detection on one film (:class:`Detection`) and the pure choices made about it: which leg a
film's detection belongs to and whether its medial/lateral labels are plausible."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Detection:
    """Landmarks of one film: ``points`` (N, 2) film (col, row), ``confidence`` (N,) in [0, 1]
    (stage 2's peak where a crop refined the point, else stage 1's), and the stage-1 guesses."""

    names: tuple[str, ...]
    points: F64
    confidence: F64
    coarse_points: F64
    coarse_confidence: F64
    refined: NDArray[np.bool_]
    timings_s: Mapping[str, float] = field(default_factory=dict)
    backend: str = ""
    model_versions: Mapping[str, str] = field(default_factory=dict)
    side: str | None = None  # "R" / "L": the leg the models were asked to measure; None: not asked
    # Stage 1's femur / tibia probabilities (2, h, w) on its stride-4 grid, and that grid's
    # (col, row, 1) -> film (col, row, 1) affine; None for models without a mask output.
    bone_masks: F32 | None = None
    mask_to_film: F64 | None = None
    # The crop stage's points before stage 3 moved them; None when no fine stage ran.
    crop_points: F64 | None = None

    @property
    def mean_confidence(self) -> float:
        return float(np.mean(self.confidence)) if len(self.confidence) else 0.0

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """name -> (col, row), for :func:`appliance.analytics.angles2d.measure_2d`."""
        return {n: (float(p[0]), float(p[1])) for n, p in zip(self.names, self.points, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {
            "landmarks": {
                n: {
                    "col": float(p[0]),
                    "row": float(p[1]),
                    "confidence": float(c),
                    "refined": bool(r),
                }
                for n, p, c, r in zip(self.names, self.points, self.confidence, self.refined, strict=True)
            },
            "side": self.side,
            "timings_s": dict(self.timings_s),
            "backend": self.backend,
            "model_versions": dict(self.model_versions),
        }


def normalise_side(side: str | None) -> str | None:
    """ "R" / "L" from R, L, right, left (any case); None for None, "" or anything else unknown."""
    if side is None:
        return None
    s = str(side).strip().upper()
    return {"R": "R", "RIGHT": "R", "L": "L", "LEFT": "L"}.get(s)


def plausible_labels(det: Detection) -> bool:
    """Medial/lateral labels that can describe one leg seen as ``det.side``: femoral condyles and
    tibial plateaus ordered the same way across the film, and the side they imply equal to ``det.side``
    (when it is set)."""
    p = det.as_dict()
    try:
        fem = float(p["LDFC"][0] - p["MDFC"][0])
        tib = float(p["LTP"][0] - p["MTP"][0])
    except KeyError:
        return True
    if fem * tib <= 0:
        return False
    return det.side is None or apparent_side(det) == det.side


def pick_leg(legs: Iterable[Detection]) -> Detection:
    """The documented choice among detections of unknown side: those with :func:`plausible_labels`
    first, then the higher mean landmark confidence."""
    return max(legs, key=lambda d: (plausible_labels(d), d.mean_confidence))


def apparent_side(det: Detection) -> str | None:
    """R / L from the condyles and plateaus in the standard display (lateral toward -col: right leg)."""
    p = det.as_dict()
    try:
        ml = (np.asarray(p["LDFC"]) - np.asarray(p["MDFC"])) + (np.asarray(p["LTP"]) - np.asarray(p["MTP"]))
    except KeyError:
        return None
    return "R" if ml[0] < 0 else "L"
