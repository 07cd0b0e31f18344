"""One study's knee reconstruction with its checks and files: the ``reconstruction``, ``angles_3d`` and
``landmarks_3d`` parts of result.json (docs/study-outputs.md).

Entry point (called by the study pipeline, ``appliance.pipeline.study``, by keyword)::

    reconstruct_study(films, out_dir, *, side=None, landmarks_2d=None, reconstructor=None,
                      settings=None) -> StudyReconstruction

* ``films``: view name (``knee_ap``, ``knee_lat``, ``longleg_ap``) -> a DICOM path (pixels converted with
  :func:`appliance.ingest.presentation.bone_bright_unit`, geometry from the private XR3D block) or a
  ready :class:`~appliance.recon.types.FilmView`. Films without a recorded geometry are left out.
* ``out_dir``: the study folder; files go to ``out_dir/recon/``.
* ``side``: "L" / "R" (needed for the 3D landmarks); ``landmarks_2d``: result.json's
  ``{"longleg_ap": {"FHC": {"col": .., "row": ..}, ...}}`` (FHC and AC place the hip and ankle centres;
  without them only the knee landmarks are placed and the angles needing FHC / AC are null).
* ``reconstructor``: films -> :class:`~appliance.recon.types.Reconstruction`; default: the network in
  ``appliance.recon.infer`` (imported when first needed).

Steps: reconstruct from the knee films; register femur and tibia to them
(:mod:`appliance.recon.register`); score the re-projection against every knee film
(:mod:`appliance.recon.consistency`); 3D landmarks and angles (:mod:`appliance.recon.bones3d`) when a
lateral film and the side are present (hip and ankle centres from the long-leg film's FHC and AC); write
``recon/volume.nii.gz``, ``recon/labels.nii.gz``, ``recon/<bone>.stl`` / ``.ply``, ``recon/slices.png``
and ``recon/reprojection_<view>.png`` (film | DRR). The DICOM CT series (``dicom/ct/``) is written later
by ``appliance.outputs.write_study_dicom`` from ``recon/volume.nii.gz``.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image

from appliance.dicomio.geometry_tags import read_geometry
from appliance.errors import InputError, Xr3dError
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.bones3d import DEFAULT_DEPTH_MODEL, Landmarks3D, LongLegLandmarks, landmarks_from_labels
from appliance.recon.consistency import ConsistencyResult, ConsistencySettings, ViewImages, judge, score_views
from appliance.recon.meshes import label_surface, write_ply, write_stl
from appliance.recon.nifti import save_volume
from appliance.recon.register import RegistrationResult, RegistrationSettings, register_bones
from appliance.recon.slices import write_slices_png
from appliance.recon.types import BONE_NAMES, FilmView, Reconstruction

log = logging.getLogger(__name__)

KNEE_VIEWS = ("knee_ap", "knee_lat")
LONGLEG_VIEW = "longleg_ap"
RECON_DIR = "recon"
MODEL_NAME = "recon/1"

Reconstructor = Callable[[Mapping[str, FilmView]], Reconstruction]


@dataclass(frozen=True)
class ReconSettings:
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    depth_model: str = DEFAULT_DEPTH_MODEL
    register: bool = True


@dataclass(frozen=True)
class StudyReconstruction:
    """result.json's ``reconstruction``, ``angles_3d`` and ``landmarks_3d`` (see :meth:`to_json`)."""

    model: str
    views_used: tuple[str, ...]
    spacing_mm: float
    shape: tuple[int, int, int]
    consistency: ConsistencyResult
    files: tuple[str, ...]
    angles_3d: dict[str, float | None] | None
    landmarks_3d: dict[str, list[float]] | None
    registration: RegistrationResult | None = None
    notes: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "reconstruction": {
                "model": self.model,
                "views_used": list(self.views_used),
                "spacing_mm": self.spacing_mm,
                "shape": list(self.shape),
                "consistency": self.consistency.to_dict(),
                "files": list(self.files),
            },
            "angles_3d": self.angles_3d,
            "landmarks_3d": self.landmarks_3d,
        }


def load_film_view(path: Path, view: str) -> FilmView | None:
    """A DICOM film as a FilmView, or None when it records no projection geometry."""
    ds = pydicom.dcmread(path)
    geometry = read_geometry(ds)
    if geometry is None:
        return None
    return FilmView(view, bone_bright_unit(ds, decode_pixels(ds)), geometry)


def network_reconstructor(films: Mapping[str, FilmView]) -> Reconstruction:
    """The trained network (``appliance.recon.infer.reconstruct``), imported on first use."""
    infer = importlib.import_module("appliance.recon.infer")
    out = infer.reconstruct({v: (f.image, f.geometry) for v, f in films.items()})
    return Reconstruction(out.hu, out.labels, MODEL_NAME)


def _as_views(films: Mapping[str, Path | FilmView]) -> dict[str, FilmView]:
    views: dict[str, FilmView] = {}
    for view, item in films.items():
        if isinstance(item, FilmView):
            views[view] = item
            continue
        path = Path(item)
        if path.suffix.lower() != ".dcm":
            log.info("%s: not a DICOM film, no geometry; left out of the reconstruction", view)
            continue
        fv = load_film_view(path, view)
        if fv is None:
            log.info("%s: no recorded projection geometry; left out of the reconstruction", view)
        else:
            views[view] = fv
    return views


