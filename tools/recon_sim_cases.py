"""Simulated cases (``xr3d simulate`` folders) as inputs of appliance.recon: films and a "perfect"
reconstruction built from the simulator's own knee CT and labels.

Used by tools/calibrate_consistency.py and tools/eval_bones3d.py; lives in tools/ because it reads the
simulator's file layout (truth.json, ct_knee.nii.gz), which the runtime must not depend on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from appliance.dicomio.geometry_tags import read_geometry
from appliance.geometry.volume import Volume
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.nifti import load_volume
from appliance.recon.types import FilmView, Reconstruction

# Simulator label values (export/simulator/labels.py) -> reconstruction label values.
SIM_TO_RECON = {2: 1, 3: 2, 4: 3, 5: 4}
VIEW_FILES = {"knee_ap": "knee_ap.dcm", "knee_lat": "knee_lat.dcm", "longleg_ap": "longleg_ap.dcm"}


@dataclass(frozen=True)
class SimCase:
    folder: Path
    truth: dict[str, Any]
    films: dict[str, FilmView]
    recon: Reconstruction  # the truth CT/labels at 1 mm


def load_film(path: Path, view: str) -> FilmView:
    ds = pydicom.dcmread(path)
    geom = read_geometry(ds)
    if geom is None:
        raise ValueError(f"{path} records no projection geometry")
    return FilmView(view, bone_bright_unit(ds, decode_pixels(ds)), geom)


def _load_nifti(path: Path) -> Volume:
    return load_volume(path)


def _block(n: int, f: int) -> int:
    return (n // f) * f


def to_recon_grid(ct: Volume, labels: Volume, spacing_mm: float = 1.0) -> Reconstruction:
    """Block-average the HU volume to ``spacing_mm`` and take each block's majority recon label."""
    f = max(1, round(spacing_mm / min(ct.spacing_mm)))
    s = [_block(n, f) for n in ct.shape]
    shape = tuple(n // f for n in s)
    hu = np.asarray(ct.data[: s[0], : s[1], : s[2]], dtype=np.float32)
    hu_b = hu.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5))
    lab = np.zeros(np.asarray(labels.data).shape, dtype=np.uint8)
    raw = np.asarray(labels.data)
    for sim, rec in SIM_TO_RECON.items():
        lab[raw == sim] = rec
    lab = lab[: s[0], : s[1], : s[2]]
    counts = np.stack(
        [(lab == k).reshape(shape[0], f, shape[1], f, shape[2], f).sum(axis=(1, 3, 5)) for k in range(5)]
    )
    lab_b = np.argmax(counts, axis=0).astype(np.uint8)
    aff = ct.affine.copy()
    aff[:3, 3] = ct.index_to_mm([(f - 1) / 2.0] * 3)[0]
    aff[:3, :3] = ct.affine[:3, :3] * f
    return Reconstruction(Volume(hu_b.astype(np.float32), aff), Volume(lab_b, aff), model="sim-truth")


def load_case(folder: Path, spacing_mm: float = 1.0) -> SimCase:
    folder = Path(folder)
    truth = json.loads((folder / "truth.json").read_text())
    films = {v: load_film(folder / f, v) for v, f in VIEW_FILES.items() if (folder / f).exists()}
    recon = to_recon_grid(
        _load_nifti(folder / "ct_knee.nii.gz"), _load_nifti(folder / "labels_knee.nii.gz"), spacing_mm
    )
    return SimCase(folder, truth, films, recon)


def shifted(recon: Reconstruction, shift_mm: NDArray[np.float64]) -> Reconstruction:
    """The same reconstruction placed ``shift_mm`` away (LPS)."""
    aff = recon.volume.affine.copy()
    aff[:3, 3] += shift_mm
    return Reconstruction(Volume(recon.volume.data, aff), Volume(recon.labels.data, aff), recon.model)


def rotated(recon: Reconstruction, axis: NDArray[np.float64], deg: float) -> Reconstruction:
    """The reconstruction rotated by ``deg`` about ``axis`` through its centre."""
    from appliance.recon.register import rigid_matrix

    centre = recon.volume.index_to_mm((np.array(recon.volume.shape) - 1) / 2.0)[0]
    T = rigid_matrix(np.asarray(axis, dtype=np.float64) * np.radians(deg), np.zeros(3), centre)
    aff = T @ recon.volume.affine
    return Reconstruction(Volume(recon.volume.data, aff), Volume(recon.labels.data, aff), recon.model)


def mirrored(recon: Reconstruction) -> Reconstruction:
    """Left/right swapped: mirrored about the sagittal plane through the volume centre."""
    centre = recon.volume.index_to_mm((np.array(recon.volume.shape) - 1) / 2.0)[0]
    M = np.eye(4)
    M[0, 0] = -1.0
    M[0, 3] = 2.0 * centre[0]
    aff = M @ recon.volume.affine
    return Reconstruction(Volume(recon.volume.data, aff), Volume(recon.labels.data, aff), recon.model)


def moved_bone(recon: Reconstruction, label: int, T: NDArray[np.float64]) -> Reconstruction:
    """The reconstruction with bone ``label`` moved by the 4x4 LPS transform ``T`` (its old place
    filled with 40 HU soft tissue): a reconstruction whose bone pose is wrong by a known amount."""
    from scipy import ndimage

    A = recon.volume.affine
    # Output voxel index -> source voxel index: A^-1 T^-1 A.
    M = np.linalg.inv(A) @ np.linalg.inv(T) @ A
    hu = np.asarray(recon.volume.data, dtype=np.float32)
    lab = np.asarray(recon.labels.data)
    mask = (lab == label).astype(np.float32)
    hu_m = ndimage.affine_transform(hu, M[:3, :3], M[:3, 3], order=1, mode="nearest")
    mask_m = ndimage.affine_transform(mask, M[:3, :3], M[:3, 3], order=1, mode="constant") > 0.5
    old = ndimage.binary_dilation(lab == label, iterations=1)
    hu_new = np.where(mask_m, hu_m, np.where(old, 40.0, hu)).astype(np.float32)
    lab_new = np.where(lab == label, 0, lab).astype(np.uint8)
    lab_new[mask_m] = label
    return Reconstruction(Volume(hu_new, A), Volume(lab_new, A), recon.model)


def cropped(recon: Reconstruction, centre_mm: NDArray[np.float64], size_mm: float = 144.0) -> Reconstruction:
    """The part of ``recon`` inside a cube of ``size_mm`` around ``centre_mm`` (the runtime's field)."""
    idx = recon.volume.mm_to_index(np.asarray(centre_mm).reshape(1, 3))[0]
    half = size_mm / 2.0 / np.asarray(recon.volume.spacing_mm)
    lo = np.maximum(np.floor(idx - half).astype(int), 0)
    hi = np.minimum(np.ceil(idx + half).astype(int), recon.volume.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    aff = recon.volume.affine.copy()
    aff[:3, 3] = recon.volume.index_to_mm(lo.reshape(1, 3))[0]
    return Reconstruction(
        Volume(np.ascontiguousarray(recon.volume.data[sl]), aff),
        Volume(np.ascontiguousarray(recon.labels.data[sl]), aff),
        recon.model,
    )
