"""Reading landmark files for ``xr3d measure`` and writing the measurement as JSON or a table.

File format and output schema: docs/measure-schema.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from appliance.analytics.cpak import Cpak
from appliance.analytics.points import normalise_side
from appliance.analytics.results import KEYS_2D, KEYS_3D, UNITS, Angles2D, Angles3D
from appliance.errors import InputError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
KNOWN_KEYS: Final = frozenset(
    {"side", "pixel_spacing_mm", "magnification", "landmarks_2d", "landmarks_3d", "posterior_condyle_points"}
)
# Values that are distances on the film: meaningless without a pixel spacing.
_MM_KEYS_2D: Final = ("MAD_mm", "femoral_mech_axis_mm", "tibial_mech_axis_mm")


@dataclass(frozen=True)
class MeasureInput:
    """The content of a landmark file, validated for shape (values are checked by the measurements)."""

    side: str | None = None
    pixel_spacing_mm: float | tuple[float, float] | None = None
    magnification: float = 1.0
    landmarks_2d: dict[str, Any] | None = None
    landmarks_3d: dict[str, Any] | None = None
    posterior_condyle_points: dict[str, Any] | None = None


@dataclass(frozen=True)
class Measurement:
    """2D and/or 3D results of one landmark file."""

    angles_2d: Angles2D | None
    angles_3d: Angles3D | None
    side: str | None = None

    @property
    def cpak(self) -> tuple[Cpak | None, str | None]:
        """The headline CPAK and where it came from: the film when measured, else the 3D landmarks."""
        if self.angles_2d is not None and self.angles_2d.cpak is not None:
            return self.angles_2d.cpak, "2d"
        if self.angles_3d is not None and self.angles_3d.cpak is not None:
            return self.angles_3d.cpak, "3d"
        return None, None


def _number(value: Any, what: str, reason: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}", reason=reason)
    return float(value)


def _landmark_dict(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"{key} must be an object of name -> coordinates", reason="bad_schema")
    for name, coords in value.items():
        if coords is not None and (
            not isinstance(coords, list)
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in coords)
        ):
            raise InputError(f"{key}.{name} must be a list of numbers or null", reason="bad_coordinates")
    return value


def parse_measure_input(data: Any) -> MeasureInput:
    """Validate the decoded JSON of a landmark file."""
    if not isinstance(data, dict):
        raise InputError("the landmark file must hold a JSON object", reason="bad_schema")
    extra = sorted(set(data) - KNOWN_KEYS)
    if extra:
        log.warning("ignoring unknown keys in landmark file: %s", ", ".join(extra))
    spacing_raw = data.get("pixel_spacing_mm")
    spacing: float | tuple[float, float] | None
    if spacing_raw is None:
        spacing = None
    elif isinstance(spacing_raw, list):
        if len(spacing_raw) != 2:
            raise InputError("pixel_spacing_mm must be a number or [row, col]", reason="bad_spacing")
        spacing = (
            _number(spacing_raw[0], "pixel_spacing_mm[0]", "bad_spacing"),
            _number(spacing_raw[1], "pixel_spacing_mm[1]", "bad_spacing"),
        )
    else:
        spacing = _number(spacing_raw, "pixel_spacing_mm", "bad_spacing")
    mag_raw = data.get("magnification")
    mag = 1.0 if mag_raw is None else _number(mag_raw, "magnification", "bad_magnification")
    side_raw = data.get("side")
    if side_raw is not None and not isinstance(side_raw, str):
        raise InputError(f"side must be a string, got {side_raw!r}", reason="bad_side")
    lm2 = _landmark_dict(data.get("landmarks_2d"), "landmarks_2d")
    lm3 = _landmark_dict(data.get("landmarks_3d"), "landmarks_3d")
    if not lm2 and not lm3:
        raise InputError("the file has neither landmarks_2d nor landmarks_3d", reason="no_landmarks")
    cond = data.get("posterior_condyle_points")
    if cond is not None and not isinstance(cond, dict):
        raise InputError(
            "posterior_condyle_points must be {medial: [...], lateral: [...]}", reason="bad_schema"
        )
    return MeasureInput(
        side=normalise_side(side_raw),
        pixel_spacing_mm=spacing,
        magnification=mag,
        landmarks_2d=lm2 or None,
        landmarks_3d=lm3 or None,
        posterior_condyle_points=cond,
    )


def load_measure_input(path: str | Path) -> MeasureInput:
    """Read and validate a landmark file; every problem is an InputError with a reason code."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{p}: no such file", reason="file_not_found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read ({exc})", reason="unreadable_file") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})", reason="bad_json") from exc
    return parse_measure_input(data)


