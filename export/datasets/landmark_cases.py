"""Reading one simulated case folder (``xr3d simulate``) for landmark training and evaluation: the film as
the model sees it (the runtime's own conversion), its truth.json entry, and the landmarks where the film
shows them (stitching shifts, collimated field)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from numpy.typing import ArrayLike, NDArray

from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.dicomio.geometry_tags import read_geometry
from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.ingest.presentation import bone_bright_unit

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

LONGLEG_FILM: Final = "longleg_ap"


@dataclass(frozen=True, eq=False)
class FilmImage:
    """A film as the model sees it: ``image`` float32 in [0, 1], bone bright, pixel (col, row)."""

    image: F32
    spacing_mm: tuple[float, float]  # (row, col) at the detector (ImagerPixelSpacing)
    photometric: str
    geometry: ProjectionGeometry | None


def read_film(path: Path) -> FilmImage:
    """Read a DX film: modality rescale, the first VOI window (linear) and photometric interpretation
    applied, so that bone is bright in [0, 1] whatever the stored polarity. Without a window the full
    stored range is used."""
    try:
        ds = pydicom.dcmread(path)
        raw = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:
        raise InputError(f"cannot read film {Path(path).name}: {exc}", reason="film_unreadable") from exc
    if raw.ndim != 2:
        raise InputError(f"film must be a single 2D frame, got shape {raw.shape}", reason="film_unreadable")
    # The runtime's own conversion, so training sees films exactly as `xr3d process` will.
    v = bone_bright_unit(ds, raw)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if spacing is None:
        raise InputError("film has no pixel spacing", reason="no_pixel_spacing")
    return FilmImage(
        image=v,
        spacing_mm=(float(spacing[0]), float(spacing[1])),
        photometric=photometric,
        geometry=read_geometry(ds),
    )


@dataclass(frozen=True, eq=False)
class CaseData:
    """One simulated case's long-leg film and its truth, landmarks ordered as ``names``."""

    seed: int
    side: str
    folder: Path
    film: FilmImage
    names: tuple[str, ...]
    landmarks: F64  # (8, 2) film (col, row): the reader landmarks (truth ``landmarks_2d``)
    in_field: NDArray[np.bool_]
    geometry: ProjectionGeometry
    labels_path: Path | None
    # (8, 2): the same landmarks where the film shows them (:func:`film_landmarks`); what a model is
    # trained and judged on, since it sees the film.
    film_points: F64 | None = None

    def on_film(self) -> CaseData:
        """This case with ``landmarks`` = where its film shows them (``film_points``)."""
        return self if self.film_points is None else dataclasses.replace(self, landmarks=self.film_points)


def film_landmarks(entry: Mapping[str, Any], landmarks: ArrayLike) -> F64:
    """``landmarks`` (N, 2) film (col, row) moved to where the film shows them: a stitched long-leg film's
    zones are displaced by their registration error (``artifacts.stitch.zone_shifts``, up to +-1.5 mm
    per axis; :func:`export.simulator.film_artifacts.shift_zones`), which truth.json's ``landmarks_2d``
    (the geometric projection) does not include. ``entry`` is truth.json's film entry. The zone rule is
    the simulator's own (:func:`export.simulator.film_artifacts.shift_points`, which also writes
    ``landmarks_film`` into the truth of cases simulated since 2026-11-24)."""
    from export.simulator.film_artifacts import StitchRecord, shift_points

    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2).copy()
    art = entry.get("artifacts") or {}
    st = art.get("stitch")
    if not st:
        return pts
    pad = art.get("padding") or {}
    offset = np.array([float(pad.get("left", 0)), float(pad.get("top", 0))])
    rows = int(entry["rows"]) - int(pad.get("top", 0)) - int(pad.get("bottom", 0))
    rec = StitchRecord(
        seam_rows=tuple(int(r) for r in st["seam_rows"]),
        zone_gains=tuple(float(g) for g in st.get("zone_gains", [1.0] * (len(st["seam_rows"]) + 1))),
        zone_shifts=tuple((int(a), int(b)) for a, b in st["zone_shifts"]),
        seam_width_px=int(st.get("seam_width_px", 0)),
        seam_gain=float(st.get("seam_gain", 1.0)),
    )
    return np.asarray(shift_points(pts - offset, rows, rec) + offset, dtype=np.float64)


