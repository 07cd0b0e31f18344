"""Read one CT series from a directory of single-frame DICOM files into a Volume (HU, LPS mm).

Voxel ``[i, j, k]`` is column ``i``, row ``j`` of the ``k``-th slice along the slice normal
(row direction x column direction). The affine is built from the header alone:

    x(i, j, k) = IPP_0 + i * dc * row_dir + j * dr * col_dir + k * step

with ``(dr, dc) = PixelSpacing``, ``row_dir, col_dir = ImageOrientationPatient`` and ``step`` the
average displacement between consecutive ImagePositionPatient values. Using the measured step (rather
than normal x spacing) keeps the affine exact for gantry-tilted series, whose slices are sheared.

Every check that fails raises :class:`~appliance.errors.InputError` with one of these reasons:
``ct_not_found``, ``ct_empty``, ``ct_unreadable``, ``ct_multiple_series``, ``ct_series_not_found``,
``ct_missing_attribute``, ``ct_inconsistent_geometry``, ``ct_too_few_slices``,
``ct_duplicate_slices``, ``ct_series_gaps``, ``ct_multiframe_unsupported``, ``ct_pixel_data``,
``ct_unsupported_transfer_syntax``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.errors import InputError
from appliance.geometry.volume import Volume

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# Tolerances. Real headers store positions as decimal strings with a few digits, so rounding of a
# few hundredths of a millimetre is normal; a missing slice shows up as a 100% larger gap.
_ORIENTATION_TOL = 1e-4  # direction cosines
_SPACING_RTOL = 1e-4  # relative, pixel spacing between slices of one series
_GAP_RTOL = 0.1  # relative deviation of one gap from the median gap
_GAP_ATOL_MM = 0.05
_DUPLICATE_MM = 1e-3


@dataclass(frozen=True)
class _Slice:
    path: Path
    series_uid: str
    position: NDArray[np.float64]
    orientation: NDArray[np.float64]
    spacing: tuple[float, float]
    shape: tuple[int, int]


def _sop_class(ds: Dataset, path: Path) -> str:
    """The SOP class of a parsed file. Every DICOM object names one (a DICOMDIR in its file meta);
    a file that starts like DICOM but names none is damaged, not merely unrelated."""
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if not sop_class:
        raise InputError(
            f"{path.name}: DICOM file without a SOP Class UID (corrupt?)", reason="ct_unreadable"
        )
    return str(sop_class)


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path.name}: {keyword} is not numeric", reason="ct_missing_attribute") from exc
    if arr is None or arr.size != count or not np.all(np.isfinite(arr)):
        raise InputError(
            f"{path.name}: {keyword} is missing or does not hold {count} numbers",
            reason="ct_missing_attribute",
        )
    return arr


def _read_header(path: Path) -> Dataset | None:
    """The header of ``path``, or None when the file is not DICOM at all (it is then skipped)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        log.debug("skipping a non-DICOM file in the CT directory")
        return None
    except Exception as exc:  # pydicom raises many types on malformed input
        raise InputError(f"{path.name}: cannot parse DICOM: {exc}", reason="ct_unreadable") from exc


def _slice_of(path: Path, ds: Dataset) -> _Slice:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{path.name}: multi-frame CT is not supported", reason="ct_multiframe_unsupported")
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    spacing = _floats(ds, "PixelSpacing", 2, path)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise InputError(f"{path.name}: Rows/Columns missing", reason="ct_missing_attribute")
    if np.any(spacing <= 0):
        raise InputError(f"{path.name}: PixelSpacing must be positive", reason="ct_inconsistent_geometry")
    uid = ds.get("SeriesInstanceUID")
    if not uid:
        raise InputError(f"{path.name}: SeriesInstanceUID missing", reason="ct_missing_attribute")
    return _Slice(
        path=path,
        series_uid=str(uid),
        position=ipp,
        orientation=iop,
        spacing=(float(spacing[0]), float(spacing[1])),
        shape=(int(rows), int(cols)),
    )


def _collect(directory: Path) -> list[_Slice]:
    slices: list[_Slice] = []
    for path in sorted(directory.iterdir()):
        # Hidden files include the temporaries of atomic writers still in progress.
        if not path.is_file() or path.name.startswith("."):
            continue
        ds = _read_header(path)
        if ds is None:
            continue
        sop_class = _sop_class(ds, path)
        if sop_class != CT_IMAGE_STORAGE:
            log.debug("skipping a non-CT object (SOP class %s)", sop_class)
            continue
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            log.debug("skipping a CT localizer image")
            continue
        slices.append(_slice_of(path, ds))
    return slices


def _choose_series(slices: list[_Slice], series_uid: str | None) -> list[_Slice]:
    counts = Counter(s.series_uid for s in slices)
    if series_uid is not None:
        chosen = [s for s in slices if s.series_uid == series_uid]
        if not chosen:
            raise InputError(
                f"series {series_uid} is not among the {len(counts)} CT series in the directory",
                reason="ct_series_not_found",
            )
        return chosen
    if len(counts) > 1:
        listing = ", ".join(f"{uid} ({n} slices)" for uid, n in sorted(counts.items()))
        raise InputError(
            f"{len(counts)} CT series found; choose one by SeriesInstanceUID: {listing}",
            reason="ct_multiple_series",
        )
    return slices


