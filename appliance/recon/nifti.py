"""NIfTI-1 writing of reconstruction volumes (LPS affine converted to RAS, sform and qform set)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import DTypeLike

from appliance.errors import InputError
from appliance.geometry.volume import RAS_TO_LPS, Volume


def save_volume(volume: Volume, path: Path, dtype: DTypeLike) -> None:
    """Write ``volume`` to ``path`` (.nii.gz), appearing atomically (temporary name, then rename)."""
    path = Path(path)
    affine_ras = RAS_TO_LPS @ np.asarray(volume.affine, dtype=np.float64)
    data = np.asarray(volume.data)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(data.astype(dtype), affine_ras)
    img.set_sform(affine_ras, code=1)
    img.set_qform(affine_ras, code=1)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def load_volume(path: Path) -> Volume:
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):
        raise InputError(f"{path}: not a NIfTI-1 image")
    return Volume(np.asarray(img.dataobj), RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64))
