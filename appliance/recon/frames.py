"""Which frame the study's films are reconstructed in, and bringing the long-leg film into it.

A film simulated (or acquired) by xr3d records its exact projection geometry in a private block; all
films of a study then share one patient frame. A clinic's films do not: each gets a nominal geometry from
its standard DX header (:mod:`appliance.dicomio.nominal_geometry`) in its own frame. The rules:

* knee films: the recorded geometries when every knee film has one, otherwise the nominal ones for all
  (never a mix: the two kinds of frame differ by the patient's position), each shifted so its joint line
  lies at z = 0, which puts AP and lateral into one knee frame;
* the long-leg film (hip and ankle centres for the 3D angles): its recorded geometry when the knee films
  use recorded ones too; otherwise its nominal geometry must first be registered to the knee frame:
  :func:`register_longleg` finds the rigid motion that puts the reconstructed knee landmarks (FKC, TKC,
  condyles, plateau points) onto the long-leg film's 2D knee landmarks: a translation, the depth with a
  weak prior at the nominal isocentre (the hip and ankle placement is insensitive to it). Rotation about
  the beam is not fitted: six landmarks within ~80 mm do not determine it (it moved mLDFA by 6 deg on a
  demo case) and both films are taken upright.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from numpy.typing import NDArray
from scipy.optimize import least_squares

from appliance.dicomio.geometry_tags import read_geometry
from appliance.dicomio.nominal_geometry import align_joint_line, choose_joint_row, nominal_geometry
from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.types import FilmView

log = logging.getLogger(__name__)

__all__ = [
    "FRAME_NOMINAL",
    "FRAME_RECORDED",
    "LongLegFit",
    "StudyFrames",
    "load_study_frames",
    "register_longleg",
    "transformed",
]

FRAME_RECORDED: Final = "recorded"
FRAME_NOMINAL: Final = "nominal"
KNEE_VIEWS: Final = ("knee_ap", "knee_lat")
LONGLEG_VIEW: Final = "longleg_ap"
# Knee landmarks seen on both the long-leg film and the reconstruction.
SHARED_KNEE_MARKS: Final = ("FKC", "TKC", "MDFC", "LDFC", "MTP", "LTP")
_DEPTH_PRIOR_MM: Final = 60.0  # 1 sigma of the knee's depth about the long-leg isocentre


@dataclass(frozen=True)
class StudyFrames:
    """The films to reconstruct and measure from, and in which frame their geometries are."""

    views: dict[str, FilmView]
    frame: str  # FRAME_RECORDED or FRAME_NOMINAL (the knee films')
    longleg_registered: bool  # False: the long-leg geometry already shares the knee frame
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "frame": self.frame,
            "longleg_needs_registration": self.longleg_registered,
            "notes": list(self.notes),
        }


def _read(path: Path) -> tuple[pydicom.Dataset, NDArray[np.float32]]:
    ds = pydicom.dcmread(path)
    return ds, bone_bright_unit(ds, decode_pixels(ds))


def _patient_key(ds: pydicom.Dataset) -> str:
    """A digest of who the film shows (compared, never logged or stored)."""
    parts = [
        str(ds.get(k, "") or "").strip().upper() for k in ("PatientID", "PatientName", "PatientBirthDate")
    ]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def require_one_patient(datasets: Mapping[str, pydicom.Dataset]) -> None:
    """Raise InputError(reason="films_of_different_patients") when the films name different patients.

    The image check cannot be relied on for this: the network reconstructs a volume that fits both films of
    a mismatched AP/lateral pair well enough to pass the re-projection check in a quarter of the calibration
    cases (docs/recon-checks.md). Films with no patient identity at all are not compared."""
    keys = {v: _patient_key(ds) for v, ds in datasets.items() if ds.get("PatientID") or ds.get("PatientName")}
    if len(set(keys.values())) > 1:
        raise InputError(
            f"the films {', '.join(sorted(keys))} name different patients; not reconstructed together",
            reason="films_of_different_patients",
        )


def load_study_frames(
    paths: Mapping[str, Path], side: str = "", joint_rows: Mapping[str, float] | None = None
) -> StudyFrames:
    """Films (view -> DICOM path; other views and non-DICOM files are ignored) with their geometries
    chosen by the module's rules. ``joint_rows``: knee view -> film row of its joint line (the knee
    landmark model's FKC/TKC midpoint), which overrules the darkest-row rule when the two disagree by
    more than ``JOINT_AGREE_MM`` (a flexed lateral film can fool the darkest row by centimetres).
    Raises InputError when the films name different patients."""
    read: dict[str, tuple[pydicom.Dataset, NDArray[np.float32]]] = {}
    for view, p in paths.items():
        if view in (*KNEE_VIEWS, LONGLEG_VIEW) and Path(p).suffix.lower() == ".dcm":
            read[view] = _read(Path(p))
    require_one_patient({v: ds for v, (ds, _) in read.items()})
    notes: list[str] = []
    recorded = {v: read_geometry(ds) for v, (ds, _) in read.items()}
    knee = [v for v in KNEE_VIEWS if v in read]
    use_recorded = bool(knee) and all(recorded[v] is not None for v in knee)
    views: dict[str, FilmView] = {}
    for v in knee:
        ds, img = read[v]
        if use_recorded:
            views[v] = FilmView(v, img, recorded[v])  # type: ignore[arg-type]
            continue
        nom = nominal_geometry(ds, v, side)
        if nom is None:
            notes.append(f"{v}: no SID / detector pitch in the header: left out of the reconstruction")
            continue
        row, how = choose_joint_row(img, nom.geometry.pitch_v_mm, (joint_rows or {}).get(v))
        geom, dz = align_joint_line(nom.geometry, img, row)
        notes.extend(f"{v}: {a}" for a in nom.assumptions)
        notes.append(f"{v}: nominal geometry from the DX header, joint line on the {how} ({dz:+.1f} mm)")
        views[v] = FilmView(v, img, geom)
    registered = False
    if LONGLEG_VIEW in read:
        ds, img = read[LONGLEG_VIEW]
        rec = recorded[LONGLEG_VIEW]
        if use_recorded and rec is not None:
            views[LONGLEG_VIEW] = FilmView(LONGLEG_VIEW, img, rec)
        else:
            nom = nominal_geometry(ds, LONGLEG_VIEW, side)
            if nom is None:
                notes.append(
                    "longleg_ap: no SID / detector pitch in the header: no hip or ankle centre in 3D"
                )
            else:
                views[LONGLEG_VIEW] = FilmView(LONGLEG_VIEW, img, nom.geometry)
                registered = True
                notes.extend(f"longleg_ap: {a}" for a in nom.assumptions)
    frame = FRAME_RECORDED if use_recorded else FRAME_NOMINAL
    return StudyFrames(views, frame, registered, tuple(notes))


def transformed(
    geometry: ProjectionGeometry, rotation: NDArray[np.float64], translation: NDArray[np.float64]
) -> ProjectionGeometry:
    """``geometry`` moved rigidly: x -> rotation @ x + translation for source, detector and its axes."""
    R, t = np.asarray(rotation, dtype=np.float64), np.asarray(translation, dtype=np.float64)

    def tup(x: NDArray[np.float64]) -> tuple[float, float, float]:
        return float(x[0]), float(x[1]), float(x[2])

    return ProjectionGeometry(
        source_mm=tup(R @ geometry.source + t),
        detector_origin_mm=tup(R @ geometry.origin + t),
        u_dir=tup(R @ geometry.u),
        v_dir=tup(R @ geometry.v),
        pitch_u_mm=geometry.pitch_u_mm,
        pitch_v_mm=geometry.pitch_v_mm,
        columns=geometry.columns,
        rows=geometry.rows,
        name=geometry.name,
    )


@dataclass(frozen=True)
class LongLegFit:
    """The long-leg geometry in the knee frame and how well the knee landmarks fit it."""

    geometry: ProjectionGeometry
    rms_px: float
    rms_mm: float  # at the detector
    marks_used: tuple[str, ...]


def register_longleg(
    longleg: ProjectionGeometry,
    knee_marks_3d: Mapping[str, NDArray[np.float64] | list[float]],
    marks_2d: Mapping[str, tuple[float, float]],
) -> LongLegFit:
    """The long-leg geometry (in its own nominal frame) expressed in the knee frame, such that the knee
    landmarks of the reconstruction project onto the film's 2D knee landmarks (module docstring).

    Raises InputError(reason="longleg_registration") with fewer than 3 shared landmarks."""
    names = tuple(n for n in SHARED_KNEE_MARKS if n in knee_marks_3d and n in marks_2d)
    if len(names) < 3:
        raise InputError(
            f"only {len(names)} knee landmarks on both the long-leg film and the reconstruction",
            reason="longleg_registration",
        )
    P = np.array([np.asarray(knee_marks_3d[n], dtype=np.float64) for n in names])
    Q = np.array([marks_2d[n] for n in names], dtype=np.float64)
    beam = (
        longleg.normal if float(longleg.normal @ (longleg.origin - longleg.source)) > 0 else -longleg.normal
    )
    c = P.mean(axis=0)
    # Start: the knee centroid on the ray of the 2D centroid, at the nominal isocentre depth.
    sod = float(np.linalg.norm(longleg.source))
    q0 = Q.mean(axis=0)
    ray = longleg.pixel_to_mm(np.array([q0[0]]), np.array([q0[1]]))[0] - longleg.source
    start = longleg.source + ray * (sod / float(ray @ beam))
    depth0 = float(start @ beam)

    def residual(x: NDArray[np.float64]) -> NDArray[np.float64]:
        t = start + x - c  # knee frame -> long-leg frame: p -> p + t
        depth = float((start + x) @ beam) - depth0
        return np.concatenate([(longleg.project(P + t) - Q).ravel(), [depth / _DEPTH_PRIOR_MM]])

    fit = least_squares(residual, np.zeros(3), x_scale=10.0)
    t = start + fit.x - c
    err = longleg.project(P + t) - Q
    rms_px = float(np.sqrt((err**2).sum(axis=1).mean()))
    # The inverse motion takes the long-leg film into the knee frame.
    geometry = transformed(longleg, np.eye(3), -t)
    pitch = 0.5 * (longleg.pitch_u_mm + longleg.pitch_v_mm)
    log.info("long-leg film registered to the knee frame: %d landmarks, rms %.2f px", len(names), rms_px)
    return LongLegFit(geometry, rms_px, rms_px * pitch, names)
