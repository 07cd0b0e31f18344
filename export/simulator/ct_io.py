"""CT volumes in and out of the simulator: NIfTI files and DICOM series, always LPS inside xr3d.

NIfTI stores world coordinates in RAS; xr3d works in DICOM LPS. The conversion is the same matrix
both ways (``RAS_TO_LPS`` is its own inverse) and happens only here, on the way in and out.

Input errors raise :class:`~appliance.errors.InputError` with a reason: ``ct_not_found``,
``ct_unsupported_format``, ``nifti_unreadable`` (header cannot be parsed), ``nifti_truncated``
(voxel data missing or cut short), ``nifti_not_3d``, ``nifti_no_orientation`` (neither sform nor
qform set, so the patient position is unknown), plus the ``ct_*`` reasons of
:mod:`appliance.dicomio.ct_series`.
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from numpy.typing import DTypeLike, NDArray

from appliance.dicomio.ct_series import read_ct_series
from appliance.errors import InputError
from appliance.geometry.volume import RAS_TO_LPS, Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# sform/qform code 1: "scanner-based anatomical coordinates", i.e. the patient frame of the CT.
_XFORM_SCANNER = 1
# What nibabel and the gzip/zlib layers raise on malformed or short files.
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, ImageFileError)


def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def _load_nifti(path: Path) -> Volume:
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read NIfTI header: {exc}", reason="nifti_unreadable") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError("file is not a NIfTI-1/2 image", reason="nifti_unreadable")
    header = img.header
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        raise InputError(
            "NIfTI has neither sform nor qform: no patient geometry", reason="nifti_no_orientation"
        )
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"NIfTI must be a 3D volume, got shape {img.shape}", reason="nifti_not_3d")
    try:
        # get_fdata applies scl_slope / scl_inter, so stored integers come back as HU.
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape)
    except _READ_ERRORS as exc:
        raise InputError(f"NIfTI voxel data is unreadable: {exc}", reason="nifti_truncated") from exc
    # nibabel picks sform when its code is set, else qform: the same rule every NIfTI reader uses.
    affine_lps = RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)
    return Volume(data=np.ascontiguousarray(data), affine=affine_lps)


def load_ct(path: Path, *, series_uid: str | None = None) -> Volume:
    """A CT volume in HU (float32) with an LPS affine, from a NIfTI file or a DICOM series directory.

    A path to a single DICOM file reads the whole series that file belongs to from its directory.
    ``series_uid`` picks one series in a directory holding several.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("CT input does not exist", reason="ct_not_found")
    if path.is_dir():
        vol = read_ct_series(path, series_uid)
    elif _nifti_suffix(path) is not None:
        vol = _load_nifti(path)
    elif _is_dicom_file(path):
        vol = read_ct_series(path.parent, series_uid or _series_of(path))
    else:
        raise InputError(
            "CT input must be a .nii/.nii.gz file or a DICOM series", reason="ct_unsupported_format"
        )
    return Volume(data=np.asarray(vol.data, dtype=np.float32), affine=vol.affine)


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _series_of(path: Path) -> str | None:
    import pydicom  # local: only this rarely used branch needs it

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as exc:
        raise InputError(f"cannot parse DICOM: {exc}", reason="ct_unreadable") from exc
    uid = ds.get("SeriesInstanceUID")
    return str(uid) if uid else None


def _cast(data: NDArray[np.generic], dtype: np.dtype[Any]) -> NDArray[np.generic]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # Round rather than truncate, and clip so that -1024.4 HU does not wrap around in int16.
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return np.asarray(data, dtype=dtype)


def save_nifti(volume: Volume, path: Path, *, dtype: DTypeLike = np.float32) -> None:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with its LPS affine converted to RAS.

    Both sform and qform are set (code 1, scanner) so every reader finds the same geometry; the
    qform cannot hold a shear (gantry tilt), so for sheared volumes only the sform is exact. The
    file appears atomically: it is written under a hidden temporary name and renamed.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    if suffix is None:
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz: {path.name}")
    out_dtype = np.dtype(dtype)
    affine_ras = RAS_TO_LPS @ np.asarray(volume.affine, dtype=np.float64)
    img = nib.Nifti1Image(_cast(np.asarray(volume.data), out_dtype), affine_ras)
    img.set_sform(affine_ras, code=_XFORM_SCANNER)
    img.set_qform(affine_ras, code=_XFORM_SCANNER)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_data_dtype(out_dtype)
    # nibabel chooses compression from the file name, so the temporary keeps the real suffix.
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.{secrets.token_hex(6)}.tmp{suffix}")
    try:
        nib.save(img, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote NIfTI volume %s of dtype %s", volume.shape, out_dtype)
