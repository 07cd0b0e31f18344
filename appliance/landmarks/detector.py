"""Two-stage landmark detection on an AP long-leg film, at runtime: numpy + ``engines`` only.

1. Stage 1 (``landmarks_whole.onnx``): the film is resampled to the model's pixel size at the detector
   (2 mm/px, from the film's pixel spacing) and centred in its input frame (672 x 256, black padding,
   cut around the centre if larger); the eight heatmaps give coarse landmarks.
2. Stage 2 (``landmarks_crop.onnx``): for each region (hip: FHC; knee: FKC, MDFC, LDFC, MTP, LTP, TKC;
   ankle: AC) a 0.5 mm/px crop (160 x 224) is cut around the mean of its coarse landmarks and its
   region's heatmap channels give the refined points. With ``refine_passes`` = 2 (default) the crop is
   re-centred on the refined points and stage 2 runs again (a coarse guess off by more than the ~12 mm
   training jitter is pulled in by the first pass). The last pass averages ``tta_shifts_mm`` crops
   shifted around the centre (test-time averaging: each shift sees the landmark at another phase of the
   heatmap grid and with other context, so their errors partly cancel). All crops of a pass go through
   the network as one batch.
3. Stage 3 (``landmarks_fine.onnx``, optional: used when the file is there): 0.25 mm/px patches around
   each refined point (:mod:`appliance.landmarks.fine`); films coarser than its rule skip it.
4. Stage 1 also outputs femur / tibia mask logits (2 mm/px frame, stride 4): ``Detection.bone_masks``
   holds their probabilities and ``mask_to_film`` the mask-pixel -> film affine.

Heatmaps are decoded with the integer argmax refined by a parabola through the log of its neighbours
(sub-pixel), and the heatmap peak value is the confidence (1 = as sharp and strong as a training target).
Both stages read their input geometry, landmark names and regions from the ONNX metadata. Points are
returned in film pixels (col, row); to get millimetres at the patient multiply by the pixel spacing and
divide by the film's magnification.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from appliance.errors import InputError
from appliance.landmarks.detection import Detection, apparent_side, normalise_side, pick_leg, plausible_labels
from appliance.landmarks.fine import FINE_MODEL, FineStage
from appliance.landmarks.heatmaps import decode_heatmaps, frame_affine
from engines.api import Backend, BackendChoice
from engines.config import EngineConfig
from engines.select import open_backend

log = logging.getLogger(__name__)

__all__ = [
    "CROP_MODEL",
    "DEFAULT_MODELS_DIR",
    "KNEE_AXIS_MM",
    "SAME_LEG_MM",
    "TTA_SHIFTS_MM",
    "WHOLE_MODEL",
    "Detection",
    "LandmarkDetector",
    "decode_peaks",
    "normalise_side",
    "pick_leg",
    "plausible_labels",
    "resample",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
WHOLE_MODEL: Final = "landmarks_whole.onnx"
CROP_MODEL: Final = "landmarks_crop.onnx"
KNEE_AXIS_MM: Final = 80.0
"""Knee points farther than this (detector mm) from the hip-ankle line do not centre the knee crop: the
mechanical axis deviation of even marked varus/valgus knees stays within ~60 mm, the other knee of a
bilateral film lies >= ~150 mm away."""
SAME_LEG_MM: Final = 60.0
"""Knee centres of the two orientations closer than this (detector mm) are the same leg: knees of
the two legs of a standing adult stand >= ~150 mm apart centre to centre, so 60 mm separates them while
leaving room for two detections of one knee that disagree by a few mm."""
DEFAULT_MODELS_DIR: Final = Path(__file__).resolve().parents[2] / "models"
TTA_SHIFTS_MM: Final = ((0.0, 0.0), (-1.25, -1.25), (1.25, -1.25), (-1.25, 1.25), (1.25, 1.25))
"""Crop-centre offsets (col, row, detector mm) averaged on the last refinement pass: +-1.25 mm is
+-2.5 px of the 0.5 mm/px crop, so the shifted crops put a landmark half a 1 mm heatmap cell apart."""


# --- numpy helpers ----------------------------------------------------------------------------------
def resample(image: ArrayLike, to_film: ArrayLike, shape: tuple[int, int]) -> F32:
    """The ``shape`` frame whose pixel (col, row) sits at ``to_film @ (col, row, 1)`` of ``image``
    (axis-aligned frames, mirrored or not): Gaussian low-pass when shrinking (sigma = (1/s - 1) / 2),
    bilinear, zero outside. Mirrors the training-side resampling (``export.datasets.augment.warp_affine``)."""
    src = np.asarray(image, dtype=np.float32)
    a = np.asarray(to_film, dtype=np.float64)
    rows_o, cols_o = int(shape[0]), int(shape[1])
    s_min = 1.0 / max(abs(a[0, 0]), abs(a[1, 1]))
    sigma = 0.5 * (1.0 / s_min - 1.0) if s_min < 1.0 else 0.0
    corners = np.array([[0, 0, 1], [cols_o - 1, rows_o - 1, 1]], np.float64) @ a.T
    margin = int(np.ceil(3.0 * sigma)) + 2
    c0 = max(0, int(np.floor(corners[:, 0].min())) - margin)
    c1 = min(src.shape[1], int(np.ceil(corners[:, 0].max())) + margin + 1)
    r0 = max(0, int(np.floor(corners[:, 1].min())) - margin)
    r1 = min(src.shape[0], int(np.ceil(corners[:, 1].max())) + margin + 1)
    if c1 <= c0 or r1 <= r0:
        return np.zeros((rows_o, cols_o), np.float32)
    win = src[r0:r1, c0:c1]
    if sigma > 0.05:
        win = ndimage.gaussian_filter(win, sigma, mode="nearest")
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    m_rc = swap @ a[:2, :2] @ swap
    off_rc = swap @ (a[:2, 2] - np.array([c0, r0], np.float64))
    out = ndimage.affine_transform(
        win, m_rc, offset=off_rc, output_shape=(rows_o, cols_o), order=1, mode="constant", cval=0.0
    )
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def decode_peaks(heatmaps: ArrayLike, stride: int) -> tuple[F64, F64]:
    """(points (N, 2) input (col, row), confidence (N,)) of (N, H, W) heatmaps
    (:func:`appliance.landmarks.heatmaps.decode_heatmaps`, quadratic)."""
    d = decode_heatmaps(heatmaps, stride)
    return d.points, d.confidence


def _grid_to_input(stride: int) -> F64:
    """Heatmap-pixel (col, row, 1) -> input-pixel (col, row, 1) of a stride-``stride`` grid."""
    off = (stride - 1) / 2.0
    return np.array([[stride, 0.0, off], [0.0, stride, off], [0.0, 0.0, 1.0]])


def _apply(a: F64, pts: F64) -> F64:
    return np.asarray(pts @ a[:2, :2].T + a[:2, 2], dtype=np.float64)


# --- the detector -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stage:
    backend: Backend
    input_name: str
    rows: int
    cols: int
    mm_per_px: float
    stride: int
    version: str


def _stage(backend: Backend) -> _Stage:
    info = backend.info
    g = info.input_geometry
    try:
        return _Stage(
            backend=backend,
            input_name=info.input_names[0],
            rows=int(g["rows"]),
            cols=int(g["cols"]),
            mm_per_px=float(g["mm_per_px"]),
            stride=int(g["stride"]),
            version=info.version,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{info.name}: ONNX metadata lacks the input geometry ({exc})", reason="bad_model_metadata"
        ) from exc


class LandmarkDetector:
    """Loads ``landmarks_whole.onnx`` and ``landmarks_crop.onnx`` from ``models_dir`` through
    :func:`engines.select.open_backend` and finds the eight long-leg landmarks of one leg on a film.

    Models whose metadata carries ``xr3d.canonical_side`` (e.g. "R") were trained on films mirrored so
    that the measured leg always looks like that side's leg in the standard radiological display (a
    right leg on the viewer's left, lateral toward -col); on a bilateral film they measure the leg on
    that side. The detector then mirrors the film for the other side, so ``detect(..., side="L")``
    measures the left leg. Older models without the key ignore ``side`` (they were trained on one-leg
    films of either side and may pick either leg of a bilateral film).

    When ``landmarks_fine.onnx`` is in ``models_dir`` (and ``fine`` is True) the fine patch stage
    (:class:`appliance.landmarks.fine.FineStage`) refines the crop stage's points; without the file
    the detector behaves exactly as before."""

    def __init__(
        self,
        models_dir: Path | None = None,
        config: EngineConfig | None = None,
        *,
        refine_passes: int = 2,
        tta_shifts_mm: tuple[tuple[float, float], ...] = TTA_SHIFTS_MM,
        fine: bool = True,
    ) -> None:
        d = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        missing = [n for n in (WHOLE_MODEL, CROP_MODEL) if not (d / n).is_file()]
        if missing:
            raise InputError(
                f"landmark model file(s) missing in {d}: {', '.join(missing)}; train them with "
                "`xr3d train landmarks --data DIR --out DIR --seed S` (writes models/)",
                reason="model_missing",
            )
        if refine_passes < 0:
            raise InputError(f"refine_passes must be >= 0, got {refine_passes}")
        cfg = config or EngineConfig()
        self._max_batch = int(cfg.max_batch)
        b1, self.choice = open_backend(d / WHOLE_MODEL, cfg)
        b2, _ = open_backend(d / CROP_MODEL, cfg)
        self._whole = _stage(b1)
        self._crop = _stage(b2)
        meta = b1.info.meta
        try:
            self.names: tuple[str, ...] = tuple(json.loads(meta["xr3d.landmarks"]))
            regions = json.loads(b2.info.meta["xr3d.regions"])
        except (KeyError, ValueError) as exc:
            raise InputError(
                f"landmark models lack names/regions metadata ({exc})", reason="bad_model_metadata"
            ) from exc
        self.regions: dict[str, tuple[int, ...]] = {
            r: tuple(self.names.index(n) for n in names) for r, names in regions.items()
        }
        self.canonical_side: str | None = normalise_side(meta.get("xr3d.canonical_side"))
        self.refine_passes = int(refine_passes)
        self.tta_shifts_mm = tuple((float(a), float(b)) for a, b in tta_shifts_mm) or ((0.0, 0.0),)
        self.models_dir = d
        # stage 3 only when its file is there (and not turned off): without it, 0.3 behaviour exactly
        self.fine_stage: FineStage | None = (
            FineStage(d / FINE_MODEL, cfg) if fine and (d / FINE_MODEL).is_file() else None
        )

    @property
    def whole_geometry(self) -> tuple[int, int, int]:
        """Stage 1's input (rows, cols) and heatmap / mask stride."""
        return self._whole.rows, self._whole.cols, self._whole.stride

    @property
    def whole_mm_per_px(self) -> float:
        return self._whole.mm_per_px

    @property
    def backend_name(self) -> str:
        return self._whole.backend.name

    @property
    def model_versions(self) -> dict[str, str]:
        v = {"landmarks_whole": self._whole.version, "landmarks_crop": self._crop.version}
        if self.fine_stage is not None:
            v["landmarks_fine"] = self.fine_stage.version
        return v

    @property
    def backend_choice(self) -> BackendChoice:
        return self.choice

    def close(self) -> None:
        self._whole.backend.close()
        self._crop.backend.close()
        if self.fine_stage is not None:
            self.fine_stage.close()

    def __enter__(self) -> LandmarkDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, stage: _Stage, image: F32) -> F32:
        return self._run_batch(stage, image[None])[0]

    def _run_batch(self, stage: _Stage, images: F32) -> F32:
        """Heatmaps (B, N, h, w) of a (B, rows, cols) stack, in chunks of at most the engine's
        ``max_batch`` (a TensorRT profile's largest batch)."""
        parts = []
        for i in range(0, len(images), self._max_batch):
            x = images[i : i + self._max_batch, None].astype(np.float32)
            parts.append(np.asarray(stage.backend.run({stage.input_name: x})["heatmaps"], np.float32))
        return np.concatenate(parts)

    def _run_whole(self, image: F32) -> tuple[F32, F32 | None]:
        """Stage 1: (heatmaps (N, h, w), mask probabilities (2, h, w) or None)."""
        s = self._whole
        out = s.backend.run({s.input_name: image[None, None].astype(np.float32)})
        heat = np.asarray(out["heatmaps"][0], dtype=np.float32)
        logits = out.get("mask_logits")
        if logits is None:
            return heat, None
        m = np.asarray(logits[0], dtype=np.float64)
        return heat, np.asarray(1.0 / (1.0 + np.exp(-np.clip(m, -60.0, 60.0))), dtype=np.float32)

    def _mirror(self, side: str | None) -> bool:
        return self.canonical_side is not None and side is not None and side != self.canonical_side

    def whole_frame(
        self, shape: tuple[int, int], spacing_mm: tuple[float, float], *, mirror: bool = False
    ) -> F64:
        """Stage-1 input frame -> film affine for a film of ``shape`` and (row, col) spacing."""
        s = self._whole
        centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
        return frame_affine(
            s.mm_per_px / spacing_mm[1],
            s.mm_per_px / spacing_mm[0],
            centre,
            (s.rows, s.cols),
            mirror=mirror,
        )

    def _refine(
        self,
        img: F32,
        spacing: tuple[float, float],
        points: F64,
        conf: F64,
        passes: int,
        mirror: bool,
    ) -> tuple[F64, F64, NDArray[np.bool_]]:
        cs = self._crop
        points, conf = points.copy(), conf.copy()
        refined = np.zeros(len(self.names), bool)
        for k in range(passes):
            shifts = self.tta_shifts_mm if k == passes - 1 else ((0.0, 0.0),)
            jobs: list[tuple[list[int], F64]] = []
            crops: list[F32] = []
            for region, idx in self.regions.items():
                ix = list(idx)
                centre = self._region_centre(region, points, ix, spacing)
                for dc, dr in shifts:
                    a2 = frame_affine(
                        cs.mm_per_px / spacing[1],
                        cs.mm_per_px / spacing[0],
                        (float(centre[0]) + dc / spacing[1], float(centre[1]) + dr / spacing[0]),
                        (cs.rows, cs.cols),
                        mirror=mirror,
                    )
                    jobs.append((ix, a2))
                    crops.append(resample(img, a2, (cs.rows, cs.cols)))
            heat = self._run_batch(cs, np.stack(crops))
            acc = np.zeros_like(points)
            acc_c = np.zeros_like(conf)
            count = np.zeros(len(self.names))
            for (ix, a2), h2 in zip(jobs, heat, strict=True):
                p2, c2 = decode_peaks(h2[ix], cs.stride)
                acc[ix] += _apply(a2, p2)
                acc_c[ix] += c2
                count[ix] += 1
            done = count > 0
            points[done] = acc[done] / count[done, None]
            conf[done] = acc_c[done] / count[done]
            refined |= done
        return points, conf, refined

    def _region_centre(self, region: str, points: F64, ix: list[int], spacing: tuple[float, float]) -> F64:
        """Where a region's crop is centred: the mean of its points; for the knee only of those
        within :data:`KNEE_AXIS_MM` of the hip-ankle line (stage 1 on a bilateral film sometimes puts
        some knee points on the other knee, and their mean would fall between the knees)."""
        pts = points[ix]
        if region != "knee" or "FHC" not in self.names or "AC" not in self.names:
            return np.asarray(pts.mean(axis=0), dtype=np.float64)
        mm = np.array([spacing[1], spacing[0]])
        hip = points[self.names.index("FHC")] * mm
        ankle = points[self.names.index("AC")] * mm
        axis = ankle - hip
        length = float(np.hypot(axis[0], axis[1]))
        if length < 1e-6:
            return np.asarray(pts.mean(axis=0), dtype=np.float64)
        rel = pts * mm - hip
        dist = np.abs(rel[:, 0] * axis[1] - rel[:, 1] * axis[0]) / length
        near = dist < KNEE_AXIS_MM
        chosen = pts[near] if near.any() else pts
        return np.asarray(chosen.mean(axis=0), dtype=np.float64)

    def refine(
        self,
        image: ArrayLike,
        spacing_mm: tuple[float, float],
        guess: ArrayLike,
        passes: int = 1,
        *,
        side: str | None = None,
    ) -> tuple[F64, F64]:
        """Stage 2 alone from ``guess`` (N, 2) film points (diagnostics: the crop stage's own error
        when the crops are centred near the truth). Returns (points, confidence)."""
        img = np.asarray(image, dtype=np.float32)
        g = np.asarray(guess, dtype=np.float64).reshape(len(self.names), 2)
        sp = (float(spacing_mm[0]), float(spacing_mm[1]))
        mirror = self._mirror(normalise_side(side))
        p, c, _ = self._refine(img, sp, g, np.zeros(len(self.names)), passes, mirror)
        return p, c

    @staticmethod
    def _checked(
        image: ArrayLike, spacing_mm: tuple[float, float] | float
    ) -> tuple[F32, tuple[float, float]]:
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2 or img.size == 0:
            raise InputError(f"film must be a non-empty 2D image, got shape {img.shape}", reason="bad_film")
        sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
        if sp.size == 1:
            sp = np.repeat(sp, 2)
        if sp.size != 2 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise InputError(
                f"pixel spacing must be two positive numbers, got {spacing_mm}", reason="bad_spacing"
            )
        return img, (float(sp[0]), float(sp[1]))

    def _detect_one(self, img: F32, spacing: tuple[float, float], side: str | None) -> Detection:
        mirror = self._mirror(side)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        a1 = self.whole_frame((img.shape[0], img.shape[1]), spacing, mirror=mirror)
        x1 = resample(img, a1, (self._whole.rows, self._whole.cols))
        t1 = time.perf_counter()
        h1, masks = self._run_whole(x1)
        t2 = time.perf_counter()
        p1, c1 = decode_peaks(h1, self._whole.stride)
        coarse = _apply(a1, p1)
        timings["preprocess"] = t1 - t0
        timings["stage1"] = t2 - t1
        t3 = time.perf_counter()
        points, conf, refined = self._refine(img, spacing, coarse, c1, self.refine_passes, mirror)
        timings["stage2"] = time.perf_counter() - t3
        versions = self.model_versions
        crop_points = None
        if self.fine_stage is not None and self.fine_stage.applies_to(spacing):
            t4 = time.perf_counter()
            crop_points = points
            points = self.fine_stage.refine(img, spacing, points, mirror=mirror, which=refined).points
            timings["stage3"] = time.perf_counter() - t4
        else:
            versions.pop("landmarks_fine", None)  # the film's points come from stages 1-2 only
        timings["total"] = time.perf_counter() - t0
        return Detection(
            names=self.names,
            points=points,
            confidence=conf,
            coarse_points=coarse,
            coarse_confidence=c1,
            refined=refined,
            timings_s=timings,
            backend=self.backend_name,
            model_versions=versions,
            side=side if self.canonical_side is not None else None,
            bone_masks=masks,
            mask_to_film=None if masks is None else a1 @ _grid_to_input(self._whole.stride),
            crop_points=crop_points,
        )

    def detect_legs(self, image: ArrayLike, spacing_mm: tuple[float, float] | float) -> dict[str, Detection]:
        """Both legs of a film whose side is unknown: {"R": ..., "L": ...} from the two orientations.

        On a one-leg film both orientations find the same leg (their knee centres closer than
        :data:`SAME_LEG_MM` at the detector); then only the one :func:`pick_leg` prefers is returned
        (the orientation the leg does not look like tends to give inconsistent medial/lateral
        labels). A model without ``canonical_side`` gives one
        detection keyed by the side its landmarks look like ("R" if that cannot be told)."""
        img, spacing = self._checked(image, spacing_mm)
        if self.canonical_side is None:
            det = self._detect_one(img, spacing, None)
            return {apparent_side(det) or "R": det}
        legs = {s: self._detect_one(img, spacing, s) for s in ("R", "L")}
        k = self.names.index("FKC") if "FKC" in self.names else 0
        d = legs["R"].points[k] - legs["L"].points[k]
        if float(np.hypot(d[0] * spacing[1], d[1] * spacing[0])) < SAME_LEG_MM:
            best = pick_leg(legs.values())
            return {str(best.side): best}
        return legs

    def detect(
        self,
        image: ArrayLike,
        spacing_mm: tuple[float, float] | float,
        side: str | None = None,
    ) -> Detection:
        """Landmarks of one leg: ``image`` 2D float in [0, 1] with bone bright (MONOCHROME2 sense),
        ``spacing_mm`` the detector pixel spacing (row, col) or a scalar, ``side`` the leg the study is
        about (R/L/right/left: the DICOM laterality or the sidecar's side).

        Without a side, both legs are measured (:meth:`detect_legs`) and :func:`pick_leg` chooses
        (its ``side`` says which). On a bilateral film that choice is close to a coin toss (10 of 16
        held-out films): callers that do not know the side should report both legs from
        :meth:`detect_legs` instead."""
        img, spacing = self._checked(image, spacing_mm)
        s = normalise_side(side)
        if s is not None or self.canonical_side is None:
            return self._detect_one(img, spacing, s)
        legs = self.detect_legs(img, spacing)
        best = pick_leg(legs.values())
        log.info("side unknown: measured leg %s of %d found", best.side, len(legs))
        return best
