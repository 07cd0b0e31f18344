"""Acquisition presets: where the source and detector stand for each film a clinic takes.

Each preset samples its free choices (distances, centring error) into a :class:`ViewRecord` first,
then :func:`view_geometry` builds the geometry deterministically from the record and the limb.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from appliance.analytics import landmarks as lm
from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from export.simulator.assembly import Limb

VIEWS = ("longleg", "knee-ap", "knee-lat")


@dataclass(frozen=True)
class ViewRecord:
    view: str
    sid_mm: float
    detector_gap_mm: float  # from the leg's posterior (AP) or lateral (lat) surface to the detector
    centre_offset_mm: tuple[float, float]  # centring error of the central ray (horizontal, vertical)
    pitch_mm: float
    width_mm: float
    height_mm: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_view(
    rng: np.random.Generator, view: str, *, longleg_pitch: float = 0.35, knee_pitch: float = 0.25
) -> ViewRecord:
    """Long-leg standing AP: SID 2.5-3 m, 43 x 130 cm detector (stitched), central ray near the knee
    (Sabharwal & Zhao, JBJS Am 2008; films.md). Knee AP and lateral: SID 1.0-1.2 m, 24 x 30 cm cassette,
    central ray at the joint line (Bontrager's Textbook of Radiographic Positioning, 9th ed.)."""
    if view == "longleg":
        return ViewRecord(
            view,
            float(rng.uniform(2500.0, 3000.0)),
            float(rng.uniform(30.0, 80.0)),
            (float(rng.uniform(-30.0, 30.0)), float(rng.uniform(-40.0, 40.0))),
            longleg_pitch,
            430.0,
            1300.0,
        )
    if view in ("knee-ap", "knee-lat"):
        return ViewRecord(
            view,
            float(rng.uniform(1000.0, 1200.0)),
            float(rng.uniform(10.0, 40.0)),
            (float(rng.uniform(-10.0, 10.0)), float(rng.uniform(-12.0, 12.0))),
            knee_pitch,
            240.0,
            300.0,
        )
    raise InputError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}", reason="bad_view")


def view_geometry(
    limb: Limb, rec: ViewRecord, skin_extent: tuple[np.ndarray, np.ndarray]
) -> ProjectionGeometry:
    """Geometry of one film for this limb; ``skin_extent`` is the LPS box of the body (for placing the
    detector against it)."""
    L = limb.landmarks()
    lo, hi = skin_extent
    knee = 0.5 * (L[lm.FKC] + L[lm.TKC])
    dh, dv = rec.centre_offset_mm
    if rec.view == "longleg":
        mid_z = 0.5 * (L[lm.FHC][2] + L[lm.AC][2])
        # Centred on the patient's midline (both legs on one film), vertically between hip and ankle.
        iso = np.array([0.0 + dh, knee[1], mid_z + dv])
        beam = np.array([0.0, 1.0, 0.0])
        u = np.array([1.0, 0.0, 0.0])
        det_y = hi[1] + rec.detector_gap_mm
        sod = rec.sid_mm - (det_y - iso[1])
    elif rec.view == "knee-ap":
        iso = knee + np.array([dh, 0.0, dv])
        beam = np.array([0.0, 1.0, 0.0])
        u = np.array([1.0, 0.0, 0.0])
        det_y = hi[1] + rec.detector_gap_mm
        sod = rec.sid_mm - (det_y - iso[1])
    else:  # knee-lat: lateral side against the detector, beam medial -> lateral
        lateral_sign = 1.0 if limb.params.side == "left" else -1.0
        beam = np.array([lateral_sign, 0.0, 0.0])
        iso = knee + np.array([0.0, dh, dv])
        # u chosen so rows run toward the feet: v = beam x u must be -z.
        u = np.array([0.0, -lateral_sign, 0.0])
        det_x = (hi[0] if lateral_sign > 0 else -lo[0]) + rec.detector_gap_mm
        sod = rec.sid_mm - (det_x - lateral_sign * iso[0])
    name = {"longleg": "longleg_ap", "knee-ap": "knee_ap", "knee-lat": "knee_lat"}[rec.view]
    return centred_geometry(
        name=name,
        isocenter_mm=iso,
        beam_dir=beam,
        u_dir=u,
        sid_mm=rec.sid_mm,
        sod_mm=float(sod),
        width_mm=rec.width_mm,
        height_mm=rec.height_mm,
        pitch_mm=rec.pitch_mm,
    )
