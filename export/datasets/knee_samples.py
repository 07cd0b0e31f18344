"""Training / evaluation samples for the knee landmark model, from simulated case folders.

A case folder (``xr3d simulate --views knee-ap,knee-lat``) holds ``knee_ap.dcm``, ``knee_lat.dcm`` and
``truth.json``. Truth per view (``appliance.landmarks.knee_views.KNEE_LANDMARKS``):

* knee AP: the reader points of ``films.knee_ap.landmarks_2d`` (FKC, MDFC, LDFC, MTP, LTP, TKC: the same
  definitions as on the long-leg film);
* knee lateral: exact projections through the film's recorded 3x4 matrix of the 3D landmarks FKC, TKC,
  MTPA, MTPP and of the axis points FAX = FKC + 80 mm toward FHC, TAX = TKC + 80 mm toward AC.

A :class:`KneeFrame` is the film resampled to the model's pixel size at the detector (from the DICOM
ImagerPixelSpacing), mirrored for left knees (the models see right knees, see ``knee_views``), over the
whole film plus a margin, so that training can cut windows at random offsets from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.landmarks.heatmaps import frame_affine
from appliance.landmarks.knee_views import AXIS_POINT_MM, KNEE_AP, KNEE_LANDMARKS, KNEE_VIEWS
from export.datasets.augment import transform_points, visible_in, warp_affine
from export.datasets.landmark_samples import (
    FilmImage,
    entry_in_field,
    entry_open_field,
    read_truth_and_film,
)

log = logging.getLogger(__name__)

__all__ = [
    "FRAME_MARGIN_MM",
    "KneeCase",
    "KneeFrame",
    "knee_frame",
    "knee_truth_points",
    "load_knee_case",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
FRAME_MARGIN_MM: Final = 40.0
"""Black margin around the film in a training frame, so windows can be cut off-centre (real knee films
are not always centred on the joint)."""


def _unit3(v: F64) -> F64:
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise InputError("degenerate axis in truth", reason="case_inconsistent")
    return np.asarray(v / n, dtype=np.float64)


def knee_truth_points(truth: dict[str, Any], view: str) -> tuple[F64, NDArray[np.bool_]]:
    """(N, 2) film (col, row) truth points of ``view`` in ``KNEE_LANDMARKS`` order and whether each lies
    on the film (and, for AP, is in the truth's field)."""
    entry = truth["films"][view]
    names = KNEE_LANDMARKS[view]
    rows, cols = int(entry["rows"]), int(entry["columns"])
    if view == KNEE_AP:
        pts = np.array([entry["landmarks_2d"][n] for n in names], dtype=np.float64)
        infield = entry_in_field(entry, names)
    else:
        lm3 = {k: np.asarray(v, dtype=np.float64) for k, v in truth["landmarks_3d"].items()}
        p3 = {n: lm3[n] for n in ("FKC", "TKC", "MTPA", "MTPP")}
        p3["FAX"] = lm3["FKC"] + AXIS_POINT_MM * _unit3(lm3["FHC"] - lm3["FKC"])
        p3["TAX"] = lm3["TKC"] + AXIS_POINT_MM * _unit3(lm3["AC"] - lm3["TKC"])
        m = np.asarray(entry["geometry"]["matrix_3x4"], dtype=np.float64)
        h = np.array([m @ np.append(p3[n], 1.0) for n in names])
        pts = h[:, :2] / h[:, 2:3]
        # under a collimator blade the film does not show the point (export.simulator.collimation)
        infield = entry_open_field(entry, pts)
    infield &= visible_in(pts, (rows, cols))
    return pts, infield


@dataclass(frozen=True, eq=False)
class KneeCase:
    """One simulated case's knee film of one view, with its truth."""

    seed: int
    side: str
    view: str
    folder: Path
    film: FilmImage
    names: tuple[str, ...]
    landmarks: F64  # (N, 2) film (col, row)
    in_field: NDArray[np.bool_]
    magnification: float
    geometry: ProjectionGeometry | None
    truth: dict[str, Any]


def load_knee_case(folder: Path, view: str) -> KneeCase:
    """Read ``truth.json`` and the ``view`` film (knee_ap / knee_lat) of a case folder."""
    if view not in KNEE_VIEWS:
        raise InputError(f"not a knee view: {view!r}", reason="unsupported_view")
    folder = Path(folder)
    truth, entry, film = read_truth_and_film(folder, view)
    pts, infield = knee_truth_points(truth, view)
    return KneeCase(
        seed=int(truth["seed"]),
        side=str(truth["side"]),
        view=view,
        folder=folder,
        film=film,
        names=KNEE_LANDMARKS[view],
        landmarks=pts,
        in_field=infield,
        magnification=float(entry.get("magnification") or 1.0),
        geometry=film.geometry,
        truth=truth,
    )


@dataclass(frozen=True, eq=False)
class KneeFrame:
    """A film at ``mm_per_px`` (detector), mirrored to a right knee when the case is a left one, with a
    black margin; ``landmarks`` in frame (col, row)."""

    seed: int
    view: str
    image: F32
    landmarks: F64
    visible: NDArray[np.bool_]
    mm_per_px: float
    affine_to_film: F64


def knee_frame(case: KneeCase, mm_per_px: float, *, margin_mm: float = FRAME_MARGIN_MM) -> KneeFrame:
    """The whole film of ``case`` at ``mm_per_px`` plus ``margin_mm`` of black on every side, mirrored
    for a left knee (``knee_views``: the simulator shows each knee in its standard display)."""
    rows, cols = case.film.image.shape
    s_row, s_col = case.film.spacing_mm
    shape = (
        int(np.ceil((rows * s_row + 2 * margin_mm) / mm_per_px)),
        int(np.ceil((cols * s_col + 2 * margin_mm) / mm_per_px)),
    )
    mirror = case.side.strip().lower().startswith("l")
    a = frame_affine(
        mm_per_px / s_col, mm_per_px / s_row, ((cols - 1) / 2.0, (rows - 1) / 2.0), shape, mirror=mirror
    )
    fwd = np.linalg.inv(a)
    image = warp_affine(case.film.image, fwd, shape, fill=0.0)
    lm = transform_points(fwd, case.landmarks)
    return KneeFrame(
        seed=case.seed,
        view=case.view,
        image=image,
        landmarks=lm,
        visible=case.in_field & visible_in(lm, shape),
        mm_per_px=float(mm_per_px),
        affine_to_film=a,
    )
