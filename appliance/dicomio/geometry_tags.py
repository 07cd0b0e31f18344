"""The projection geometry of a film, stored in a private block of its DICOM header.

Layout (group 0x0071, private creator ``XR3D GEOMETRY 1``; element offsets within the block):

- ``0x01`` LO: layout version ("1")
- ``0x02`` UT: ``ProjectionGeometry.to_dict()`` as JSON (the authoritative record)
- ``0x03`` FD x 12: the 3x4 projection matrix, row-major, for readers that only want to project

The JSON carries everything needed to rebuild the geometry; the matrix is redundant on purpose so a
tool without xr3d can still project LPS points to pixels. On reading, the two are cross-checked so a
header edited by hand (or by a buggy anonymiser) is noticed instead of silently trusted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from pydicom.dataset import Dataset

from appliance.errors import GeometryError
from appliance.geometry.projection import ProjectionGeometry

log = logging.getLogger(__name__)

PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "XR3D GEOMETRY 1"
LAYOUT_VERSION = "1"
_ELEM_VERSION = 0x01
_ELEM_JSON = 0x02
_ELEM_MATRIX = 0x03

# Relative tolerance of the JSON-vs-matrix cross-check; both are written from the same float64s,
# so anything beyond rounding noise means the header was altered.
_MATRIX_RTOL = 1e-9


def write_geometry(ds: Dataset, geometry: ProjectionGeometry) -> None:
    """Add (or replace) the private geometry block in ``ds``."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(_ELEM_VERSION, "LO", LAYOUT_VERSION)
    block.add_new(_ELEM_JSON, "UT", json.dumps(geometry.to_dict(), sort_keys=True))
    block.add_new(_ELEM_MATRIX, "FD", [float(x) for x in geometry.matrix().reshape(-1)])


def read_geometry(ds: Dataset) -> ProjectionGeometry | None:
    """The geometry written by :func:`write_geometry`, or None when the block is absent.

    Raises GeometryError when the block is present but unusable (bad JSON, unknown layout, or a
    matrix that disagrees with the JSON).
    """
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    if _ELEM_JSON not in block:
        return None
    version = str(block[_ELEM_VERSION].value) if _ELEM_VERSION in block else ""
    if version != LAYOUT_VERSION:
        raise GeometryError(f"unknown private geometry layout version {version!r}")
    raw = block[_ELEM_JSON].value
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeometryError(f"private geometry JSON is malformed: {exc}") from exc
    if not isinstance(payload, dict):
        raise GeometryError("private geometry JSON is not an object")
    geometry = ProjectionGeometry.from_dict(payload)
    if _ELEM_MATRIX in block:
        stored = np.asarray(block[_ELEM_MATRIX].value, dtype=np.float64).reshape(-1)
        if stored.size != 12:
            raise GeometryError(f"private projection matrix has {stored.size} values, expected 12")
        expected = geometry.matrix().reshape(-1)
        scale = float(np.max(np.abs(expected)))
        if not np.allclose(stored, expected, rtol=0.0, atol=_MATRIX_RTOL * scale):
            raise GeometryError("private projection matrix disagrees with the stored geometry")
    return geometry


def read_matrix(ds: Dataset) -> np.ndarray | None:
    """Only the stored 3x4 matrix (None when absent), for callers that never need the full geometry."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    if _ELEM_MATRIX not in block:
        return None
    stored = np.asarray(block[_ELEM_MATRIX].value, dtype=np.float64).reshape(-1)
    if stored.size != 12:
        raise GeometryError(f"private projection matrix has {stored.size} values, expected 12")
    return stored.reshape(3, 4)
