"""The knee's axial orientation and the rotated ("knee-canonical") reconstruction frame.

A standing leg is filmed with the limb turned about its long axis by up to ~20 deg (foot position,
habitus). The reconstruction network reads each 3D point's neighbourhood on the films, and an AP and a
lateral film barely constrain how an oval cross-section is turned: two orthogonal shadows of a turned
ellipse look like those of an unturned one a little wider. Trained in a cube aligned with the patient
axes, the network therefore reconstructs every knee at about the population's mean rotation: on the
calibration anatomies the plateau of the 192-wide recon-1.3 continuation was turned -4..+4 deg while the
truth spanned -19..+17 deg, and femur Dice fell from 0.95 (|rotation| < 6 deg) to 0.91 (> 12 deg)
(docs/recon.md).

The canonical frame turns the cube about its superior-inferior axis so that its first axis runs along the
knee's mediolateral direction. The decoder is an implicit function of the normalised cube coordinates, so
the frame is only a change of coordinates: a point ``p`` of the patient-aligned cube is decoded at
``p' = R^T p`` and each film's cube matrix becomes ``M R`` (same projection). Outputs stay on the
patient-aligned grid.

The orientation used for training is measured on the truth labels (:func:`plateau_axial_deg`); at
inference it comes from the films (the orientation regressor).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError

F64 = NDArray[np.float64]

TIBIA_LABEL = 2
PLATEAU_DEPTH_VOX = 12  # the proximal tibia slab whose outline gives the plateau's long axis


def plateau_axial_deg(labels: ArrayLike, tibia: int = TIBIA_LABEL) -> float:
    """Angle (deg) of the tibial plateau's mediolateral axis from the cube's first axis, turning toward
    the second, in (-90, 90]: the long principal axis of the tibia's top ``PLATEAU_DEPTH_VOX`` voxels
    seen along the third (superior) axis.

    The plateau is some 1.5x wider than deep, so its outline fixes the knee's rotation to a degree or two
    (on the calibration anatomies within 3.5 deg of the simulator's MTP-LTP line, usually within 2)."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"labels must be 3D, got shape {lab.shape}", reason="bad_labels")
    idx = np.argwhere(lab == tibia)
    if len(idx) < 50:
        raise InputError("too little tibia to measure the plateau's orientation", reason="recon_orientation")
    top = idx[idx[:, 2] >= idx[:, 2].max() - PLATEAU_DEPTH_VOX][:, :2].astype(np.float64)
    _, v = np.linalg.eigh(np.cov((top - top.mean(axis=0)).T))
    axis = v[:, 1] if v[0, 1] >= 0 else -v[:, 1]
    return float(np.degrees(np.arctan2(axis[1], axis[0])))


def axial_rotation(deg: float) -> F64:
    """3x3 rotation about the cube's third (superior) axis by ``deg``, first axis toward the second."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotate_mats(mats: ArrayLike, rotation: ArrayLike) -> NDArray[np.float32]:
    """Cube -> film matrices (..., 3, 4) for the cube turned by ``rotation``: ``M R`` (the point the turned
    cube calls ``p'`` is the aligned cube's ``R p'``)."""
    m = np.asarray(mats, dtype=np.float64)
    r4 = np.eye(4)
    r4[:3, :3] = np.asarray(rotation, dtype=np.float64)
    return np.asarray(m @ r4, dtype=np.float32)


def to_canonical(points: ArrayLike, rotation: ArrayLike) -> NDArray[np.float32]:
    """Normalised aligned-cube points (..., 3) in the turned cube's coordinates: ``R^T p``."""
    p = np.asarray(points, dtype=np.float64)
    return np.asarray(p @ np.asarray(rotation, dtype=np.float64), dtype=np.float32)


def ap_yaw_deg(ap_mat: ArrayLike) -> float:
    """How far the AP film's detector is turned about the cube's S-I axis (deg, in [-90, 90)), from its
    cube -> film matrix, whose third row is the detector's normal (the homogeneous depth).

    The orientation model sees the knee's rotation relative to the AP film; adding this gives it in the
    cube. A detector facing the cube's second axis (either way) is 0."""
    m = np.asarray(ap_mat, dtype=np.float64).reshape(3, 4)
    normal = m[2, :3]
    if not np.all(np.isfinite(normal)) or float(np.hypot(normal[0], normal[1])) < 1e-9:
        raise InputError("the AP film's matrix has no horizontal beam direction", reason="recon_bad_geometry")
    deg = float(np.degrees(np.arctan2(-normal[0], normal[1])))
    return (deg + 90.0) % 180.0 - 90.0
