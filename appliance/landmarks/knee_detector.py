"""Landmark detection on knee AP and knee lateral films, at runtime: numpy + scipy + ``engines`` only.

``models/knee_landmarks.onnx`` is one network for both views (``export/models/knee_landmark_net.py``):
the film is resampled to the model's pixel size at the detector (0.5 mm/px, from the film's detector
pixel spacing; the training side's Gaussian pre-filter + bilinear, ``detector.resample``),
mirrored when the film is not a right knee in the standard display (:func:`knee_views.mirror_decision`),
and cut to the model's input (480 x 384) around the film centre. A second pass re-centres the input on
the knee the first pass found when it lies more than :data:`RECENTRE_MM` from the centre (real knee films
are not always centred on the joint). Heatmaps of the film's view are decoded with the shared
log-quadratic peak refinement (``appliance/landmarks/heatmaps.py``); the peak is the confidence.
Points are returned in the stored film's pixels (col, row), mirrored back exactly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError
from appliance.landmarks.detector import DEFAULT_MODELS_DIR, resample
from appliance.landmarks.heatmaps import decode_heatmaps, frame_affine
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.landmarks.knee_views import (
    KNEE_AP,
    KNEE_LANDMARKS,
    KNEE_VIEWS,
    MirrorDecision,
    mirror_decision,
)
from engines.api import Backend, BackendChoice
from engines.config import EngineConfig
from engines.select import open_backend

log = logging.getLogger(__name__)

__all__ = ["KNEE_MODEL", "RECENTRE_MM", "KneeDetection", "KneeLandmarkDetector"]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
KNEE_MODEL: Final = "knee_landmarks.onnx"
RECENTRE_MM: Final = 5.0
"""Second pass when the knee found lies farther than this (detector mm) from the input's centre."""
_JOINT: Final = {
    KNEE_AP: ("FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC"),
    "knee_lat": ("FKC", "TKC", "MTPA", "MTPP"),
}


@dataclass(frozen=True, eq=False)
class KneeDetection:
    """Landmarks of one knee film: ``points`` (N, 2) stored-film (col, row), ``confidence`` (N,)."""

    view: str
    names: tuple[str, ...]
    points: F64
    confidence: F64
    orientation: MirrorDecision
    timings_s: Mapping[str, float] = field(default_factory=dict)
    backend: str = ""
    model_versions: Mapping[str, str] = field(default_factory=dict)
    passes: int = 1

    @property
    def mean_confidence(self) -> float:
        return float(np.mean(self.confidence)) if len(self.confidence) else 0.0

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return {n: (float(p[0]), float(p[1])) for n, p in zip(self.names, self.points, strict=True)}

    def low_confidence(self, threshold: float = KNEE_LOW_CONFIDENCE) -> list[str]:
        return sorted(n for n, c in zip(self.names, self.confidence, strict=True) if c < threshold)

    def landmarks_json(self, threshold: float = KNEE_LOW_CONFIDENCE) -> dict[str, dict[str, Any]]:
        return {
            n: {
                "col": float(p[0]),
                "row": float(p[1]),
                "confidence": float(c),
                "low_confidence": bool(c < threshold),
            }
            for n, p, c in zip(self.names, self.points, self.confidence, strict=True)
        }


