"""A real CT prepared for rendering: loaded in LPS, clipped, optionally without the table, with the
knee centre and landmarks the films are planned around."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.analytics import landmarks as lm
from appliance.errors import InputError
from appliance.geometry.volume import Volume
from export.simulator.ct_io import load_ct

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]


HU_FLOOR = -1024.0  # CT values below this are padding or reconstruction-circle fill: clipped
BODY_HU = -500.0  # above this a voxel is body (or table); used for the body box and table removal
# Hip to ankle is ~750-900 mm in adults (femur ~450, tibia ~380 mm; Sabharwal & Zhao 2008): without
# FHC/AC landmarks a long-leg film needs at least this much CT along the patient's long axis.
LONGLEG_MIN_EXTENT_MM = 700.0
# With FHC and AC landmarks, the CT must reach this far above the hip centre and below the ankle centre.
LONGLEG_LANDMARK_MARGIN_MM = 20.0
KNEE_BODY_HALF_HEIGHT_MM = 150.0  # slab around the knee whose body surface places the knee detectors
KNEE_CENTRE_TOLERANCE_MM = 5.0


@dataclass(frozen=True, eq=False)
class CTScene:
    """A loaded CT ready to be projected: HU clipped (and the table removed if asked), the body mask
    and where the knee is. ``knee_from`` is ``given``, ``landmarks`` or ``volume_centre``."""

    volume: Volume
    body: NDArray[np.bool_]
    knee_centre_mm: F64
    knee_from: str
    landmarks: dict[str, F64]
    table_removed: bool
    fingerprint: str  # SHA-256 of voxel values and affine: identifies the CT without naming anyone


def load_landmarks(path: Path) -> dict[str, F64]:
    """Landmarks in LPS mm from a JSON file: ``{"FKC": [x, y, z], ...}`` or a document with such a
    mapping under ``landmarks_3d`` (a simulated ``truth.json`` works as is). An optional
    ``"coordinate_system"`` must be ``"LPS"``. FKC and TKC are required."""
    path = Path(path)
    if not path.is_file():
        raise InputError("landmarks file does not exist", reason="landmarks_not_found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"landmarks file is not readable JSON: {exc}", reason="landmarks_unreadable"
        ) from exc
    if not isinstance(doc, dict):
        raise InputError("landmarks JSON must be an object", reason="bad_landmarks")
    system = doc.get("coordinate_system", "LPS")
    if system != "LPS":
        raise InputError(
            f"landmarks must be in DICOM LPS millimetres, file says {system!r}", reason="bad_landmarks"
        )
    raw = doc.get("landmarks_3d", doc)
    if not isinstance(raw, dict):
        raise InputError("landmarks_3d must be an object of name -> [x, y, z]", reason="bad_landmarks")
    out: dict[str, F64] = {}
    for name, value in raw.items():
        if name == "coordinate_system":
            continue
        try:
            p = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"landmark {name!r} is not three numbers", reason="bad_landmarks") from exc
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(f"landmark {name!r} must be three finite numbers", reason="bad_landmarks")
        out[str(name)] = p
    missing = [n for n in (lm.FKC, lm.TKC) if n not in out]
    if missing:
        raise InputError(f"landmarks file lacks {', '.join(missing)}", reason="missing_landmarks")
    return out


def _fingerprint(vol: Volume) -> str:
    h = hashlib.sha256(b"xr3d ct fingerprint v1")
    data = np.ascontiguousarray(vol.data, dtype=np.float32)
    h.update(data.data)  # the buffer itself: no copy of a whole-leg CT
    h.update(np.round(np.asarray(vol.affine, dtype=np.float64), 4).tobytes())
    return h.hexdigest()


def remove_table_voxels(hu: NDArray[np.float32]) -> NDArray[np.float32]:
    """Keep the largest connected component above ``BODY_HU`` (the body); everything else -> air.
    Works in place on ``hu`` (when writeable) and returns it.

    Simple by design: a table that touches the body through blankets or cushions above -500 HU stays,
    and body parts not connected to the largest one (the other leg of a knee-only CT) are removed."""
    mask = hu > BODY_HU
    labels, n = ndimage.label(mask)
    if n == 0:
        return hu
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    drop = labels != int(np.argmax(sizes))
    del labels
    out = hu if hu.flags.writeable else hu.copy()
    np.copyto(out, np.float32(-1000.0), where=drop)  # in place: no second copy of a whole-leg CT
    log.info("table removal kept 1 of %d components above %.0f HU", n, BODY_HU)
    return out


def _inside(vol: Volume, point: F64, tol_mm: float) -> bool:
    idx = vol.mm_to_index(point)[0]
    tol = tol_mm / np.asarray(vol.spacing_mm)
    return bool(np.all(idx >= -0.5 - tol) and np.all(idx <= np.asarray(vol.shape) - 0.5 + tol))


def prepare_ct(
    ct_path: Path,
    *,
    knee_centre_mm: tuple[float, float, float] | None = None,
    landmarks_path: Path | None = None,
    remove_table: bool = False,
) -> CTScene:
    """Load the CT and decide the knee centre: given, else the FKC-TKC midpoint of the landmarks, else
    (with a warning) the centre of the CT's voxel box."""
    vol = load_ct(Path(ct_path))
    landmarks = load_landmarks(landmarks_path) if landmarks_path is not None else {}
    data = np.asarray(vol.data, dtype=np.float32)
    if not data.flags.writeable or not data.flags.c_contiguous:
        data = np.array(data, dtype=np.float32, order="C")
    if not np.all(np.isfinite(data)):
        np.nan_to_num(data, copy=False, nan=HU_FLOOR, posinf=HU_FLOOR, neginf=HU_FLOOR)
    np.maximum(data, np.float32(HU_FLOOR), out=data)  # in place: a whole-leg CT is ~1 GB
    if remove_table:
        data = remove_table_voxels(data)
    vol = Volume(data=np.ascontiguousarray(data), affine=np.asarray(vol.affine, dtype=np.float64))
    if knee_centre_mm is not None:
        knee = np.asarray(knee_centre_mm, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(knee)):
            raise InputError("knee centre must be three finite numbers", reason="bad_argument")
        knee_from = "given"
    elif landmarks:
        knee = 0.5 * (landmarks[lm.FKC] + landmarks[lm.TKC])
        knee_from = "landmarks"
    else:
        lo, hi = vol.bounds_mm()
        knee = 0.5 * (lo + hi)
        knee_from = "volume_centre"
        log.warning(
            "no knee centre or landmarks given: centring the films on the middle of the CT volume; "
            "pass a knee centre or a landmarks file for films centred on the joint"
        )
    if not _inside(vol, knee, KNEE_CENTRE_TOLERANCE_MM):
        raise InputError(
            "knee centre lies outside the CT volume (are the coordinates LPS millimetres?)",
            reason="knee_centre_outside_ct",
        )
    outside = sorted(n for n, p in landmarks.items() if not _inside(vol, p, KNEE_CENTRE_TOLERANCE_MM))
    if outside:
        log.warning("landmark(s) %s lie outside the CT volume; they are projected all the same", outside)
    body = data > BODY_HU
    if not body.any():
        raise InputError(f"no voxel above {BODY_HU:.0f} HU: the CT holds no body", reason="ct_no_body")
    return CTScene(
        volume=vol,
        body=body,
        knee_centre_mm=knee,
        knee_from=knee_from,
        landmarks=landmarks,
        table_removed=remove_table,
        fingerprint=_fingerprint(vol),
    )


