"""Knee CT-like reconstruction from the knee AP (and lateral) film at runtime: numpy + ``engines`` only.

Entry point::

    reconstruct(films, *, centre_mm=None, models_dir=None, engine=None) -> ReconVolumes

``films`` maps a view name (``"knee_ap"``, ``"knee_lat"``) to ``(image01, geometry)``: the film bone
bright in [0, 1] (``appliance.ingest.presentation.bone_bright_unit``; shape ``(geometry.rows,
geometry.columns)``) and its recorded :class:`ProjectionGeometry` (the pixel spacing is the geometry's
pitch). ``knee_ap`` is required; ``knee_lat`` is optional (AP-only mode, less accurate in depth).

The result (:class:`ReconVolumes`) holds ``hu`` (float32 HU) and ``labels`` (uint8: 0 background, 1 femur,
2 tibia, 3 fibula, 4 patella) as :class:`Volume` on one axis-aligned LPS grid of ``CUBE_VOXELS``^3 voxels of
``VOXEL_MM`` mm (144 mm cube) centred on ``centre_mm``; default centre: the point nearest to both
central rays (biplanar) or the AP central ray at ``AP_ONLY_DEPTH_MM`` in front of the detector.

How (docs/recon.md): each film is resampled to a ``FILM_PX`` x ``FILM_PX`` frame of ``FILM_PITCH_MM`` at
the detector centred on the projection of the cube centre; ``recon_encoder.onnx`` turns it into feature
maps; ``recon_context.onnx`` (recon-1.2+) back-projects those maps along the real rays onto a coarse 3D
grid and turns them into a shape-context volume; ``recon_decoder.onnx`` projects every voxel centre through
each film's 3x4 matrix, samples the feature maps there (bilinear) and the context at the voxel (trilinear)
and returns HU and label logits. The network therefore sees each film only along the real rays of its
recorded geometry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume
from appliance.recon.cube import (
    AP_ONLY_DEPTH_MM,
    CUBE_VOXELS,
    FILM_PITCH_MM,
    FILM_PX,
    VIEWS,
    VOXEL_MM,
    FilmFrame,
    cube_affine,
    cube_to_film_matrix,
    estimate_centre,
    film_frame,
)
from appliance.recon.label_cleanup import clean_labels
from appliance.recon.orientation import ap_yaw_deg, axial_rotation, rotate_mats, to_canonical

log = logging.getLogger(__name__)

__all__ = [
    "AP_ONLY_DEPTH_MM",
    "CONTEXT_MODEL",
    "CUBE_VOXELS",
    "DECODER_MODEL",
    "ENCODER_MODEL",
    "FILM_PITCH_MM",
    "FILM_PX",
    "FRAME_CANONICAL",
    "FRAME_META",
    "FRAME_PATIENT",
    "LABEL_OFFSETS_META",
    "LABEL_OFFSET_MODES",
    "ORIENT_MODEL",
    "VIEWS",
    "VOXEL_MM",
    "EncodedFilms",
    "FilmFrame",
    "ReconVolumes",
    "Reconstructor",
    "cube_affine",
    "cube_to_film_matrix",
    "estimate_centre",
    "film_frame",
    "parse_label_offsets",
    "reconstruct",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

ENCODER_MODEL: Final = "recon_encoder.onnx"
DECODER_MODEL: Final = "recon_decoder.onnx"
# recon-1.2+: the 3D shape context (features + matrices -> a coarse volume the decoder samples). A models
# folder without it holds a recon-1.0/1.1 decoder, which takes no ``context`` input.
CONTEXT_MODEL: Final = "recon_context.onnx"
DEFAULT_MODELS_DIR: Final = Path(__file__).resolve().parents[2] / "models"
N_CLASSES: Final = 5
HU_SCALE: Final = 1000.0  # network HU unit: hu / HU_SCALE
# Points per decoder call: 32768 keeps the decoder's per-call working set (sampling plan, 64 x N activations,
# ~8 MB) inside the L3 cache; 131072 spills to memory and was ~10 % slower on ONNX Runtime (docs/engines.md).
DECODER_CHUNK: Final = 32768
REFINE_HU_STEP: Final = 0.5  # coarse-neighbourhood HU range (units of 1000 HU) that triggers 1 mm decoding
# recon-1.3+: per-class offsets added to the decoder's label logits before the argmax, fitted after training
# on calibration anatomies (export/recon/calibrate.py). Training weights the small bones' cross-entropy up to
# 4x, which moves the argmax boundary outwards; the offsets put it back where Dice is best. JSON
# {"biplanar": [5 floats], "ap_only": [5 floats]} (background first, usually 0).
LABEL_OFFSETS_META: Final = "xr3d.label_logit_offsets"
LABEL_OFFSET_MODES: Final = ("biplanar", "ap_only")
# recon-1.4+: the frame the network reconstructs in (appliance/recon/orientation.py). "patient": the cube as
# laid out by cube_affine; "knee_canonical": the cube turned about its S-I axis to the knee's axial
# rotation, which the orientation model estimates from the films (decoder metadata ``xr3d.frame``).
FRAME_META: Final = "xr3d.frame"
FRAME_PATIENT: Final = "patient"
FRAME_CANONICAL: Final = "knee_canonical"
ORIENT_MODEL: Final = "recon_orient.onnx"


# --- runtime -------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReconVolumes:
    """One reconstruction: ``hu`` (float32 HU) and ``labels`` (uint8, 0 background, 1 femur, 2 tibia,
    3 fibula, 4 patella) on one grid; ``views_used`` in order; ``timings_s`` per stage; ``backend`` and
    ``model_version`` for result.json; ``decoded_points`` how many points the decoder evaluated."""

    hu: Volume
    labels: Volume
    views_used: tuple[str, ...]
    centre_mm: tuple[float, float, float]
    timings_s: Mapping[str, float] = field(default_factory=dict)
    backend: str = ""
    model_version: str = ""
    decoded_points: int = 0
    axial_deg: float | None = None  # the knee-canonical frame's turn (None: patient frame)


def parse_label_offsets(raw: str | None) -> dict[str, F32]:
    """The decoder's ``xr3d.label_logit_offsets`` metadata -> offsets per mode (zeros when absent).

    Raises :class:`InputError` (``bad_model_metadata``) for anything but finite numbers, one per class."""
    out = {m: np.zeros(N_CLASSES, np.float32) for m in LABEL_OFFSET_MODES}
    if raw is None:
        return out
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{LABEL_OFFSETS_META} is not JSON: {e}", reason="bad_model_metadata") from e
    if not isinstance(data, dict) or not set(data) <= set(LABEL_OFFSET_MODES):
        raise InputError(
            f"{LABEL_OFFSETS_META} must map {LABEL_OFFSET_MODES} to offsets", reason="bad_model_metadata"
        )
    for mode, vals in data.items():
        arr = np.asarray(vals, dtype=np.float64) if isinstance(vals, list) else np.zeros(0)
        if arr.shape != (N_CLASSES,) or not np.all(np.isfinite(arr)):
            raise InputError(
                f"{LABEL_OFFSETS_META}[{mode}] must be {N_CLASSES} finite numbers, got {vals!r}",
                reason="bad_model_metadata",
            )
        out[mode] = arr.astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class EncodedFilms:
    """What the decoder needs besides the points: film features, matrices, ``present`` and the context."""

    features: F32
    mats: F32  # as the network sees them: turned with ``rotation`` in the knee-canonical frame
    present: F32
    context: F32 | None
    rotation: NDArray[np.float64] | None = None  # the knee-canonical frame's turn (None: patient frame)
    axial_deg: float | None = None

    @property
    def mode(self) -> str:
        return "biplanar" if float(self.present[0, 1]) > 0.5 else "ap_only"


def _grid_points(idx: NDArray[np.int64]) -> F32:
    """(N, 3) voxel indices -> normalised cube coordinates."""
    return (idx.astype(np.float32) * np.float32(2.0 / (CUBE_VOXELS - 1)) - np.float32(1.0)).astype(np.float32)


class Reconstructor:
    """Holds the ONNX models (encoder, decoder and, recon-1.2+, context; opened once through
    :func:`engines.select.open_backend`)."""

    def __init__(
        self, models_dir: Path | None = None, config: Any = None, *, chunk: int = DECODER_CHUNK
    ) -> None:
        from engines.config import EngineConfig
        from engines.select import open_backend

        d = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        missing = [n for n in (ENCODER_MODEL, DECODER_MODEL) if not (d / n).is_file()]
        if missing:
            raise InputError(
                f"reconstruction model file(s) missing in {d}: {', '.join(missing)}; train them with "
                "`xr3d train recon --out DIR --seed S --models-dir models`",
                reason="model_missing",
            )
        cfg = config or EngineConfig()
        self._enc, self.choice = open_backend(d / ENCODER_MODEL, cfg)
        self._dec, _ = open_backend(d / DECODER_MODEL, cfg)
        self._ctx = None
        if "context" in self._dec.info.input_names:
            if not (d / CONTEXT_MODEL).is_file():
                self.close()
                raise InputError(
                    f"{DECODER_MODEL} in {d} needs {CONTEXT_MODEL}, which is missing", reason="model_missing"
                )
            self._ctx, _ = open_backend(d / CONTEXT_MODEL, cfg)
        self.model_version = self._dec.info.version
        self.chunk = int(chunk)
        frame = dict(self._dec.info.metadata).get(FRAME_META, FRAME_PATIENT)
        if frame not in (FRAME_PATIENT, FRAME_CANONICAL):
            self.close()
            raise InputError(
                f"{FRAME_META} {frame!r} is not known to this runtime", reason="bad_model_metadata"
            )
        self.canonical = frame == FRAME_CANONICAL
        self._orient = None
        if self.canonical:
            if not (d / ORIENT_MODEL).is_file():
                self.close()
                raise InputError(
                    f"{DECODER_MODEL} in {d} reconstructs in the knee-canonical frame and needs "
                    f"{ORIENT_MODEL}, which is missing",
                    reason="model_missing",
                )
            self._orient, _ = open_backend(d / ORIENT_MODEL, cfg)
        try:
            self.label_offsets = parse_label_offsets(dict(self._dec.info.metadata).get(LABEL_OFFSETS_META))
        except InputError:
            self.close()
            raise
        try:
            geo = json.loads(dict(self._dec.info.metadata).get("xr3d.input_geometry", "{}"))
        except ValueError:
            geo = {}
        if geo and (
            int(geo.get("film_px", FILM_PX)) != FILM_PX
            or int(geo.get("cube_voxels", CUBE_VOXELS)) != CUBE_VOXELS
        ):
            raise InputError(
                f"reconstruction model geometry {geo} does not match this runtime",
                reason="bad_model_metadata",
            )

    def close(self) -> None:
        self._enc.close()
        self._dec.close()
        if self._ctx is not None:
            self._ctx.close()
        orient = getattr(self, "_orient", None)  # absent when __init__ failed before opening it
        if orient is not None:
            orient.close()

    def __enter__(self) -> Reconstructor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def estimate_axial_deg(
        self, images: ArrayLike, mats: ArrayLike, present: ArrayLike = (1.0, 1.0)
    ) -> float:
        """The knee's axial rotation in the cube (deg): the orientation model's angle on the films (an
        absent lateral film as zeros, as the model was trained for AP-only studies) plus the AP film's
        own turn (:func:`appliance.recon.orientation.ap_yaw_deg`)."""
        if self._orient is None:
            raise InputError(f"no {ORIENT_MODEL} loaded", reason="model_missing")
        films = np.asarray(images, dtype=np.float32).reshape(1, 2, FILM_PX, FILM_PX).copy()
        if float(np.asarray(present, dtype=np.float32).reshape(-1)[1]) < 0.5:
            films[0, 1] = 0.0
        on_film = float(np.asarray(self._orient.run({"films": films})["angle_deg"]).reshape(-1)[0])
        m = np.asarray(mats, dtype=np.float64).reshape(2, 3, 4)
        return on_film + ap_yaw_deg(m[0])

    def encode(
        self, images: ArrayLike, mats: ArrayLike, present: ArrayLike, *, axial_deg: float | None = None
    ) -> EncodedFilms:
        """Film frames (2, FILM_PX, FILM_PX), matrices (2, 3, 4) and ``present`` (2,) -> the encoder's
        features and (recon-1.2+) the context volume, ready for :meth:`decode`.

        A knee-canonical model (recon-1.4+) works in the cube turned by ``axial_deg`` (estimated from the
        films when None); points given to :meth:`decode` stay in the patient-aligned cube."""
        pres = np.asarray(present, dtype=np.float32).reshape(1, 2)
        images = np.asarray(images, dtype=np.float32).reshape(2, 1, FILM_PX, FILM_PX)
        m = np.asarray(mats, dtype=np.float32).reshape(1, 2, 3, 4).copy()
        if pres[0, 1] < 0.5:
            m[0, 1] = m[0, 0]  # any valid projection; its features are zeroed by ``present``
        rotation = None
        if self.canonical:
            if axial_deg is None:
                axial_deg = self.estimate_axial_deg(images, m, pres[0])
            rotation = axial_rotation(float(axial_deg))
            m = rotate_mats(m, rotation)
        feats = self._enc.run({"film": images})["features"][None].astype(np.float32)
        context = None
        if self._ctx is not None:
            context = self._ctx.run({"features": feats, "mats": m, "present": pres})["context"]
            context = context.astype(np.float32)
        # A patient-frame model ignores ``axial_deg`` and reports none.
        axial = float(axial_deg) if rotation is not None and axial_deg is not None else None
        return EncodedFilms(feats, m, pres, context, rotation, axial)

    def decode(self, enc: EncodedFilms, pts: F32, *, calibrated: bool = True) -> tuple[F32, F32]:
        """HU/1000 (N,) and label logits (N, 5) at ``pts`` (N, 3, normalised cube coordinates); with
        ``calibrated`` the model's label offsets for the mode (:data:`LABEL_OFFSETS_META`) are added."""
        hu = np.empty(len(pts), np.float32)
        logits = np.empty((len(pts), N_CLASSES), np.float32)
        feeds: dict[str, F32] = {"features": enc.features, "mats": enc.mats, "present": enc.present}
        if enc.context is not None:
            feeds["context"] = enc.context
        if enc.rotation is not None:
            pts = to_canonical(pts, enc.rotation)
        for s in range(0, len(pts), self.chunk):
            out = self._dec.run({**feeds, "points": pts[None, s : s + self.chunk]})
            hu[s : s + self.chunk] = out["hu"][0]
            logits[s : s + self.chunk] = out["logits"][0]
        if calibrated:
            logits += self.label_offsets[enc.mode]
        return hu, logits

    def reconstruct(
        self,
        films: Mapping[str, tuple[ArrayLike, ProjectionGeometry]],
        *,
        centre_mm: ArrayLike | None = None,
        refine: bool = True,
        clean: bool = True,
        calibrated: bool = True,
    ) -> ReconVolumes:
        """Reconstruct the knee cube from ``films`` (see the module docstring).

        The decoder runs on the 2 mm sub-grid first; with ``refine`` every 1 mm voxel whose 2 mm
        neighbourhood holds more than one label or an HU step > 500 (skin, cortex) is decoded itself, the
        others take the trilinear (HU) / nearest (labels) values of the coarse pass."""
        t0 = time.perf_counter()
        unknown = sorted(set(films) - set(VIEWS))
        if unknown:
            raise InputError(f"unknown view(s) {unknown}; expected {VIEWS}", reason="recon_bad_view")
        geoms = {k: v[1] for k, v in films.items()}
        centre = (
            np.asarray(centre_mm, dtype=np.float64).reshape(3)
            if centre_mm is not None
            else estimate_centre(geoms)
        )
        affine = cube_affine(centre)
        images = np.zeros((2, FILM_PX, FILM_PX), np.float32)
        mats = np.zeros((2, 3, 4), np.float32)
        present = np.zeros(2, np.float32)
        for i, v in enumerate(VIEWS):
            if v not in films:
                continue
            fr = film_frame(films[v][0], films[v][1], centre)
            images[i] = fr.image
            mats[i] = cube_to_film_matrix(fr.matrix, affine)
            present[i] = 1.0
        return self.reconstruct_frames(
            images, mats, present, affine, refine=refine, clean=clean, calibrated=calibrated, t0=t0
        )

    def reconstruct_frames(
        self,
        images: ArrayLike,
        mats: ArrayLike,
        present: ArrayLike,
        affine: ArrayLike,
        *,
        refine: bool = True,
        clean: bool = True,
        calibrated: bool = True,
        t0: float | None = None,
        axial_deg: float | None = None,
    ) -> ReconVolumes:
        """The network part of :meth:`reconstruct`: film frames (2, FILM_PX, FILM_PX) (AP, lateral),
        their matrices (2, 3, 4) from :func:`cube_to_film_matrix`, ``present`` (2,) and the cube affine.
        With ``clean`` the labels get the anatomical clean-up of :func:`clean_labels` (stray islands of a
        bone removed, cavities inside a bone filled). With ``calibrated`` the model's label-logit offsets
        are applied (:meth:`decode`). ``axial_deg`` overrides a knee-canonical model's estimate of the
        knee's rotation (evaluation with the truth's); the output grid is the patient-aligned cube."""
        t0 = time.perf_counter() if t0 is None else t0
        affine = np.asarray(affine, dtype=np.float64)
        centre = affine[:3, :3] @ np.full(3, (CUBE_VOXELS - 1) / 2.0) + affine[:3, 3]
        pres = np.asarray(present, dtype=np.float32).reshape(1, 2)
        used = tuple(v for v, p in zip(VIEWS, pres[0], strict=True) if p > 0.5)
        if "knee_ap" not in used:
            raise InputError("the knee AP film is required for reconstruction", reason="recon_missing_ap")
        t_prep = time.perf_counter()
        enc = self.encode(images, mats, present, axial_deg=axial_deg)
        t_enc = time.perf_counter()

        n = CUBE_VOXELS
        nc = n // 2
        cidx = np.stack(np.meshgrid(*(np.arange(nc) * 2,) * 3, indexing="ij"), -1).reshape(-1, 3)
        hu_c, lg_c = self.decode(enc, _grid_points(cidx), calibrated=calibrated)
        lab_c = np.argmax(lg_c, axis=1).astype(np.uint8).reshape(nc, nc, nc)
        hu_c = hu_c.reshape(nc, nc, nc)
        # Coarse voxel k sits at fine index 2k: zoom with the matching sample positions.
        pos = np.arange(n) / 2.0
        pi, pj, pk = np.meshgrid(pos, pos, pos, indexing="ij", sparse=True)
        hu = ndimage.map_coordinates(hu_c, np.broadcast_arrays(pi, pj, pk), order=1, mode="nearest").astype(
            np.float32
        )
        near = np.minimum(np.rint(pos).astype(int), nc - 1)
        labels = lab_c[np.ix_(near, near, near)]
        decoded = len(cidx)
        t_coarse = time.perf_counter()
        if refine:
            lab_mix = ndimage.maximum_filter(lab_c, 3) != ndimage.minimum_filter(lab_c, 3)
            hu_step = (ndimage.maximum_filter(hu_c, 3) - ndimage.minimum_filter(hu_c, 3)) > REFINE_HU_STEP
            busy_c = lab_mix | hu_step
            busy = busy_c[np.ix_(near, near, near)]
            fidx = np.argwhere(busy)
            if len(fidx):
                hu_f, lg_f = self.decode(enc, _grid_points(fidx), calibrated=calibrated)
                hu[busy] = hu_f
                labels[busy] = np.argmax(lg_f, axis=1).astype(np.uint8)
                decoded += len(fidx)
        t_fine = time.perf_counter()
        if clean:
            labels, stats = clean_labels(labels)
            log.debug("label clean-up: removed %s, filled %s", stats.removed, stats.filled)
        t_clean = time.perf_counter()
        hu_vol = Volume((hu * np.float32(HU_SCALE)).astype(np.float32), affine)
        lab_vol = Volume(np.ascontiguousarray(labels, dtype=np.uint8), affine.copy())
        timings = {
            "prepare": t_prep - t0,
            "encode": t_enc - t_prep,
            "decode_coarse": t_coarse - t_enc,
            "decode_fine": t_fine - t_coarse,
            "cleanup": t_clean - t_fine,
            "total": time.perf_counter() - t0,
        }
        log.info(
            "reconstruction (%s): %d points decoded in %.1f s", "+".join(used), decoded, timings["total"]
        )
        return ReconVolumes(
            hu=hu_vol,
            labels=lab_vol,
            views_used=used,
            centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            timings_s={k: round(v, 3) for k, v in timings.items()},
            backend=self._enc.name,
            model_version=self.model_version,
            decoded_points=decoded,
            axial_deg=enc.axial_deg,
        )


def reconstruct(
    films: Mapping[str, tuple[ArrayLike, ProjectionGeometry]],
    *,
    centre_mm: ArrayLike | None = None,
    models_dir: Path | None = None,
    engine: Any = None,
) -> ReconVolumes:
    """One-shot :meth:`Reconstructor.reconstruct` (opens and closes the models)."""
    with Reconstructor(models_dir, engine) as r:
        return r.reconstruct(films, centre_mm=centre_mm)
