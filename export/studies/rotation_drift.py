"""Rotation drift: how limb rotation and knee flexion move 2D long-leg angles, and that 3D angles stay put.

    .venv/bin/python -m export.studies.rotation_drift --out docs/rotation_drift

No rendering: every number comes from the simulator's geometry and truth. For each limb of a fixed set
(see :func:`select_limbs`; the seeds are written to the JSON), each flexion in ``FLEXIONS`` and each
rotation in ``ROTATIONS`` the limb is rebuilt with ``params.replace(rotation=r, flexion=f)``, a long-leg
AP geometry is made from one fixed :data:`VIEW` record, and

* the 2D angles are measured (``measure_2d``) from the points a reader would click on that film
  (``truth.reader_landmarks``: condyle and plateau contour extremes, so rotated/flexed bones move them);
* the 3D angles are measured (``measure_3d``) from the 3D landmarks.

Reported per (rotation, flexion): the 2D change relative to the same limb at rotation 0 and the same
flexion, and the 3D error (mLDFA and MPTA against the construction values, which are exact; mHKA against
the 3D value at rotation 0 and the same flexion). Literature (alignment.md, "Why 3D matters"): about
1 deg of HKA per 20 deg of rotation in extension, about 4 deg per 20 deg at 15 deg of flexion, up to
4.8 deg at +-20 deg, external rotation reading more varus (more negative mHKA).

Independently of any angle measurement, the study also checks the sense of the ``rotation`` parameter
in patient space: external rotation must turn the posterior condylar axis's lateral end posteriorly
(anterior toward lateral), and must carry a flexed knee laterally off the hip-ankle line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from appliance.analytics import landmarks as lm
from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from export.simulator import truth
from export.simulator.assembly import build_limb
from export.simulator.case import CaseOptions, sample_case
from export.simulator.params import PhantomParams
from export.simulator.views import ViewRecord, view_geometry
from export.simulator.voxelize import limb_bounds

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

ROTATIONS: tuple[float, ...] = tuple(float(r) for r in np.arange(-20.0, 20.0 + 1e-9, 2.5))
FLEXIONS: tuple[float, ...] = (0.0, 7.5, 15.0)
# One long-leg AP set-up for every pose: SID 2.75 m, detector 50 mm behind the leg, central ray on the
# midline between hip and ankle (no centring error), 0.35 mm pixels on a 43 x 130 cm stitched detector.
VIEW = ViewRecord("longleg", 2750.0, 50.0, (0.0, 0.0), 0.35, 430.0, 1300.0)
EVAL_SEED_START = 500_000  # evaluation range
PER_CELL = 4  # limbs per (side, alignment class): 2 sides x 3 classes x 4 = 24 limbs
CLASSES = ("varus", "neutral", "valgus")
ANGLES = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")

# Literature (alignment.md "Why 3D matters", reviews of 22 studies): HKA change per 20 deg of rotation,
# external rotation reading more varus. Keyed by flexion (deg).
LITERATURE_DEG_PER_20: dict[float, float] = {0.0: 1.0, 15.0: 4.0}
LITERATURE_MAX_AT_20 = 4.8


def alignment_class(mhka: float) -> str:
    """varus < -2, neutral -2..+2, valgus > +2 (the CPAK aHKA thresholds applied to mHKA)."""
    return "varus" if mhka < -2.0 else ("valgus" if mhka > 2.0 else "neutral")


def limb_for_seed(seed: int) -> PhantomParams:
    """The limb a simulated case with this seed would have (same draw as ``generate_case``)."""
    return sample_case(seed, CaseOptions(views=("longleg",), write_ct=False, contralateral=False)).params


def select_limbs(per_cell: int = PER_CELL, start: int = EVAL_SEED_START) -> list[tuple[int, PhantomParams]]:
    """The first ``per_cell`` seeds from ``start`` up for every (side, varus/neutral/valgus) cell."""
    want = {(side, c): per_cell for side in ("right", "left") for c in CLASSES}
    chosen: list[tuple[int, PhantomParams]] = []
    seed = start
    while any(want.values()):
        p = limb_for_seed(seed)
        cell = (p.side, alignment_class(p.mHKA))
        if want[cell] > 0:
            want[cell] -= 1
            chosen.append((seed, p))
        seed += 1
        if seed - start > 100_000:  # pragma: no cover - the sampler covers every cell
            raise RuntimeError(f"could not fill the limb cells {want}")
    return chosen


@dataclass(frozen=True)
class PoseResult:
    """One limb in one pose: 2D and 3D angles (ANGLES order) and the sign checks."""

    angles_2d: tuple[float, ...]
    angles_3d: tuple[float, ...]
    pca_external_deg: float  # direction of the posterior condylar axis in the axial plane (see below)
    knee_lateral_mm: float  # knee centre's distance lateral of the hip-ankle line, in 3D


def _pca_external_deg(L: dict[str, F64], side: str) -> float:
    """Angle of the posterior condylar axis (medial -> lateral) in patient space, lateral 0, posterior 90.

    External rotation of the limb turns anterior toward lateral, i.e. the lateral end of this axis
    toward posterior, so the angle grows by the rotation.
    """
    v = L[lm.LPC] - L[lm.MPC]
    lateral = -1.0 if side == "right" else 1.0  # LPS: the patient's left is +x
    return math.degrees(math.atan2(float(v[1]), float(lateral * v[0])))


def _knee_lateral_mm(L: dict[str, F64], side: str) -> float:
    top, bottom = L[lm.FHC], L[lm.AC]
    knee = 0.5 * (L[lm.FKC] + L[lm.TKC])
    u = (bottom - top) / np.linalg.norm(bottom - top)
    off = (knee - top) - float((knee - top) @ u) * u
    lateral = np.array([-1.0 if side == "right" else 1.0, 0.0, 0.0])
    return float(off @ lateral)


def measure_pose(
    params: PhantomParams, rotation: float, flexion: float, view: ViewRecord = VIEW
) -> PoseResult:
    """Build the limb in this pose and measure it on a long-leg film (2D) and in 3D."""
    p = params.replace(rotation=float(rotation), flexion=float(flexion))
    limb = build_limb(p)
    L = truth.landmarks_3d(limb)
    geom = view_geometry(limb, view, limb_bounds(limb))
    reader = truth.reader_landmarks(limb, geom)
    mag = geom.magnification_at(0.5 * (L[lm.FKC] + L[lm.TKC]))
    a2 = measure_2d(
        {k: v.tolist() for k, v in reader.items()},
        pixel_spacing_mm=geom.pitch_u_mm,
        magnification=mag,
        side=p.side,
        strict=True,
    )
    a3 = measure_3d({k: v.tolist() for k, v in L.items()}, side=p.side, strict=True)
    d2, d3 = a2.to_dict(), a3.to_dict()
    return PoseResult(
        angles_2d=tuple(float(d2[k]) for k in ANGLES),  # type: ignore[arg-type]
        angles_3d=tuple(float(d3[k]) for k in ANGLES),  # type: ignore[arg-type]
        pca_external_deg=_pca_external_deg(L, p.side),
        knee_lateral_mm=_knee_lateral_mm(L, p.side),
    )


@dataclass(frozen=True)
class StudyData:
    """Raw results; arrays are [limb, flexion, rotation] (angles add a last axis in ANGLES order)."""

    seeds: tuple[int, ...]
    limbs: tuple[PhantomParams, ...]
    rotations: tuple[float, ...]
    flexions: tuple[float, ...]
    a2: F64
    a3: F64
    pca_external: F64
    knee_lateral: F64

    def index(self, rotation: float) -> int:
        return self.rotations.index(rotation)

    def construction(self) -> F64:
        """[limb, angle] construction truth in ANGLES order."""
        return np.array([[p.mHKA, p.mLDFA, p.MPTA, p.JLCA, p.aHKA, p.JLO] for p in self.limbs])

    def drift_2d(self) -> F64:
        """2D angles minus the same limb's 2D angles at rotation 0 and the same flexion."""
        i0 = self.index(0.0)
        return self.a2 - self.a2[:, :, i0 : i0 + 1, :]

    def error_3d(self) -> dict[str, F64]:
        """3D errors [limb, flexion, rotation]: mLDFA and MPTA vs construction, mHKA vs rotation 0."""
        cons = self.construction()
        i0 = self.index(0.0)
        return {
            "mLDFA": self.a3[..., 1] - cons[:, None, None, 1],
            "MPTA": self.a3[..., 2] - cons[:, None, None, 2],
            "mHKA": self.a3[..., 0] - self.a3[:, :, i0 : i0 + 1, 0],
            # Not an error of the method: a knee flexed about its (oblique) condylar axis changes its
            # coronal mHKA slightly; kept to show the size of that effect.
            "mHKA_vs_construction": self.a3[..., 0] - cons[:, None, None, 0],
        }