def measure(inp: MeasureInput, *, strict: bool = False) -> Measurement:
    """Run the 2D and/or 3D measurements the input has landmarks for."""
    a2 = a3 = None
    if inp.landmarks_2d:
        a2 = measure_2d(
            inp.landmarks_2d,
            pixel_spacing_mm=inp.pixel_spacing_mm if inp.pixel_spacing_mm is not None else 1.0,
            magnification=inp.magnification,
            side=inp.side,
            strict=strict,
        )
        if inp.pixel_spacing_mm is None:
            # Angles survive a lost spacing (PACS exports often drop it, films.md); distances do not.
            a2 = dataclasses.replace(
                a2,
                mad_mm=None,
                femoral_mech_axis_mm=None,
                tibial_mech_axis_mm=None,
                notes=(*a2.notes, "no pixel_spacing_mm: distances in mm are not reported"),
            )
    if inp.landmarks_3d:
        a3 = measure_3d(
            inp.landmarks_3d,
            side=inp.side,
            posterior_condyle_points=inp.posterior_condyle_points,
            strict=strict,
        )
    return Measurement(angles_2d=a2, angles_3d=a3, side=inp.side)


def measurement_to_json(m: Measurement) -> dict[str, Any]:
    """The ``xr3d measure --json`` document (docs/measure-schema.md)."""
    cpak, source = m.cpak
    a2, a3 = m.angles_2d, m.angles_3d
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "side": m.side,
        "angles_2d": a2.to_dict() if a2 else None,
        "angles_3d": a3.to_dict() if a3 else None,
        "cpak": cpak.to_dict() if cpak else None,
        "cpak_source": source,
        "cpak_2d": a2.cpak.to_dict() if a2 and a2.cpak else None,
        "cpak_3d": a3.cpak.to_dict() if a3 and a3.cpak else None,
        "flexion_axis": a3.flexion_axis.to_dict() if a3 and a3.flexion_axis else None,
        "ml_reference_3d": a3.ml_reference if a3 else None,
        "apparent_side_2d": a2.apparent_side if a2 else None,
        "side_from_landmarks_3d": a3.side_from_landmarks if a3 else None,
        "missing": {"2d": dict(a2.missing) if a2 else {}, "3d": dict(a3.missing) if a3 else {}},
        "notes": [
            *(f"2d: {n}" for n in (a2.notes if a2 else ())),
            *(f"3d: {n}" for n in (a3.notes if a3 else ())),
        ],
    }
    return out


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key.endswith("_mm") else f"{value:.1f}"


def _cpak_text(c: Cpak | None) -> str:
    if c is None:
        return "-"
    return f"{c.label} ({c.ahka_category}, {c.jlo_category.replace('_', ' ')})"


def format_table(m: Measurement, title: str = "") -> str:
    """A plain-text table for people: one row per value, a column per measurement."""
    cols: list[tuple[str, Mapping[str, float | None]]] = []
    if m.angles_2d is not None:
        cols.append(("2D film", m.angles_2d.to_dict()))
    if m.angles_3d is not None:
        cols.append(("3D", m.angles_3d.to_dict()))
    keys = list(KEYS_3D if m.angles_3d is not None else KEYS_2D)
    lines = []
    if title:
        lines.append(title + (f"  (side {m.side})" if m.side else ""))
    width = max(len(k) for k in keys) + 8
    lines.append(f"{'measure':<{width}}" + "".join(f"{name:>12}" for name, _ in cols))
    for key in keys:
        unit = UNITS.get(key, "deg")
        label = key if key.endswith(("_mm", "_deg")) else f"{key} ({unit})"
        lines.append(f"{label:<{width}}" + "".join(f"{_fmt(d.get(key), key):>12}" for _, d in cols))
    if m.angles_2d is not None:
        lines.append(f"{'CPAK (2D)':<{width}}{_cpak_text(m.angles_2d.cpak)}")
    if m.angles_3d is not None:
        lines.append(f"{'CPAK (3D)':<{width}}{_cpak_text(m.angles_3d.cpak)}")
        fa = m.angles_3d.flexion_axis
        if fa is not None:
            lines.append(
                f"flexion axis: radius medial {fa.medial_radius_mm:.1f} mm,"
                f" lateral {fa.lateral_radius_mm:.1f} mm, fit rms {fa.rms_mm:.2f} mm"
                + (f", {fa.angle_to_tea_deg:.1f} deg to TEA" if fa.angle_to_tea_deg is not None else "")
            )
    for tag, res in (("2D", m.angles_2d), ("3D", m.angles_3d)):
        if res is None:
            continue
        for key, names in res.missing.items():
            lines.append(f"not measured ({tag}) {key}: needs {', '.join(names)}")
        for note in res.notes:
            lines.append(f"note ({tag}): {note}")
    lines.append("mHKA < 0 = varus; JLCA > 0 = joint lines converge medially; MAD > 0 = line medial to knee")
    return "\n".join(lines) + "\n"