class KneeLandmarkDetector:
    """Loads ``knee_landmarks.onnx`` from ``models_dir`` through :func:`engines.select.open_backend`."""

    def __init__(self, models_dir: Path | None = None, config: EngineConfig | None = None) -> None:
        d = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        if not (d / KNEE_MODEL).is_file():
            raise InputError(
                f"knee landmark model missing: {d / KNEE_MODEL}; train it with "
                "`xr3d train knee-landmarks --data DIR --out DIR --seed S --models-dir models`",
                reason="model_missing",
            )
        self.backend: Backend
        self.backend, self.choice = open_backend(d / KNEE_MODEL, config or EngineConfig())
        info = self.backend.info
        try:
            g = info.input_geometry
            self.rows, self.cols = int(g["rows"]), int(g["cols"])
            self.mm_per_px, self.stride = float(g["mm_per_px"]), int(g["stride"])
            channels: list[str] = json.loads(info.meta["xr3d.channels"])
            views: dict[str, list[str]] = json.loads(info.meta["xr3d.views"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{KNEE_MODEL}: metadata incomplete ({exc})", reason="bad_model_metadata"
            ) from exc
        prefix = {KNEE_AP: "ap", "knee_lat": "lat"}
        self.channels: dict[str, tuple[int, ...]] = {}
        for v in KNEE_VIEWS:
            if tuple(views.get(v, ())) != KNEE_LANDMARKS[v]:
                raise InputError(
                    f"{KNEE_MODEL}: landmarks of {v} differ from this runtime's", reason="bad_model_metadata"
                )
            self.channels[v] = tuple(channels.index(f"{prefix[v]}.{n}") for n in KNEE_LANDMARKS[v])
        self.input_name = info.input_names[0]
        self.version = info.version
        self.models_dir = d

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def backend_choice(self) -> BackendChoice:
        return self.choice

    @property
    def model_versions(self) -> dict[str, str]:
        return {"knee_landmarks": self.version}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> KneeLandmarkDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frame(self, centre: tuple[float, float], spacing: tuple[float, float], mirror: bool) -> F64:
        return frame_affine(
            self.mm_per_px / spacing[1],
            self.mm_per_px / spacing[0],
            centre,
            (self.rows, self.cols),
            mirror=mirror,
        )

    def _pass(
        self, img: F32, spacing: tuple[float, float], view: str, centre: tuple[float, float], mirror: bool
    ) -> tuple[F64, F64]:
        a = self._frame(centre, spacing, mirror)
        x = resample(img, a, (self.rows, self.cols))
        out = self.backend.run({self.input_name: x[None, None].astype(np.float32)})
        h = np.asarray(out["heatmaps"][0], dtype=np.float32)[list(self.channels[view])]
        dec = decode_heatmaps(h, self.stride)
        pts = dec.points @ a[:2, :2].T + a[:2, 2]
        return np.asarray(pts, dtype=np.float64), dec.confidence

    def _detect_one(
        self, img: F32, spacing: tuple[float, float], view: str, decision: MirrorDecision
    ) -> KneeDetection:
        t0 = time.perf_counter()
        centre = ((img.shape[1] - 1) / 2.0, (img.shape[0] - 1) / 2.0)
        pts, conf = self._pass(img, spacing, view, centre, decision.mirror)
        t1 = time.perf_counter()
        names = KNEE_LANDMARKS[view]
        joint = [names.index(n) for n in _JOINT[view]]
        knee = np.nanmean(pts[joint], axis=0)
        shift = (knee - np.asarray(centre)) * np.array([spacing[1], spacing[0]])
        passes = 1
        if np.all(np.isfinite(knee)) and float(np.hypot(*shift)) > RECENTRE_MM:
            pts, conf = self._pass(img, spacing, view, (float(knee[0]), float(knee[1])), decision.mirror)
            passes = 2
        t2 = time.perf_counter()
        return KneeDetection(
            view=view,
            names=names,
            points=pts,
            confidence=conf,
            orientation=decision,
            timings_s={"pass1": t1 - t0, "pass2": t2 - t1, "total": t2 - t0},
            backend=self.backend_name,
            model_versions=self.model_versions,
            passes=passes,
        )

    def detect(
        self,
        image: ArrayLike,
        spacing_mm: tuple[float, float] | float,
        view: str,
        *,
        side: str | None = None,
        patient_orientation: Sequence[str] | str | None = None,
    ) -> KneeDetection:
        """Landmarks of a knee film: ``image`` 2D float in [0, 1], bone bright; ``spacing_mm`` the
        detector pixel spacing (row, col) or a scalar; ``view`` knee_ap / knee_lat; ``side`` the knee
        (R/L/right/left) and ``patient_orientation`` DICOM (0020,0020) when known. A knee AP film with
        neither is run both ways and the orientation with the higher mean confidence is kept
        (``orientation.basis`` = "image")."""
        if view not in KNEE_VIEWS:
            raise InputError(f"not a knee view: {view!r}", reason="unsupported_view")
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
        spacing = (float(sp[0]), float(sp[1]))
        decision = mirror_decision(view, side, patient_orientation)
        if decision.basis != "unknown":
            return self._detect_one(img, spacing, view, decision)
        tries = [
            self._detect_one(
                img,
                spacing,
                view,
                MirrorDecision(m, decision.display_mirrored, decision.row_direction, None, "image"),
            )
            for m in (False, True)
        ]
        best = max(tries, key=lambda d: d.mean_confidence)
        log.info("knee %s without side/orientation: mirror=%s by confidence", view, best.orientation.mirror)
        return best