def run_study(
    limbs: Sequence[tuple[int, PhantomParams]],
    rotations: Sequence[float] = ROTATIONS,
    flexions: Sequence[float] = FLEXIONS,
    view: ViewRecord = VIEW,
) -> StudyData:
    if 0.0 not in rotations:
        raise ValueError("rotations must include 0 (the reference pose)")
    n, nf, nr = len(limbs), len(flexions), len(rotations)
    a2 = np.zeros((n, nf, nr, len(ANGLES)))
    a3 = np.zeros_like(a2)
    pca = np.zeros((n, nf, nr))
    lat = np.zeros_like(pca)
    for i, (seed, p) in enumerate(limbs):
        for j, f in enumerate(flexions):
            for k, r in enumerate(rotations):
                res = measure_pose(p, r, f, view)
                a2[i, j, k] = res.angles_2d
                a3[i, j, k] = res.angles_3d
                pca[i, j, k] = res.pca_external_deg
                lat[i, j, k] = res.knee_lateral_mm
        log.debug("limb %d (seed %d) done", i, seed)
    return StudyData(
        seeds=tuple(s for s, _ in limbs),
        limbs=tuple(p for _, p in limbs),
        rotations=tuple(float(r) for r in rotations),
        flexions=tuple(float(f) for f in flexions),
        a2=a2,
        a3=a3,
        pca_external=pca,
        knee_lateral=lat,
    )