def _unit_image(x: NDArray[np.floating], mask: NDArray[np.bool_] | None = None) -> NDArray[np.uint8]:
    vals = x[mask] if mask is not None and mask.any() else x
    lo, hi = np.percentile(vals, [1.0, 99.0])
    return (np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255).astype(np.uint8)


def write_reprojection_png(vi: ViewImages, path: Path) -> None:
    """Film | DRR side by side at the working pitch, each contrast-stretched over the bone region."""
    film = _unit_image(vi.film, vi.region)
    drr = _unit_image(vi.drr, vi.region)
    gap = np.full((film.shape[0], 4), 128, dtype=np.uint8)
    Image.fromarray(np.hstack([film, gap, drr])).save(path)


def _longleg_landmarks(
    views: Mapping[str, FilmView], landmarks_2d: Mapping[str, Any] | None
) -> LongLegLandmarks | None:
    ll = views.get(LONGLEG_VIEW)
    marks = (landmarks_2d or {}).get(LONGLEG_VIEW) or {}

    def px(name: str) -> tuple[float, float] | None:
        m = marks.get(name)
        if isinstance(m, Mapping) and m.get("col") is not None and m.get("row") is not None:
            return float(m["col"]), float(m["row"])
        if isinstance(m, list | tuple) and len(m) >= 2:
            return float(m[0]), float(m[1])
        return None

    fhc, ac = px("FHC"), px("AC")
    if ll is None or fhc is None or ac is None:
        return None
    return LongLegLandmarks(ll.geometry, fhc, ac)


def _write_files(
    recon: Reconstruction, images: list[ViewImages], folder: Path, study_dir: Path
) -> tuple[str, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "volume.nii.gz", folder / "labels.nii.gz"]
    save_volume(recon.volume, written[0], np.int16)
    save_volume(recon.labels, written[1], np.uint8)
    for label, name in BONE_NAMES.items():
        mesh = label_surface(recon.labels, label)
        if mesh is None:
            continue
        write_stl(mesh, folder / f"{name}.stl", name=name)
        write_ply(mesh, folder / f"{name}.ply")
        written += [folder / f"{name}.stl", folder / f"{name}.ply"]
    write_slices_png(recon.volume, recon.labels, folder / "slices.png")
    written.append(folder / "slices.png")
    for vi in images:
        p = folder / f"reprojection_{vi.view}.png"
        write_reprojection_png(vi, p)
        written.append(p)
    return tuple(p.relative_to(study_dir).as_posix() for p in written)


def reconstruct_study(
    films: Mapping[str, Path | FilmView],
    out_dir: Path,
    *,
    side: str | None = None,
    landmarks_2d: Mapping[str, Any] | None = None,
    reconstructor: Reconstructor | None = None,
    settings: ReconSettings | None = None,
) -> StudyReconstruction:
    """Reconstruct, check and write one study's knee (module docstring)."""
    s = settings or ReconSettings()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    views = _as_views(films)
    knee = {v: views[v] for v in KNEE_VIEWS if v in views}
    if not knee:
        raise InputError(
            "no knee film with a recorded geometry to reconstruct from", reason="no_knee_geometry"
        )
    recon = (reconstructor or network_reconstructor)(knee)
    timings["reconstruct"] = time.perf_counter() - t0
    knee_list = list(knee.values())

    t = time.perf_counter()
    reg = register_bones(recon, knee_list, s.registration) if s.register else None
    timings["register"] = time.perf_counter() - t
    t = time.perf_counter()
    per_view, images = score_views(recon, knee_list, s.consistency)
    consistency = judge(per_view, None if reg is None else reg.residual_mm, s.consistency)
    timings["consistency"] = time.perf_counter() - t
    if not consistency.consistent:
        log.warning(
            "reconstruction not consistent with the films (score %.3f < %.3f or residual %s mm)",
            consistency.score,
            consistency.threshold,
            consistency.registration_residual_mm,
        )

    notes: list[str] = []
    marks: Landmarks3D | None = None
    longleg = _longleg_landmarks(views, landmarks_2d)
    if "knee_lat" not in knee:
        notes.append("no lateral knee film: no 3D angles")
    elif side not in ("L", "R"):
        notes.append("side unknown: no 3D angles")
    else:
        t = time.perf_counter()
        poses = {k: p.matrix for k, p in reg.poses.items()} if reg is not None else None
        try:
            marks = landmarks_from_labels(recon.labels, side, longleg, poses, depth_model=s.depth_model)
            notes.extend(marks.notes)
        except Xr3dError as exc:
            notes.append(f"3D landmarks failed: {exc}")
            log.warning("3D landmarks failed: %s", exc)
        timings["bones3d"] = time.perf_counter() - t

    t = time.perf_counter()
    files = _write_files(recon, images, Path(out_dir) / RECON_DIR, Path(out_dir))
    timings["files"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    spacing = recon.volume.spacing_mm
    return StudyReconstruction(
        model=recon.model,
        views_used=tuple(knee),
        spacing_mm=float(round(min(spacing), 4)),
        shape=recon.volume.shape,
        consistency=consistency,
        files=files,
        angles_3d=marks.angles.to_dict() if marks is not None else None,
        landmarks_3d=marks.landmarks_json() if marks is not None else None,
        registration=reg,
        notes=tuple(notes),
        timings_s=timings,
    )
