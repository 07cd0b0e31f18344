"""Stage 3 of the long-leg landmark detector at runtime: fine patches (numpy + ``engines`` only).

``landmarks_fine.onnx`` sees a 96 x 96 patch at 0.25 mm/px (detector) around each point the crop stage
found and returns eight heatmaps at stride 2; the patch of landmark ``k`` is read on channel ``k``
(log-quadratic peak, :func:`appliance.landmarks.heatmaps.decode_heatmaps`). ``shifts_mm`` patches per
landmark, each centred slightly off the point, are averaged (test-time averaging, as in the crop stage).

Rules (recorded in the ONNX metadata when trained, these defaults otherwise):

* films coarser than :data:`MAX_FILM_MM_PER_PX` (detector pixel spacing) skip the stage: there the crop
  stage (0.5 mm/px) already sees everything the film holds, and a finer patch would only be
  interpolated. PACS exports at 1-2 mm/px therefore keep the crop stage's points.
* ``refines``: the landmarks the stage is applied to (metadata ``xr3d.refines``; default
  :data:`CONTOUR_LANDMARKS`), and
  ``blend``: the returned point is ``crop + blend * (fine - crop)`` (metadata ``xr3d.blend``; default 1):
  the two stages' errors are only partly correlated, so a weighted mean can beat either.
* a point that the stage would move farther than :data:`MAX_MOVE_MM` (detector mm) from the crop
  stage's keeps the crop stage's position: the stage was trained on patches within ~+-4 mm of the truth,
  a larger move is a patch it does not understand.

Confidence stays the crop stage's (the low-confidence threshold was fitted on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError
from appliance.landmarks.heatmaps import decode_heatmaps, frame_affine
from engines.api import Backend
from engines.config import EngineConfig
from engines.select import open_backend

log = logging.getLogger(__name__)

__all__ = [
    "CONTOUR_LANDMARKS",
    "FINE_MODEL",
    "FINE_SHIFTS_MM",
    "MAX_FILM_MM_PER_PX",
    "MAX_MOVE_MM",
    "FineResult",
    "FineStage",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
FINE_MODEL: Final = "landmarks_fine.onnx"
MAX_FILM_MM_PER_PX: Final = 0.5
MAX_MOVE_MM: Final = 5.0
FINE_SHIFTS_MM: Final = ((0.0, 0.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0))
"""Patch-centre offsets (col, row, detector mm) averaged per landmark: each patch sees the landmark at
another place (the stage's own errors partly cancel). +-1 mm was better than +-0.25 and +-2 mm on the
validation films 3600-3605 (docs/landmarks.md, fourth pass)."""
CONTOUR_LANDMARKS: Final = ("MDFC", "LDFC", "MTP", "LTP")
"""What the stage refines unless its metadata says otherwise: the contour-extreme landmarks (most distal
condyle points, plateau edges), an edge a 24 mm patch shows in full. The centre-of-shape landmarks (FHC:
a ~45 mm head; FKC, TKC: the notch and the spines; AC: the talar dome) need more context than the patch
holds; on the validation films the stage made FHC and FKC worse and TKC, AC no better."""


@dataclass(frozen=True, eq=False)
class FineResult:
    """``points`` (N, 2) film (col, row) after the stage; ``moved`` where the stage changed a point;
    ``ran`` False when the film was too coarse (points unchanged)."""

    points: F64
    moved: NDArray[np.bool_]
    ran: bool


class FineStage:
    """Opens ``landmarks_fine.onnx`` through :func:`engines.select.open_backend`."""

    def __init__(
        self,
        path: Path,
        config: EngineConfig | None = None,
        *,
        shifts_mm: Sequence[tuple[float, float]] = FINE_SHIFTS_MM,
        blend: float | None = None,
        refines: Sequence[str] | None = None,
    ) -> None:
        cfg = config or EngineConfig()
        self._max_batch = int(cfg.max_batch)
        self.backend: Backend
        self.backend, _ = open_backend(Path(path), cfg)
        info = self.backend.info
        g = info.input_geometry
        try:
            self.rows, self.cols = int(g["rows"]), int(g["cols"])
            self.mm_per_px = float(g["mm_per_px"])
            self.stride = int(g["stride"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{info.name}: ONNX metadata lacks the input geometry ({exc})", reason="bad_model_metadata"
            ) from exc
        meta = info.meta
        self.max_film_mm_per_px = float(meta.get("xr3d.max_film_mm_per_px", MAX_FILM_MM_PER_PX))
        self.max_move_mm = float(meta.get("xr3d.max_move_mm", MAX_MOVE_MM))
        self.input_name = info.input_names[0]
        self.version = info.version
        self.shifts_mm = tuple((float(a), float(b)) for a, b in shifts_mm) or ((0.0, 0.0),)
        self.blend = float(meta.get("xr3d.blend", 1.0)) if blend is None else float(blend)
        try:
            self.names: tuple[str, ...] = tuple(json.loads(meta.get("xr3d.landmarks", "[]")))
            chosen = (
                json.loads(meta["xr3d.refines"]) if refines is None and "xr3d.refines" in meta else refines
            )
        except ValueError as exc:
            raise InputError(
                f"{info.name}: bad landmark metadata ({exc})", reason="bad_model_metadata"
            ) from exc
        self.refines: tuple[str, ...] = tuple(chosen) if chosen is not None else CONTOUR_LANDMARKS

    def close(self) -> None:
        self.backend.close()

    def applies_to(self, spacing_mm: tuple[float, float]) -> bool:
        """Whether a film of this (row, col) detector spacing gets the fine stage."""
        return max(spacing_mm) <= self.max_film_mm_per_px + 1e-9

    def _run(self, patches: F32) -> F32:
        parts = []
        for i in range(0, len(patches), self._max_batch):
            x = patches[i : i + self._max_batch, None].astype(np.float32)
            parts.append(np.asarray(self.backend.run({self.input_name: x})["heatmaps"], np.float32))
        return np.concatenate(parts)

    def refine(
        self,
        image: ArrayLike,
        spacing_mm: tuple[float, float],
        points: ArrayLike,
        *,
        mirror: bool = False,
        which: ArrayLike | None = None,
    ) -> FineResult:
        """Refine ``points`` (N, 2) film (col, row) on ``image`` (bone bright, [0, 1]); ``which`` (N,)
        bool selects the points to refine (default all); ``mirror`` as the detector's other stages."""
        from appliance.landmarks.detector import resample

        img = np.asarray(image, dtype=np.float32)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
        n = len(pts)
        sel = np.ones(n, bool) if which is None else np.asarray(which, bool).reshape(n).copy()
        if self.names and len(self.names) == n:
            sel &= np.array([nm in self.refines for nm in self.names])
        sp = (float(spacing_mm[0]), float(spacing_mm[1]))
        if not self.applies_to(sp) or not sel.any():
            return FineResult(points=pts, moved=np.zeros(n, bool), ran=False)
        jobs: list[tuple[int, F64]] = []
        patches: list[F32] = []
        for k in (int(i) for i in np.flatnonzero(sel)):
            for dc, dr in self.shifts_mm:
                a = frame_affine(
                    self.mm_per_px / sp[1],
                    self.mm_per_px / sp[0],
                    (float(pts[k, 0]) + dc / sp[1], float(pts[k, 1]) + dr / sp[0]),
                    (self.rows, self.cols),
                    mirror=mirror,
                )
                jobs.append((k, a))
                patches.append(resample(img, a, (self.rows, self.cols)))
        heat = self._run(np.stack(patches))
        acc = np.zeros_like(pts)
        count = np.zeros(n)
        for (k, a), h in zip(jobs, heat, strict=True):
            d = decode_heatmaps(h[k : k + 1], self.stride)
            q = d.points[0]  # input (patch) pixels
            acc[k] += a[:2, :2] @ q + a[:2, 2]
            count[k] += 1
        new = pts.copy()
        done = count > 0
        new[done] = pts[done] + self.blend * (acc[done] / count[done, None] - pts[done])
        move = np.hypot((new[:, 0] - pts[:, 0]) * sp[1], (new[:, 1] - pts[:, 1]) * sp[0])
        far = done & (move > self.max_move_mm)
        if far.any():
            log.info(
                "fine stage: %d point(s) would move > %.1f mm; kept the crop stage's",
                int(far.sum()),
                self.max_move_mm,
            )
        moved = done & ~far
        out = np.where(moved[:, None], new, pts)
        return FineResult(points=np.asarray(out, np.float64), moved=moved, ran=True)