# --- geometry ------------------------------------------------------------------------------------------
def body_box(scene: CTScene, *, near_knee: bool, slab: int = 16) -> tuple[F64, F64]:
    """LPS box of the body voxels' centres, widened by half a voxel: of the whole CT, or of the slab of
    ``KNEE_BODY_HALF_HEIGHT_MM`` around the knee (the part the knee detectors stand against). Exact
    (every body voxel counts), so it does not depend on the order the CT stores its voxels in."""
    vol = scene.volume
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    lo_all, hi_all = lo.copy(), hi.copy()
    z0 = float(scene.knee_centre_mm[2])
    for k0 in range(0, vol.shape[2], slab):
        idx = np.argwhere(scene.body[:, :, k0 : k0 + slab]).astype(np.float64)
        if not len(idx):
            continue
        idx[:, 2] += k0
        pts = vol.index_to_mm(idx)
        lo_all = np.minimum(lo_all, pts.min(axis=0))
        hi_all = np.maximum(hi_all, pts.max(axis=0))
        if near_knee:
            pts = pts[np.abs(pts[:, 2] - z0) <= KNEE_BODY_HALF_HEIGHT_MM]
            if len(pts):
                lo = np.minimum(lo, pts.min(axis=0))
                hi = np.maximum(hi, pts.max(axis=0))
    if not near_knee or not np.all(np.isfinite(lo)):
        lo, hi = lo_all, hi_all
    half = 0.5 * max(vol.spacing_mm)
    return lo - half, hi + half


def check_longleg_coverage(scene: CTScene) -> tuple[float, float]:
    """The z range (inferior, superior) the long-leg film must show, or InputError
    ``ct_too_short_for_longleg`` when the CT does not reach from hip to ankle."""
    lo, hi = scene.volume.bounds_mm()
    L = scene.landmarks
    if lm.FHC in L and lm.AC in L:
        top = float(L[lm.FHC][2]) + LONGLEG_LANDMARK_MARGIN_MM
        bottom = float(L[lm.AC][2]) - LONGLEG_LANDMARK_MARGIN_MM
        if top > hi[2] or bottom < lo[2]:
            raise InputError(
                "the CT does not reach from above the hip centre to below the ankle centre "
                f"(covers z {lo[2]:.0f}..{hi[2]:.0f} mm, needs {bottom:.0f}..{top:.0f} mm)",
                reason="ct_too_short_for_longleg",
            )
        return bottom, top
    extent = float(hi[2] - lo[2])
    if extent < LONGLEG_MIN_EXTENT_MM:
        raise InputError(
            f"a long-leg film needs a CT from hip to ankle: this one covers {extent:.0f} mm along the "
            f"body axis (at least {LONGLEG_MIN_EXTENT_MM:.0f} mm, or FHC and AC landmarks inside it)",
            reason="ct_too_short_for_longleg",
        )
    return float(lo[2]), float(hi[2])
