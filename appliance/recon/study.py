"""One study's knee reconstruction with its checks and files: the ``reconstruction``, ``angles_3d`` and
``landmarks_3d`` parts of result.json (docs/study-outputs.md).

Entry point (called by the study pipeline, ``appliance.pipeline.study``, by keyword)::

    reconstruct_study(films, out_dir, *, side=None, landmarks_2d=None, reconstructor=None,
                      settings=None) -> StudyReconstruction

* ``films``: view name (``knee_ap``, ``knee_lat``, ``longleg_ap``) -> a DICOM path (pixels converted with
  :func:`appliance.ingest.presentation.bone_bright_unit`; geometry recorded in the private XR3D block, or
  rebuilt from the standard DX header for a clinic's films: :mod:`appliance.recon.frames`) or a ready
  :class:`~appliance.recon.types.FilmView`. DICOM films with neither are left out.
* ``out_dir``: the study folder; files go to ``out_dir/recon/``.
* ``side``: "L" / "R" (needed for the 3D landmarks); ``landmarks_2d``: result.json's
  ``{"longleg_ap": {"FHC": {"col": .., "row": ..}, ...}}`` (FHC and AC place the hip and ankle centres;
  without them only the knee landmarks are placed and the angles needing FHC / AC are null).
* ``reconstructor``: films -> :class:`~appliance.recon.types.Reconstruction`; default: the network in
  ``appliance.recon.infer`` (imported when first needed).

Steps: reconstruct from the knee films; register femur and tibia to them
(:mod:`appliance.recon.register`); score the re-projection against every knee film
(:mod:`appliance.recon.consistency`) and the knee AP against the knee lateral film
(:mod:`appliance.recon.cross_view`: one knee's heights in both views; part of the verdict); 3D landmarks
and angles (:mod:`appliance.recon.bones3d`) when a lateral film and the side are present (hip and ankle
centres from the long-leg film's FHC and AC); write
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
from numpy.typing import NDArray
from PIL import Image

from appliance.errors import InputError, Xr3dError
from appliance.recon.bones3d import DEFAULT_DEPTH_MODEL, Landmarks3D, LongLegLandmarks, landmarks_from_labels
from appliance.recon.consistency import ConsistencyResult, ConsistencySettings, ViewImages, judge, score_views
from appliance.recon.cross_view import CrossViewSettings, cross_view_check
from appliance.recon.frames import StudyFrames, load_study_frames, register_longleg
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
    cross_view: CrossViewSettings = field(default_factory=CrossViewSettings)
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
    geometry: Mapping[str, Any] | None = None  # StudyFrames.to_dict() (None: FilmViews given directly)
    axial_deg: float | None = None  # knee-canonical models: the knee's estimated axial rotation in the cube

    def to_json(self) -> dict[str, Any]:
        return {
            "reconstruction": {
                "model": self.model,
                "views_used": list(self.views_used),
                "spacing_mm": self.spacing_mm,
                "shape": list(self.shape),
                "consistency": self.consistency.to_dict(),
                "geometry": dict(self.geometry) if self.geometry is not None else None,
                "knee_axial_rotation_deg": None if self.axial_deg is None else round(self.axial_deg, 2),
                "files": list(self.files),
            },
            "angles_3d": self.angles_3d,
            "landmarks_3d": self.landmarks_3d,
        }


def network_reconstructor(films: Mapping[str, FilmView], models_dir: Path | None = None) -> Reconstruction:
    """The trained network (``appliance.recon.infer.reconstruct``, the models of ``models_dir`` or the
    shipped ones), imported on first use."""
    infer = importlib.import_module("appliance.recon.infer")
    out = infer.reconstruct({v: (f.image, f.geometry) for v, f in films.items()}, models_dir=models_dir)
    return Reconstruction(out.hu, out.labels, out.model_version or MODEL_NAME, out.axial_deg)


def _joint_rows(landmarks_2d: Mapping[str, Any] | None) -> dict[str, float]:
    """Knee view -> film row of its joint line: the FKC/TKC midpoint of the knee landmark model, when
    both were found without a low-confidence flag."""
    rows: dict[str, float] = {}
    for view in KNEE_VIEWS:
        marks = (landmarks_2d or {}).get(view) or {}
        pts = [marks.get(n) for n in ("FKC", "TKC")]
        if all(isinstance(p, Mapping) and not p.get("low_confidence") and "row" in p for p in pts):
            rows[view] = 0.5 * (float(pts[0]["row"]) + float(pts[1]["row"]))  # type: ignore[index]
    return rows


def _as_views(
    films: Mapping[str, Path | FilmView], side: str | None, landmarks_2d: Mapping[str, Any] | None = None
) -> tuple[dict[str, FilmView], StudyFrames | None]:
    ready = {v: f for v, f in films.items() if isinstance(f, FilmView)}
    paths: dict[str, Path] = {}
    for view, item in films.items():
        if isinstance(item, FilmView):
            continue
        if Path(item).suffix.lower() != ".dcm":
            log.info("%s: not a DICOM film, no geometry; left out of the reconstruction", view)
            continue
        paths[view] = Path(item)
    frames = load_study_frames(paths, side or "", _joint_rows(landmarks_2d)) if paths else None
    return {**(frames.views if frames is not None else {}), **ready}, frames


def _grid_centre(recon: Reconstruction) -> NDArray[np.float64]:
    """LPS centre of the reconstruction grid (where the network centred its cube)."""
    mid = (np.asarray(recon.volume.shape, dtype=np.float64) - 1.0) / 2.0
    return np.asarray(recon.volume.index_to_mm(mid)[0], dtype=np.float64)


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


def _longleg_marks(landmarks_2d: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """The long-leg film's 2D landmarks as name -> (col, row) from result.json's format or plain pairs."""
    out: dict[str, tuple[float, float]] = {}
    for name, m in ((landmarks_2d or {}).get(LONGLEG_VIEW) or {}).items():
        if isinstance(m, Mapping) and m.get("col") is not None and m.get("row") is not None:
            out[str(name)] = (float(m["col"]), float(m["row"]))
        elif isinstance(m, list | tuple) and len(m) >= 2:
            out[str(name)] = (float(m[0]), float(m[1]))
    return out


def _longleg_landmarks(
    views: Mapping[str, FilmView], landmarks_2d: Mapping[str, Any] | None
) -> LongLegLandmarks | None:
    ll = views.get(LONGLEG_VIEW)
    marks = _longleg_marks(landmarks_2d)
    fhc, ac = marks.get("FHC"), marks.get("AC")
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


def _registered_longleg(
    recon: Reconstruction,
    side: str,
    longleg: LongLegLandmarks,
    poses: Mapping[str, Any] | None,
    landmarks_2d: Mapping[str, Any] | None,
    s: ReconSettings,
    notes: list[str],
) -> LongLegLandmarks:
    """The long-leg film's nominal geometry moved into the knee frame (appliance.recon.frames)."""
    knee_only = landmarks_from_labels(recon.labels, side, None, poses, depth_model=s.depth_model)
    pts = {k: np.asarray(v, dtype=np.float64) for k, v in knee_only.points.items()}
    fit = register_longleg(longleg.geometry, pts, _longleg_marks(landmarks_2d))
    notes.append(
        f"long-leg film registered to the knee frame on {len(fit.marks_used)} knee landmarks "
        f"(rms {fit.rms_mm:.1f} mm at the detector)"
    )
    return LongLegLandmarks(fit.geometry, longleg.fhc_px, longleg.ac_px)


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
    views, frames = _as_views(films, side, landmarks_2d)
    knee = {v: views[v] for v in KNEE_VIEWS if v in views}
    if not knee:
        raise InputError("no knee film with a usable geometry to reconstruct from", reason="no_knee_geometry")
    recon = (reconstructor or network_reconstructor)(knee)
    timings["reconstruct"] = time.perf_counter() - t0
    knee_list = list(knee.values())

    t = time.perf_counter()
    reg = register_bones(recon, knee_list, s.registration) if s.register else None
    timings["register"] = time.perf_counter() - t
    t = time.perf_counter()
    per_view, images = score_views(recon, knee_list, s.consistency)
    timings["consistency"] = time.perf_counter() - t
    t = time.perf_counter()
    # Do the AP and the lateral film show one knee? (a reconstruction made from two patients' films fits
    # both well enough to pass the re-projection score; appliance/recon/cross_view.py)
    cross = cross_view_check(
        knee,
        [(vi.view, vi.region, vi.geometry) for vi in images],
        _grid_centre(recon),
        s.consistency.cross_view_threshold,
        s.cross_view,
    )
    timings["cross_view"] = time.perf_counter() - t
    consistency = judge(per_view, None if reg is None else reg.residual_mm, s.consistency, cross)
    if not consistency.consistent:
        log.warning(
            "reconstruction not consistent with the films (score %.3f < %.3f, residual %s mm or "
            "cross-view %s)",
            consistency.score,
            consistency.threshold,
            consistency.registration_residual_mm,
            "n/a" if cross is None else f"{cross.score:.3f} < {cross.threshold:.3f}",
        )

    notes: list[str] = list(frames.notes) if frames is not None else []
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
            if longleg is not None and frames is not None and frames.longleg_registered:
                longleg = _registered_longleg(recon, side, longleg, poses, landmarks_2d, s, notes)
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
        geometry=frames.to_dict() if frames is not None else None,
        axial_deg=recon.axial_deg,
    )