def entry_film_points(entry: Mapping[str, Any], names: Sequence[str]) -> F64:
    """A film entry's landmarks ``names`` where the film shows them: its ``landmarks_film`` when the
    simulator wrote it, else :func:`film_landmarks` of its ``landmarks_2d``."""
    on_film = entry.get("landmarks_film")
    if on_film and all(n in on_film for n in names):
        return np.array([on_film[n] for n in names], dtype=np.float64)
    return film_landmarks(entry, np.array([entry["landmarks_2d"][n] for n in names], dtype=np.float64))


def entry_open_field(entry: Mapping[str, Any], points: ArrayLike) -> NDArray[np.bool_]:
    """Whether each (N, 2) film (col, row) point of a truth.json film entry (``landmarks_2d`` frame)
    lies inside its recorded collimated field (all True without collimation)."""
    from export.simulator.collimation import in_open_field
    from export.simulator.film_artifacts import CollimationRecord

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    art = entry.get("artifacts") or {}
    coll = art.get("collimation")
    if not coll:
        return np.ones(len(pts), bool)
    pad = art.get("padding") or {}
    shape = (
        int(entry["rows"]) - int(pad.get("top", 0)) - int(pad.get("bottom", 0)),
        int(entry["columns"]) - int(pad.get("left", 0)) - int(pad.get("right", 0)),
    )
    offset = np.array([float(pad.get("left", 0)), float(pad.get("top", 0))])
    return in_open_field(pts - offset, shape, CollimationRecord(**coll))


def entry_in_field(entry: Mapping[str, Any], names: Sequence[str]) -> NDArray[np.bool_]:
    """A film entry's ``in_field`` for ``names``, and not under a recorded collimator blade: cases
    simulated before 2026-11-24 called a landmark under a blade visible (the simulator now writes it
    so, :mod:`export.simulator.collimation`); for them the recorded field gives the same answer."""
    flags = np.array([bool(entry["in_field"].get(n, True)) for n in names], dtype=bool)
    return flags & entry_open_field(entry, [entry["landmarks_2d"][n] for n in names])


def read_truth_and_film(folder: Path, film: str) -> tuple[dict[str, Any], dict[str, Any], FilmImage]:
    """(truth.json, its entry for ``film``, the film) of a case folder, the film's size checked against
    the truth; InputError ``case_incomplete`` / ``case_inconsistent`` otherwise."""
    folder = Path(folder)
    tpath = folder / "truth.json"
    if not tpath.is_file():
        raise InputError(f"{folder.name}: no truth.json", reason="case_incomplete")
    truth = json.loads(tpath.read_text())
    entry = truth.get("films", {}).get(film)
    if entry is None:
        raise InputError(f"{folder.name}: truth has no film {film!r}", reason="case_incomplete")
    image = read_film(folder / entry["file"])
    if image.image.shape != (int(entry["rows"]), int(entry["columns"])):
        raise InputError(f"{folder.name}: film shape differs from truth.json", reason="case_inconsistent")
    return truth, entry, image


def load_case(folder: Path, film: str = LONGLEG_FILM) -> CaseData:
    """Read ``truth.json`` and the film of a case folder."""
    folder = Path(folder)
    truth, entry, image = read_truth_and_film(folder, film)
    names = tuple(LANDMARKS_2D)
    lm = np.array([entry["landmarks_2d"][n] for n in names], dtype=np.float64)
    infield = entry_in_field(entry, names)
    geometry = ProjectionGeometry.from_dict(entry["geometry"])
    labels_name = ((truth.get("ct") or {}).get("leg") or {}).get("labels")
    labels = folder / labels_name if labels_name else None
    return CaseData(
        seed=int(truth["seed"]),
        side=str(truth["side"]),
        folder=folder,
        film=image,
        names=names,
        landmarks=lm,
        in_field=infield,
        geometry=geometry,
        labels_path=labels if labels is not None and labels.is_file() else None,
        film_points=entry_film_points(entry, names),
    )