def _check_consistent(slices: list[_Slice]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit row and column directions shared by all slices."""
    ref = slices[0]
    for s in slices[1:]:
        if s.shape != ref.shape:
            raise InputError("slices differ in Rows/Columns", reason="ct_inconsistent_geometry")
        if not np.allclose(s.orientation, ref.orientation, rtol=0.0, atol=_ORIENTATION_TOL):
            raise InputError("slices differ in ImageOrientationPatient", reason="ct_inconsistent_geometry")
        if not np.allclose(s.spacing, ref.spacing, rtol=_SPACING_RTOL, atol=0.0):
            raise InputError("slices differ in PixelSpacing", reason="ct_inconsistent_geometry")
    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    nr, nc = float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir))
    if abs(nr - 1.0) > 1e-3 or abs(nc - 1.0) > 1e-3 or abs(float(row_dir @ col_dir)) > 1e-3:
        raise InputError(
            "ImageOrientationPatient is not two orthogonal unit vectors", reason="ct_inconsistent_geometry"
        )
    return row_dir / nr, col_dir / nc


def _order_and_step(
    slices: list[_Slice], normal: NDArray[np.float64]
) -> tuple[list[_Slice], NDArray[np.float64]]:
    """Slices sorted along the normal, and the displacement from one slice to the next."""
    if len(slices) < 2:
        raise InputError("a CT series needs at least two slices", reason="ct_too_few_slices")
    ordered = sorted(slices, key=lambda s: float(s.position @ normal))
    positions = np.stack([s.position for s in ordered])
    along = positions @ normal
    gaps = np.diff(along)
    if np.any(gaps < _DUPLICATE_MM):
        raise InputError(
            "two or more slices share a position (repeated acquisition?)", reason="ct_duplicate_slices"
        )
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median)))
    if worst > max(_GAP_ATOL_MM, _GAP_RTOL * median):
        raise InputError(
            f"slice gaps are uneven (median {median:.3f} mm, largest deviation {worst:.3f} mm): "
            "slices are missing or the spacing varies",
            reason="ct_series_gaps",
        )
    n = len(ordered)
    step = (positions[-1] - positions[0]) / (n - 1)
    # Positions must lie on one straight line; otherwise no single affine describes the series.
    residual = positions - (positions[0] + np.arange(n)[:, None] * step)
    if float(np.max(np.linalg.norm(residual, axis=1))) > max(_GAP_ATOL_MM, _GAP_RTOL * median):
        raise InputError("slice positions do not lie on a straight line", reason="ct_inconsistent_geometry")
    return ordered, step


def _hu_slice(path: Path, shape: tuple[int, int]) -> NDArray[np.float32]:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"{path.name}: cannot parse DICOM: {exc}", reason="ct_unreadable") from exc
    if "PixelData" not in ds:
        raise InputError(f"{path.name}: no pixel data (truncated file?)", reason="ct_pixel_data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path.name}: CT pixels must be greyscale", reason="ct_pixel_data")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise InputError(
            f"{path.name}: cannot decode transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}: {exc}",
            reason="ct_unsupported_transfer_syntax",
        ) from exc
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise InputError(f"{path.name}: pixel data unusable: {exc}", reason="ct_pixel_data") from exc
    if pixels.shape != shape:
        raise InputError(f"{path.name}: pixel array shape {pixels.shape} != {shape}", reason="ct_pixel_data")
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def read_ct_series(directory: Path, series_uid: str | None = None) -> Volume:
    """The CT series in ``directory`` (not recursive) as float32 HU in LPS millimetres.

    Non-DICOM files, hidden files, non-CT objects and localizer images are skipped. With more than
    one CT series present, ``series_uid`` chooses one (otherwise ``ct_multiple_series``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("CT series directory does not exist", reason="ct_not_found")
    slices = _collect(directory)
    if not slices:
        raise InputError("no CT image files in the directory", reason="ct_empty")
    chosen = _choose_series(slices, series_uid)
    row_dir, col_dir = _check_consistent(chosen)
    normal = np.cross(row_dir, col_dir)
    ordered, step = _order_and_step(chosen, normal)

    rows, cols = ordered[0].shape
    row_spacing, col_spacing = ordered[0].spacing
    data = np.empty((cols, rows, len(ordered)), dtype=np.float32)
    for k, s in enumerate(ordered):
        data[:, :, k] = _hu_slice(s.path, (rows, cols)).T

    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = ordered[0].position
    tilt = float(np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), -1.0, 1.0))))
    if tilt > 0.01:
        log.info("CT series is sheared by %.2f degrees (gantry tilt); affine keeps the shear", tilt)
    log.debug("read CT series: %d x %d x %d voxels", cols, rows, len(ordered))
    return Volume(data=data, affine=affine)
