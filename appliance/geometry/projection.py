"""Cone-beam projection geometry shared by the simulator, the renderer and the runtime.

One flat detector and one point source, all in DICOM patient coordinates (LPS, mm). Pixel
coordinates are ``(column, row)`` with the centre of the first stored pixel at ``(0, 0)``; this is the
convention every film, landmark file and overlay in xr3d uses.

The same object gives the 3x4 projection matrix recorded with each film and the per-pixel rays the
renderer traces, so a point projected with the matrix lands exactly where the renderer draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import GeometryError

FloatArray = NDArray[np.float64]


def _unit(v: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(v, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n < 1e-9:
        raise GeometryError(f"{name} must be a finite non-zero 3-vector")
    return a / n


@dataclass(frozen=True)
class ProjectionGeometry:
    """A point source and a flat detector of ``columns`` x ``rows`` pixels.

    ``detector_origin_mm`` is the centre of pixel (0, 0); ``u_dir`` points along increasing column,
    ``v_dir`` along increasing row; ``pitch_u_mm`` / ``pitch_v_mm`` are the pixel pitches at the
    detector (DICOM ImagerPixelSpacing is ``(pitch_v_mm, pitch_u_mm)``: row spacing first).
    """

    source_mm: tuple[float, float, float]
    detector_origin_mm: tuple[float, float, float]
    u_dir: tuple[float, float, float]
    v_dir: tuple[float, float, float]
    pitch_u_mm: float
    pitch_v_mm: float
    columns: int
    rows: int
    name: str = ""

    def __post_init__(self) -> None:
        u = _unit(self.u_dir, "u_dir")
        v = _unit(self.v_dir, "v_dir")
        if abs(float(u @ v)) > 1e-6:
            raise GeometryError("detector axes u_dir and v_dir must be orthogonal")
        if self.pitch_u_mm <= 0 or self.pitch_v_mm <= 0:
            raise GeometryError("pixel pitch must be positive")
        if self.columns < 1 or self.rows < 1:
            raise GeometryError("detector must have at least one pixel")
        if abs(self.source_to_detector_mm()) < 1.0:
            raise GeometryError("source lies on the detector plane")

    # --- frames -------------------------------------------------------------------------------
    @property
    def source(self) -> FloatArray:
        return np.asarray(self.source_mm, dtype=np.float64)

    @property
    def origin(self) -> FloatArray:
        return np.asarray(self.detector_origin_mm, dtype=np.float64)

    @property
    def u(self) -> FloatArray:
        return _unit(self.u_dir, "u_dir")

    @property
    def v(self) -> FloatArray:
        return _unit(self.v_dir, "v_dir")

    @property
    def normal(self) -> FloatArray:
        """Detector normal pointing from the detector toward the source."""
        n = np.cross(self.u, self.v)
        if float(n @ (self.source - self.origin)) < 0:
            n = -n
        return n

    def source_to_detector_mm(self) -> float:
        """Source-image distance (SID): perpendicular distance from source to the detector plane."""
        n = np.cross(_unit(self.u_dir, "u_dir"), _unit(self.v_dir, "v_dir"))
        return float(abs(n @ (np.asarray(self.source_mm) - np.asarray(self.detector_origin_mm))))

    def principal_point(self) -> tuple[float, float]:
        """Pixel coordinate where the perpendicular from the source meets the detector."""
        d = self.source - self.origin
        return float(d @ self.u) / self.pitch_u_mm, float(d @ self.v) / self.pitch_v_mm

    def magnification_at(self, point_mm: ArrayLike) -> float:
        """SID / SOD for a point: how much a length at that depth is magnified on the detector."""
        p = np.asarray(point_mm, dtype=np.float64).reshape(3)
        sod = float((self.source - p) @ self.normal)
        if sod <= 0:
            raise GeometryError("point is not between source and detector")
        return self.source_to_detector_mm() / sod

    # --- projection ---------------------------------------------------------------------------
    def matrix(self) -> FloatArray:
        """3x4 matrix P with ``w * [col, row, 1] = P @ [x, y, z, 1]`` (LPS mm to pixels)."""
        s, o, u, v, n = self.source, self.origin, self.u, self.v, self.normal
        sid = self.source_to_detector_mm()
        # A point X projects to the detector point D = S + t (X - S) with t = sid / ((S - X) . n).
        # Then col = (D - O) . u / pu. Writing w = (S - X) . n makes every row linear in X.
        rows = []
        for axis, pitch in ((u, self.pitch_u_mm), (v, self.pitch_v_mm)):
            a = (s - o) @ axis
            # col * w = [a * (S - X).n + sid * (X - S).axis] / pitch
            lin = (-a * n + sid * axis) / pitch
            const = (a * (s @ n) - sid * (s @ axis)) / pitch
            rows.append(np.append(lin, const))
        rows.append(np.append(-n, s @ n))
        return np.vstack(rows)

    def project(self, points_mm: ArrayLike) -> FloatArray:
        """Project (N, 3) LPS points to (N, 2) pixel coordinates (col, row)."""
        pts = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        if pts.shape[-1] != 3:
            raise GeometryError("points must have shape (N, 3)")
        h = np.hstack([pts, np.ones((pts.shape[0], 1))]) @ self.matrix().T
        if np.any(h[:, 2] <= 0):
            raise GeometryError("a point lies behind the source")
        return h[:, :2] / h[:, 2:3]

    def pixel_to_mm(self, cols: ArrayLike, rows: ArrayLike) -> FloatArray:
        """Detector-plane positions (..., 3) in LPS mm of pixel coordinates."""
        c = np.asarray(cols, dtype=np.float64)[..., None]
        r = np.asarray(rows, dtype=np.float64)[..., None]
        return self.origin + c * self.pitch_u_mm * self.u + r * self.pitch_v_mm * self.v

    def back_project(self, cols: ArrayLike, rows: ArrayLike, depth_point_mm: ArrayLike) -> FloatArray:
        """3D point on the ray through pixel (col, row) at the depth (plane parallel to the detector)
        of ``depth_point_mm``. Inverse of :meth:`project` for points in that plane."""
        d = self.pixel_to_mm(cols, rows)
        p = np.asarray(depth_point_mm, dtype=np.float64).reshape(3)
        n = self.normal
        t = ((self.source - p) @ n) / self.source_to_detector_mm()
        return np.asarray(self.source + t * (d - self.source), dtype=np.float64)

    # --- derived geometries --------------------------------------------------------------------
    def binned(self, factor: int) -> ProjectionGeometry:
        """The same detector read out with ``factor`` x ``factor`` pixels averaged into one."""
        if factor < 1:
            raise GeometryError("binning factor must be >= 1")
        shift = (factor - 1) / 2.0
        new_origin = self.pixel_to_mm(shift, shift)
        return ProjectionGeometry(
            source_mm=self.source_mm,
            detector_origin_mm=tuple(float(x) for x in new_origin),  # type: ignore[arg-type]
            u_dir=self.u_dir,
            v_dir=self.v_dir,
            pitch_u_mm=self.pitch_u_mm * factor,
            pitch_v_mm=self.pitch_v_mm * factor,
            columns=self.columns // factor,
            rows=self.rows // factor,
            name=self.name,
        )

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_mm": list(self.source_mm),
            "detector_origin_mm": list(self.detector_origin_mm),
            "u_dir": list(self.u_dir),
            "v_dir": list(self.v_dir),
            "pitch_u_mm": self.pitch_u_mm,
            "pitch_v_mm": self.pitch_v_mm,
            "columns": self.columns,
            "rows": self.rows,
            "sid_mm": self.source_to_detector_mm(),
            "matrix_3x4": self.matrix().tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectionGeometry:
        try:
            return cls(
                source_mm=tuple(float(x) for x in d["source_mm"]),  # type: ignore[arg-type]
                detector_origin_mm=tuple(float(x) for x in d["detector_origin_mm"]),  # type: ignore[arg-type]
                u_dir=tuple(float(x) for x in d["u_dir"]),  # type: ignore[arg-type]
                v_dir=tuple(float(x) for x in d["v_dir"]),  # type: ignore[arg-type]
                pitch_u_mm=float(d["pitch_u_mm"]),
                pitch_v_mm=float(d["pitch_v_mm"]),
                columns=int(d["columns"]),
                rows=int(d["rows"]),
                name=str(d.get("name", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(f"incomplete projection geometry: {exc}") from exc


def centred_geometry(
    *,
    name: str,
    isocenter_mm: ArrayLike,
    beam_dir: ArrayLike,
    u_dir: ArrayLike,
    sid_mm: float,
    sod_mm: float,
    width_mm: float,
    height_mm: float,
    pitch_mm: float,
) -> ProjectionGeometry:
    """A detector perpendicular to ``beam_dir`` (source -> detector), centred on the central ray
    through ``isocenter_mm``, with the source ``sod_mm`` before the isocentre and the detector
    ``sid_mm`` from the source."""
    iso = np.asarray(isocenter_mm, dtype=np.float64).reshape(3)
    b = _unit(beam_dir, "beam_dir")
    u = _unit(u_dir, "u_dir")
    u = _unit(u - (u @ b) * b, "u_dir")
    v = np.cross(b, u)
    if sid_mm <= sod_mm:
        raise GeometryError("source-image distance must exceed source-object distance")
    src = iso - sod_mm * b
    centre = src + sid_mm * b
    cols = max(1, round(width_mm / pitch_mm))
    rows = max(1, round(height_mm / pitch_mm))
    origin = centre - (cols - 1) / 2.0 * pitch_mm * u - (rows - 1) / 2.0 * pitch_mm * v
    return ProjectionGeometry(
        source_mm=tuple(float(x) for x in src),  # type: ignore[arg-type]
        detector_origin_mm=tuple(float(x) for x in origin),  # type: ignore[arg-type]
        u_dir=tuple(float(x) for x in u),  # type: ignore[arg-type]
        v_dir=tuple(float(x) for x in v),  # type: ignore[arg-type]
        pitch_u_mm=float(pitch_mm),
        pitch_v_mm=float(pitch_mm),
        columns=int(cols),
        rows=int(rows),
        name=name,
    )
