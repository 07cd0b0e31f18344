"""Ground truth written by the simulator from its own geometry.

3D landmarks come straight from the bone models. On each film the truth gives two things: the exact
projection of every 3D landmark, and the points a careful reader would click, which differ for the
contour landmarks: the most distal point of each condyle is the extreme of the condyle's projected
outline along the film's femoral axis, and the plateau edges are the medial and lateral extremes of the
projected plateau rim. Rotated or flexed limbs move those points, which is exactly how 2D angles drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.analytics import landmarks as lm
from appliance.geometry.projection import ProjectionGeometry
from export.simulator.assembly import Limb
from export.simulator.bones import F64


def landmarks_3d(limb: Limb) -> dict[str, F64]:
    return limb.landmarks()


def projected_landmarks(limb: Limb, geom: ProjectionGeometry) -> dict[str, F64]:
    L = limb.landmarks()
    names = list(L)
    pts = geom.project(np.array([L[n] for n in names]))
    return {n: pts[i] for i, n in enumerate(names)}


def reader_landmarks(limb: Limb, geom: ProjectionGeometry) -> dict[str, F64]:
    """The 2D landmarks a reader places on this film (pixels, (col, row))."""
    proj = projected_landmarks(limb, geom)
    out = {n: proj[n] for n in lm.LANDMARKS_2D}
    axis_f = proj[lm.FHC] - proj[lm.FKC]
    axis_f /= np.linalg.norm(axis_f)
    for name in (lm.MDFC, lm.LDFC):
        pts = geom.project(limb.patch(name))
        out[name] = pts[int(np.argmin(pts @ axis_f))]
    axis_t = proj[lm.TKC] - proj[lm.AC]
    axis_t /= np.linalg.norm(axis_t)
    perp = np.array([-axis_t[1], axis_t[0]])
    if (proj[lm.MTP] - proj[lm.LTP]) @ perp < 0:
        perp = -perp  # perp now points medially on this film
    rim = geom.project(limb.patch("plateau_rim"))
    out[lm.MTP] = rim[int(np.argmax(rim @ perp))]
    out[lm.LTP] = rim[int(np.argmin(rim @ perp))]
    return out


def in_field(points: dict[str, F64], geom: ProjectionGeometry, margin_px: float = 0.0) -> dict[str, bool]:
    return {
        n: bool(
            -0.5 + margin_px <= p[0] <= geom.columns - 0.5 - margin_px
            and -0.5 + margin_px <= p[1] <= geom.rows - 0.5 - margin_px
        )
        for n, p in points.items()
    }


def posterior_condyle_points(limb: Limb) -> dict[str, F64]:
    return {"medial": limb.patch("posterior_medial"), "lateral": limb.patch("posterior_lateral")}


def as_lists(d: dict[str, F64], ndigits: int = 4) -> dict[str, list[float]]:
    return {k: [round(float(x), ndigits) for x in v] for k, v in d.items()}


def construction_truth(limb: Limb) -> dict[str, Any]:
    """The alignment the phantom was built with (exact, no measurement involved)."""
    p = limb.params
    return {
        "mLDFA": p.mLDFA,
        "MPTA": p.MPTA,
        "JLCA": p.JLCA,
        "mHKA": p.mHKA,
        "aHKA": p.aHKA,
        "JLO": p.JLO,
    }
