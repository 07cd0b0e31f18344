"""One PNG with axial, coronal and sagittal slices through the knee centre, HU windowed, bone outlines.

Slices are resampled on patient-aligned planes (1 mm, LPS) whatever the volume's affine, and shown in the
radiological convention: the patient's right on the viewer's left (axial, coronal), anterior on the
left of the sagittal view, superior up; orientation letters on every edge.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from appliance.geometry.volume import Volume
from appliance.recon.types import BONE_NAMES, FEMUR, TIBIA

log = logging.getLogger(__name__)

BONE_COLOURS: dict[int, str] = {1: "#e6550d", 2: "#3182bd", 3: "#31a354", 4: "#c51b8a"}
HALF_FOV_MM = 80.0
AXIAL_OFFSET_MM = 15.0  # axial slice this far superior of the knee centre


def knee_centre(labels: Volume) -> NDArray[np.float64]:
    """Between the femur's lowest and the tibia's highest voxel (LPS z), at their mean x, y; falls back to
    the centroid of all bone (or the volume centre) when a bone is missing."""
    lab = np.asarray(labels.data)
    z_row = np.asarray(labels.affine, dtype=np.float64)[2]
    fem = np.argwhere(lab == FEMUR)
    tib = np.argwhere(lab == TIBIA)
    if len(fem) and len(tib):
        # S-I (LPS z) of each voxel from the affine's third row; only the end caps go to mm in full.
        zf = fem @ z_row[:3]
        zt = tib @ z_row[:3]
        low = labels.index_to_mm(fem[zf <= zf.min() + 5.0])
        high = labels.index_to_mm(tib[zt >= zt.max() - 5.0])
        return np.asarray(0.5 * (low.mean(axis=0) + high.mean(axis=0)), dtype=np.float64)
    if (lab > 0).any():
        return np.asarray(labels.index_to_mm(np.argwhere(lab > 0)).mean(axis=0), dtype=np.float64)
    return np.asarray(labels.index_to_mm((np.array(labels.shape) - 1) / 2.0)[0], dtype=np.float64)


def _plane(
    volume: Volume, centre: NDArray[np.float64], ax_h: ArrayLike, ax_v: ArrayLike, order: int
) -> NDArray[np.float32]:
    """Resample the plane through ``centre`` spanned by LPS unit vectors ``ax_h`` (columns) and
    ``ax_v`` (rows), 1 mm pixels over +-HALF_FOV_MM."""
    t = np.arange(-HALF_FOV_MM, HALF_FOV_MM + 0.5, 1.0)
    hh, vv = np.meshgrid(t, t)
    pts = centre + hh[..., None] * np.asarray(ax_h, float) + vv[..., None] * np.asarray(ax_v, float)
    idx = volume.mm_to_index(pts.reshape(-1, 3)).T
    vals = ndimage.map_coordinates(
        np.asarray(volume.data, dtype=np.float32), idx, order=order, cval=0.0 if order == 0 else -1000.0
    )
    return vals.reshape(hh.shape).astype(np.float32)


# (title, horizontal axis, vertical axis, letters left/right/top/bottom) in LPS.
_VIEWS = (
    ("axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("R", "L", "A", "P")),
    ("coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), ("R", "L", "S", "I")),
    ("sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), ("A", "P", "S", "I")),
)


def write_slices_png(
    volume: Volume,
    labels: Volume,
    path: Path,
    *,
    centre_mm: ArrayLike | None = None,
    window: tuple[float, float] = (400.0, 1800.0),
    title: str = "",
) -> NDArray[np.float64]:
    """Draw the three slices to ``path``; returns the centre used (LPS mm)."""
    c = knee_centre(labels) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64).reshape(3)
    level, width = window
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=100, facecolor="black")
    for ax, (name, h, v, letters) in zip(axes, _VIEWS, strict=True):
        # The axial plane through the joint gap shows little bone; cut through the condyles instead.
        pc = c + np.array([0.0, 0.0, AXIAL_OFFSET_MM]) if name == "axial" else c
        img = _plane(volume, pc, h, v, order=1)
        lab = _plane(labels, pc, h, v, order=0).astype(np.int32)
        ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="bilinear")
        for value, colour in BONE_COLOURS.items():
            if (lab == value).any():
                ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        n = img.shape[0]
        style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "ha": "center", "va": "center"}
        ax.text(4, n / 2, letters[0], **style)
        ax.text(n - 5, n / 2, letters[1], **style)
        ax.text(n / 2, 4, letters[2], **style)
        ax.text(n / 2, n - 5, letters[3], **style)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color=BONE_COLOURS[k], label=BONE_NAMES[k]) for k in BONE_COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, labelcolor="white", fontsize=9)
    fig.suptitle(title or f"centre {c[0]:.0f}, {c[1]:.0f}, {c[2]:.0f} mm (LPS)", color="white", fontsize=10)
    fig.savefig(path, facecolor="black")
    plt.close(fig)
    return c
