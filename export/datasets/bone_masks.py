"""Femur and tibia masks projected onto a film from a case's label volume: the auxiliary target of the
landmark model's mask head (``labels_leg.nii.gz`` of a simulated case, through the film's geometry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError
from appliance.geometry.drr import line_integrals_multi
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import RAS_TO_LPS

__all__ = [
    "FEMUR_LABEL",
    "TIBIA_LABEL",
    "BoneLabels",
    "frame_geometry",
    "load_bone_labels",
    "project_bone_masks",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Shape = tuple[int, int]

FEMUR_LABEL: Final = 2  # docs/simulator.md: 2 femur, 3 tibia
TIBIA_LABEL: Final = 3


@dataclass(frozen=True, eq=False)
class BoneLabels:
    """Femur and tibia indicator volumes (2, n0, n1, n2) float32 on one grid; ``affine`` index -> LPS."""

    volumes: F32
    affine: F64


def load_bone_labels(path: Path) -> BoneLabels:
    """Femur / tibia voxels of a label NIfTI (RAS on disk, LPS here), cropped to their bounding box."""
    img = nib.load(Path(path))
    data = np.asarray(img.dataobj, dtype=np.uint8)  # type: ignore[attr-defined]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label volume must be 3D, got shape {data.shape}", reason="nifti_not_3d")
    affine = RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    bone = (data == FEMUR_LABEL) | (data == TIBIA_LABEL)
    if not bone.any():
        raise InputError("label volume has no femur or tibia voxels", reason="no_bone_labels")
    idx = np.nonzero(bone)
    lo = [max(0, int(i.min()) - 1) for i in idx]
    hi = [min(s, int(i.max()) + 2) for i, s in zip(idx, data.shape, strict=True)]
    sub = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    shift = np.eye(4)
    shift[:3, 3] = lo
    vols = np.stack([sub == FEMUR_LABEL, sub == TIBIA_LABEL]).astype(np.float32)
    return BoneLabels(volumes=vols, affine=affine @ shift)


def frame_geometry(
    geometry: ProjectionGeometry, affine_to_film: ArrayLike, shape: Shape
) -> ProjectionGeometry:
    """The projection geometry whose pixels are those of a sample frame (axis-aligned scale + shift of
    the film's pixels): projecting through it lands exactly on the sample's pixels."""
    a = np.asarray(affine_to_film, dtype=np.float64)
    if abs(a[0, 1]) > 1e-12 or abs(a[1, 0]) > 1e-12 or a[0, 0] <= 0 or a[1, 1] <= 0:
        raise InputError("frame_geometry needs an axis-aligned, non-mirrored frame", reason="bad_frame")
    origin = geometry.pixel_to_mm(a[0, 2], a[1, 2])
    return ProjectionGeometry(
        source_mm=geometry.source_mm,
        detector_origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        u_dir=geometry.u_dir,
        v_dir=geometry.v_dir,
        pitch_u_mm=geometry.pitch_u_mm * float(a[0, 0]),
        pitch_v_mm=geometry.pitch_v_mm * float(a[1, 1]),
        columns=int(shape[1]),
        rows=int(shape[0]),
        name=geometry.name,
    )


def project_bone_masks(
    labels: BoneLabels, geometry: ProjectionGeometry, *, threshold_mm: float = 0.0
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(femur, tibia) masks: pixels whose ray crosses more than ``threshold_mm`` of the bone label.

    The labels are interpolated trilinearly, so with the default threshold 0 a mask reaches up to one
    voxel beyond the bone surface (an approximate target, not a segmentation truth)."""
    paths = line_integrals_multi(labels.volumes, labels.affine, geometry)
    return paths[0] > threshold_mm, paths[1] > threshold_mm