def _stats(x: F64) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(x)), 3),
        "sd": round(float(np.std(x, ddof=1)) if x.size > 1 else 0.0, 3),
        "min": round(float(np.min(x)), 3),
        "max": round(float(np.max(x)), 3),
    }


def slope_per_20(rotations: Sequence[float], values: F64) -> float:
    """Least-squares slope of ``values`` (mean over limbs per rotation) against rotation, deg per 20 deg."""
    r = np.asarray(rotations, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    return float(np.polyfit(r, y, 1)[0] * 20.0)


def small_angle_drift(rotation: float, flexion: float) -> float:
    """Geometric estimate of the 2D mHKA change: -sin(flexion) sin(rotation), in degrees.

    A knee flexed by f stands about h = L1 L2 sin f / (L1 + L2) in front of the hip-ankle line; rotating
    the limb by r about that line moves it h sin r sideways (laterally for external rotation), which
    bends the projected mechanical axes by h sin r (1/L1 + 1/L2) = sin f sin r radians (varus).
    """
    return -math.degrees(math.sin(math.radians(flexion)) * math.sin(math.radians(rotation)))


def summarise(d: StudyData) -> dict[str, Any]:
    drift = d.drift_2d()
    err = d.error_3d()
    cons = d.construction()
    i0 = d.index(0.0)
    per_pose: list[dict[str, Any]] = []
    for j, f in enumerate(d.flexions):
        for k, r in enumerate(d.rotations):
            row: dict[str, Any] = {"flexion": f, "rotation": r}
            for a, name in enumerate(ANGLES):
                row[f"d2_{name}"] = _stats(drift[:, j, k, a])
            for name, e in err.items():
                row[f"e3_{name}"] = _stats(e[:, j, k])
            per_pose.append(row)
    per_flexion: dict[str, Any] = {}
    for j, f in enumerate(d.flexions):
        mean_curve = drift[:, j, :, 0].mean(axis=0)
        per_flexion[f"{f:g}"] = {
            "d2_mHKA_slope_deg_per_20": round(slope_per_20(d.rotations, mean_curve), 3),
            "d2_mHKA_at_plus20": _stats(drift[:, j, d.index(20.0), 0]) if 20.0 in d.rotations else None,
            "d2_mHKA_at_minus20": _stats(drift[:, j, d.index(-20.0), 0]) if -20.0 in d.rotations else None,
            "d2_mLDFA_slope_deg_per_20": round(slope_per_20(d.rotations, drift[:, j, :, 1].mean(axis=0)), 3),
            "d2_MPTA_slope_deg_per_20": round(slope_per_20(d.rotations, drift[:, j, :, 2].mean(axis=0)), 3),
            "d2_aHKA_slope_deg_per_20": round(slope_per_20(d.rotations, drift[:, j, :, 4].mean(axis=0)), 3),
            "d2_JLO_slope_deg_per_20": round(slope_per_20(d.rotations, drift[:, j, :, 5].mean(axis=0)), 3),
            "small_angle_estimate_at_plus20": round(small_angle_drift(20.0, f), 3),
            "literature_deg_per_20": LITERATURE_DEG_PER_20.get(f),
            "d2_at_rotation0_minus_construction": {
                name: _stats(d.a2[:, j, i0, a] - cons[:, a]) for a, name in enumerate(ANGLES)
            },
        }
    max_abs_3d = {name: round(float(np.max(np.abs(e))), 4) for name, e in err.items()}
    # Sense of `rotation` in patient space, without any angle measurement.
    pca_turn = d.pca_external - d.pca_external[:, :, i0 : i0 + 1]
    rot = np.asarray(d.rotations)
    lat_change = d.knee_lateral - d.knee_lateral[:, :, i0 : i0 + 1]
    sign_check = {
        "pca_turn_minus_rotation_max_abs_deg": round(float(np.max(np.abs(pca_turn - rot))), 3),
        "knee_moves_lateral_with_external_rotation_when_flexed": bool(
            np.all(lat_change[:, 1:, rot > 0] > 0) and np.all(lat_change[:, 1:, rot < 0] < 0)
        ),
        "knee_lateral_change_at_plus20_flexion15_mm": _stats(lat_change[:, -1, d.index(20.0)])
        if 20.0 in d.rotations
        else None,
    }
    return {
        "per_pose": per_pose,
        "per_flexion": per_flexion,
        "max_abs_3d_error_deg": max_abs_3d,
        "sign_check": sign_check,
    }


def _limb_record(seed: int, p: PhantomParams) -> dict[str, Any]:
    return {
        "seed": seed,
        "side": p.side,
        "class": alignment_class(p.mHKA),
        "mHKA": round(p.mHKA, 3),
        "mLDFA": round(p.mLDFA, 3),
        "MPTA": round(p.MPTA, 3),
        "JLCA": round(p.JLCA, 3),
        "tibial_slope": round(p.tibial_slope, 3),
        "condylar_twist": round(p.condylar_twist, 3),
        "femur_mech_length": round(p.femur_mech_length, 1),
        "tibia_mech_length": round(p.tibia_mech_length, 1),
    }


def to_json(d: StudyData, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "xr3d.study.rotation_drift/1",
        "command": "python -m export.studies.rotation_drift --out docs/rotation_drift",
        "seeds": list(d.seeds),
        "seed_rule": (
            f"limb = sample_case(seed).params (as generate_case draws it); seeds from {EVAL_SEED_START} up, "
            f"the first {PER_CELL} per (side, class) with class varus mHKA<-2, neutral, valgus >+2"
        ),
        "view": VIEW.to_dict(),
        "rotations_deg": list(d.rotations),
        "flexions_deg": list(d.flexions),
        "rotation_sense": "external positive (whole-limb rotation about the hip-ankle axis)",
        "mhka_sign": "negative = varus",
        "literature": {
            "source": "alignment.md 'Why 3D matters' (reviews of 22 studies)",
            "deg_per_20_by_flexion": {f"{k:g}": v for k, v in LITERATURE_DEG_PER_20.items()},
            "max_at_20_deg": LITERATURE_MAX_AT_20,
            "sign": "external rotation reads more varus (more negative mHKA)",
        },
        "limbs": [_limb_record(s, p) for s, p in zip(d.seeds, d.limbs, strict=True)],
        **summary,
        "raw": {
            "axes": "[limb][flexion][rotation]",
            **{f"angles_2d_{name}": np.round(d.a2[..., a], 3).tolist() for a, name in enumerate(ANGLES)},
            **{f"angles_3d_{name}": np.round(d.a3[..., a], 3).tolist() for a, name in enumerate(ANGLES)},
        },
    }


_FLEX_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")


def plot(d: StudyData, out_png: Path) -> None:
    """Four panels: 2D mHKA change with literature, 3D errors, 2D mLDFA and MPTA changes."""
    drift = d.drift_2d()
    err = d.error_3d()
    r = np.asarray(d.rotations)
    fig = Figure(figsize=(11.0, 8.6), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fine = np.linspace(r.min(), r.max(), 161)

    def bands(ax: Any, a: int, ylabel: str, title: str) -> None:
        for j, f in enumerate(d.flexions):
            c = _FLEX_COLOURS[j % len(_FLEX_COLOURS)]
            y = drift[:, j, :, a]
            m = y.mean(axis=0)
            s = y.std(axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(m)
            ax.fill_between(r, m - s, m + s, color=c, alpha=0.22, lw=0)
            ax.plot(r, y.min(axis=0), color=c, lw=0.6, ls=":")
            ax.plot(r, y.max(axis=0), color=c, lw=0.6, ls=":")
            label = f"2D, flexion {f:g}°: mean ± SD (dots: range)"
            ax.plot(r, m, color=c, lw=2.0, marker="o", ms=3, label=label)
        ax.axhline(0.0, color="#555555", lw=0.7)
        ax.axvline(0.0, color="#555555", lw=0.7)
        ax.set_xlabel("limb rotation (°), external positive")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10.5)
        ax.grid(True, lw=0.4, alpha=0.5)

    ax = axes[0, 0]
    bands(ax, 0, "2D mHKA − 2D mHKA at rotation 0 (°)", "(a) 2D mHKA drift  (negative = more varus)")
    for f, per20 in LITERATURE_DEG_PER_20.items():
        j = d.flexions.index(f) if f in d.flexions else 0
        c = _FLEX_COLOURS[j % len(_FLEX_COLOURS)]
        ax.plot(
            fine,
            -per20 * fine / 20.0,
            color=c,
            lw=1.4,
            ls="--",
            label=f"literature, flexion {f:g}°: ~{per20:g}°/20°",
        )
    for j, f in enumerate(d.flexions):
        if f > 0:
            c = _FLEX_COLOURS[j % len(_FLEX_COLOURS)]
            ax.plot(fine, [small_angle_drift(x, f) for x in fine], color=c, lw=0.9, ls="-.", alpha=0.8)
    ax.plot([], [], color="#444444", lw=0.9, ls="-.", label="geometry: −sin(flexion)·sin(rotation)")
    for x in (-20.0, 20.0):
        ax.plot([x], [-math.copysign(LITERATURE_MAX_AT_20, x)], marker="*", ms=10, color="#444444", ls="none")
    ax.plot(
        [],
        [],
        marker="*",
        ms=10,
        color="#444444",
        ls="none",
        label=f"literature: up to {LITERATURE_MAX_AT_20}° at ±20°",
    )
    ax.text(-19.5, -5.6, "external rotation (right)\nreads more varus (down)", fontsize=8.5, color="#333333")
    ax.legend(fontsize=7.2, loc="upper right", framealpha=0.9)

    ax = axes[0, 1]
    styles = {
        "mLDFA": ("#1f78b4", "3D mLDFA − construction"),
        "MPTA": ("#33a02c", "3D MPTA − construction"),
        "mHKA": ("#e31a1c", "3D mHKA − 3D mHKA at rotation 0"),
    }
    for name, (c, label) in styles.items():
        e = err[name]
        worst = np.abs(e).max(axis=(0, 1))
        ax.plot(r, worst, color=c, lw=1.8, marker="o", ms=3, label=f"{label}: max |error|")
        ax.plot(r, e.mean(axis=(0, 1)), color=c, lw=1.0, ls="--", label=f"{label}: mean")
    ax.axhline(0.3, color="#999999", lw=1.0, ls=":", label="test tolerance 0.3°")
    ax.axhline(0.0, color="#555555", lw=0.7)
    ax.set_ylim(-0.35, 0.35)
    ax.set_xlabel("limb rotation (°), external positive")
    ax.set_ylabel("3D error (°), all limbs and flexions")
    ax.set_title("(b) 3D angles do not drift (each bone in its own coronal plane)", fontsize=10.5)
    ax.grid(True, lw=0.4, alpha=0.5)
    ax.legend(fontsize=7.2, loc="lower left", framealpha=0.9)

    bands(axes[1, 0], 1, "2D mLDFA − 2D mLDFA at rotation 0 (°)", "(c) 2D mLDFA drift")
    bands(
        axes[1, 1],
        2,
        "2D MPTA − 2D MPTA at rotation 0 (°)",
        "(d) 2D MPTA drift (tibial slope tilts the plateau line)",
    )
    for ax in (axes[1, 0], axes[1, 1]):
        ax.legend(fontsize=7.2, loc="best", framealpha=0.9)
    fig.suptitle(
        f"Rotation drift on simulated long-leg AP films: {len(d.limbs)} limbs, "
        f"seeds {min(d.seeds)}–{max(d.seeds)}",
        fontsize=12,
    )
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # No Software/date text chunks: the same numbers give the same bytes.
    fig.savefig(out_png, format="png", dpi=100, metadata={"Software": None})


def write_outputs(d: StudyData, out_stem: Path) -> tuple[Path, Path]:
    summary = summarise(d)
    js = out_stem.with_suffix(".json")
    png = out_stem.with_suffix(".png")
    js.parent.mkdir(parents=True, exist_ok=True)
    doc = to_json(d, summary)
    raw = doc.pop("raw")
    # Readable summary, compact raw arrays (one line each) to keep the file small.
    text = json.dumps(doc, indent=1)
    raw_text = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in raw.items())
    js.write_text(text[:-2] + ',\n "raw": {\n' + raw_text + "\n }\n}\n", encoding="utf-8")
    plot(d, png)
    return js, png


def table_markdown(summary: dict[str, Any], flexions: Sequence[float], rotations: Sequence[float]) -> str:
    """Markdown table of the 2D mHKA drift (mean ± SD) and the largest 3D error per pose."""
    rows = {(p["flexion"], p["rotation"]): p for p in summary["per_pose"]}
    head = "| rotation | " + " | ".join(f"2D ΔmHKA, flex {f:g}°" for f in flexions)
    head += " | max abs 3D error (mLDFA, MPTA, mHKA) |"
    lines = [head, "|" + "---|" * (len(flexions) + 2)]
    for r in rotations:
        cells = [f"{r:+g}°"]
        worst = 0.0
        for f in flexions:
            row = rows[(f, r)]
            s = row["d2_mHKA"]
            cells.append(f"{s['mean']:+.2f} ± {s['sd']:.2f} [{s['min']:+.2f}, {s['max']:+.2f}]")
            for name in ("mLDFA", "MPTA", "mHKA"):
                e = row[f"e3_{name}"]
                worst = max(worst, abs(e["min"]), abs(e["max"]))
        cells.append(f"{worst:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.studies.rotation_drift", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/rotation_drift"), help="output stem (.json, .png)")
    ap.add_argument("--per-cell", type=int, default=PER_CELL, help="limbs per (side, class) cell")
    ap.add_argument("--table", type=Path, default=None, help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    limbs = select_limbs(args.per_cell)
    log.info("limbs: seeds %s", [s for s, _ in limbs])
    data = run_study(limbs)
    js, png = write_outputs(data, args.out)
    summary = json.loads(js.read_text(encoding="utf-8"))
    for f, v in summary["per_flexion"].items():
        log.info(
            "flexion %s: 2D mHKA slope %+.2f deg per 20 deg (literature %s), at +20: %+.2f, at -20: %+.2f",
            f,
            v["d2_mHKA_slope_deg_per_20"],
            v["literature_deg_per_20"],
            v["d2_mHKA_at_plus20"]["mean"],
            v["d2_mHKA_at_minus20"]["mean"],
        )
    log.info("max |3D error|: %s", summary["max_abs_3d_error_deg"])
    log.info("sign check: %s", summary["sign_check"])
    if args.table:
        table = table_markdown(summary, data.flexions, data.rotations)
        args.table.write_text(table + "\n", encoding="utf-8")
    log.info("wrote %s and %s in %.1f s", js, png, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
