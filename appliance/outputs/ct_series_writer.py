"""The reconstructed HU volume as a classic CT Image Storage series (one file per slice).

``write_ct_series(folder, volume, sources, key=..., created=...)`` writes ``IM_0001.dcm`` ... into
``folder`` and returns the paths. Geometry comes from the volume's LPS affine (voxel ``[i, j, k]`` is
column ``i``, row ``j`` of slice ``k``, the layout :mod:`appliance.dicomio.ct_series` reads back):

* ImageOrientationPatient = the unit directions of the ``i`` and ``j`` axes (they must be orthogonal;
  a sheared in-plane grid cannot be written as CT and raises GeometryError);
* PixelSpacing = (row spacing, column spacing) = (|affine[:, 1]|, |affine[:, 0]|);
* ImagePositionPatient of slice ``k`` = affine @ (0, 0, k, 1); SliceThickness = the slice step along
  the slice normal.

Pixels are HU rounded to integers, stored as signed 16-bit with RescaleSlope 1 / RescaleIntercept 0
(values beyond the int16 range are clipped and logged). ImageType DERIVED\\SECONDARY\\AXIAL; the
series joins the source study (patient/study copied from the first source film), references every
source film in SourceImageSequence and gets a new FrameOfReferenceUID: the reconstruction's LPS frame is
xr3d's own, not a scanner's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from appliance.errors import GeometryError, InputError
from appliance.geometry.volume import Volume
from appliance.outputs.common import (
    DEFAULT_EQUIPMENT,
    Equipment,
    base_dataset,
    output_uid,
    referenced_image_item,
    require_source,
    save,
)

log = logging.getLogger(__name__)

__all__ = ["CT_SERIES_NUMBER", "CtGeometry", "ct_geometry", "write_ct_series"]

CT_SERIES_NUMBER: Final = 9004
CT_SERIES_DESCRIPTION: Final = "xr3d reconstruction (not a CT scan)"
_ORTHOGONAL_TOL: Final = 1e-6
# Bone window as the default display (the recon is for bone); readers can change it.
_WINDOW: Final = (500.0, 2000.0)
_INT16: Final = (-32768, 32767)


class CtGeometry:
    """Image Plane attributes derived from an LPS affine."""

    def __init__(self, affine: NDArray[np.float64], n_slices: int) -> None:
        a = np.asarray(affine, dtype=np.float64)
        ci, cj, ck = a[:3, 0], a[:3, 1], a[:3, 2]
        di, dj = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
        row_dir, col_dir = ci / di, cj / dj
        if abs(float(row_dir @ col_dir)) > _ORTHOGONAL_TOL:
            raise GeometryError("volume's i and j axes are not orthogonal: cannot be written as CT slices")
        normal = np.cross(row_dir, col_dir)
        self.orientation: tuple[float, ...] = (*row_dir.tolist(), *col_dir.tolist())
        self.pixel_spacing: tuple[float, float] = (dj, di)
        step = float(ck @ normal)
        if abs(step) < 1e-6:
            raise GeometryError("volume's slice axis lies in the slice plane")
        self.slice_thickness = abs(step)
        self.positions: list[tuple[float, float, float]] = [
            tuple((a[:3, 3] + k * ck).tolist()) for k in range(n_slices)
        ]
        self.slice_locations = [float(np.asarray(p) @ normal) for p in self.positions]


def ct_geometry(volume: Volume) -> CtGeometry:
    return CtGeometry(np.asarray(volume.affine, dtype=np.float64), volume.shape[2])


def _fmt(values: Sequence[float]) -> list[str]:
    # DS holds at most 16 characters; 10 significant digits are far below a micrometre here.
    return [f"{v:.10g}" for v in values]


def _hu_int16(volume: Volume) -> NDArray[np.int16]:
    data = np.asarray(volume.data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError("reconstructed volume holds NaN or infinite values", reason="bad_volume")
    rounded = np.rint(data)
    clipped = np.clip(rounded, *_INT16)
    n = int(np.count_nonzero(clipped != rounded))
    if n:
        log.warning("%d voxel(s) outside the int16 range were clipped", n)
    return clipped.astype(np.int16)


def write_ct_series(
    folder: Path,
    volume: Volume,
    sources: Sequence[Dataset],
    *,
    key: str,
    created: datetime | None = None,
    equipment: Equipment = DEFAULT_EQUIPMENT,
    series_number: int = CT_SERIES_NUMBER,
) -> list[Path]:
    """Write the series (module docstring); ``sources`` are the films the volume was reconstructed
    from (at least one: it supplies patient and study). Returns the written paths in slice order."""
    if not sources:
        raise InputError("no source film dataset given for the CT series", reason="missing_source")
    refs = [require_source(s, "source film") for s in sources]
    geom = ct_geometry(volume)
    hu = _hu_int16(volume)
    when = created or datetime.now(UTC)
    series_uid = output_uid(key, "ct.series")
    frame_uid = output_uid(key, "ct.frame_of_reference")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    laterality = next(
        (str(v) for s in sources for v in (s.get("ImageLaterality"), s.get("Laterality")) if v in ("L", "R")),
        "",
    )
    paths = []
    n_i, n_j, n_k = volume.shape
    for k in range(n_k):
        ds = base_dataset(
            sources[0],
            sop_class_uid=CTImageStorage,
            sop_instance_uid=output_uid(key, "ct.instance", str(k)),
            series_uid=series_uid,
            series_number=series_number,
            series_description=CT_SERIES_DESCRIPTION,
            modality="CT",
            created=when,
            equipment=equipment,
            instance_number=k + 1,
        )
        # General Series, Type 2C for CT: the side from the films; no patient position applies to a
        # volume reconstructed from standing films, so it is present and empty.
        ds.Laterality = laterality
        ds.PatientPosition = ""
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.AcquisitionNumber = ""
        ds.KVP = ""
        ds.DerivationDescription = "3D reconstruction from radiographs by xr3d; not a CT acquisition"
        ds.SourceImageSequence = [referenced_image_item(r) for r in refs]
        ds.ImageOrientationPatient = _fmt(geom.orientation)
        ds.ImagePositionPatient = _fmt(geom.positions[k])
        ds.PixelSpacing = _fmt(geom.pixel_spacing)
        ds.SliceThickness = _fmt([geom.slice_thickness])[0]
        ds.SliceLocation = _fmt([geom.slice_locations[k]])[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = n_j, n_i
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = _fmt(_WINDOW)
        ds.BurnedInAnnotation = "NO"
        # Slice k has rows j and columns i: the transpose of data[:, :, k].
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        paths.append(save(ds, folder / f"IM_{k + 1:04d}.dcm"))
    log.info("CT series written: %d slices of %d x %d", n_k, n_j, n_i)
    return paths
