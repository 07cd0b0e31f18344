"""Whether the reconstruction's 3D angles may be reported: the cross-check against the long-leg film.

The long-leg AP film and the reconstructed knee measure the same bones. Coronal angles measured in 3D
(each bone in its own coronal plane) and on the film differ by projection effects: up to ~1 deg per
20 deg of limb rotation with a straight knee and ~5 deg at 15 deg of flexion (docs/rotation_drift.md).
A larger disagreement means one of the two is wrong; the film measurement is the validated one
(docs/landmarks.md), the reconstruction is not yet (docs/recon.md), so the 3D values are withheld from
``angles_3d``/``landmarks_3d`` (kept under ``reconstruction.withheld`` for review), never presented as
fact. The same happens when the reconstruction is not consistent with its own films.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["AGREEMENT_LIMIT_DEG", "COMPARED_ANGLES", "Agreement", "angles_agreement"]

AGREEMENT_LIMIT_DEG: Final = 5.0
"""The largest 2D-vs-3D difference projection alone explains (rotation drift study, 15 deg flexion)."""
COMPARED_ANGLES: Final = ("mHKA", "mLDFA", "MPTA")


@dataclass(frozen=True)
class Agreement:
    differences_deg: dict[str, float]  # 3D minus 2D, for the angles both measured
    disagreeing: tuple[str, ...]  # angles whose |difference| exceeds the limit
    limit_deg: float

    @property
    def agrees(self) -> bool:
        return not self.disagreeing

    def to_json(self) -> dict[str, Any]:
        return {
            "differences_deg": {k: round(v, 3) for k, v in self.differences_deg.items()},
            "disagreeing": list(self.disagreeing),
            "limit_deg": self.limit_deg,
        }


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if v == v and abs(v) != float("inf") else None


def angles_agreement(
    angles_2d: Mapping[str, Any] | None,
    angles_3d: Mapping[str, Any] | None,
    limit_deg: float = AGREEMENT_LIMIT_DEG,
) -> Agreement:
    """Compare the coronal angles measured on the long-leg film with those of the reconstruction."""
    diffs: dict[str, float] = {}
    for name in COMPARED_ANGLES:
        a2 = _number((angles_2d or {}).get(name))
        a3 = _number((angles_3d or {}).get(name))
        if a2 is not None and a3 is not None:
            diffs[name] = a3 - a2
    bad = tuple(k for k, d in diffs.items() if abs(d) > limit_deg)
    return Agreement(differences_deg=diffs, disagreeing=bad, limit_deg=limit_deg)
