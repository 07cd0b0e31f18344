"""Reading a study's ``recon/`` folder: bone surfaces (PLY or STL) and the volume with its labels.

Meshes are in patient LPS millimetres (docs/study-outputs.md). Volumes are NIfTI (RAS on disk); the
slices are taken from the volume reoriented to the closest canonical axes, so axial, coronal and sagittal
mean what they say whatever the voxel order on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from appliance.errors import InputError

log = logging.getLogger(__name__)

BONES: Final = ("femur", "tibia", "fibula", "patella")
LABEL_OF: Final = {"femur": 1, "tibia": 2, "fibula": 3, "patella": 4}
BONE_COLOURS: Final = {
    "femur": (0.93, 0.89, 0.78),
    "tibia": (0.78, 0.86, 0.93),
    "fibula": (0.80, 0.93, 0.80),
    "patella": (0.95, 0.78, 0.70),
}

_PLY_TYPES: Final = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass(frozen=True)
class Mesh:
    name: str
    verts: NDArray[np.float32]
    faces: NDArray[np.int32]


def read_ply(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Vertices and triangles of a PLY file (ASCII or binary; extra vertex properties are ignored)."""
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{path.name}: not a PLY file", reason="bad_mesh")
    body = data[data.index(b"\n", end) + 1 :]
    fmt = "ascii"
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in data[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            elements[-1][2].append(tuple(parts[1:]))
    if fmt == "ascii":
        return _read_ply_ascii(body, elements)
    endian = "<" if fmt == "binary_little_endian" else ">"
    verts = np.zeros((0, 3), np.float32)
    faces = np.zeros((0, 3), np.int32)
    offset = 0
    for name, count, props in elements:
        if props and props[0][0] == "list":
            cnt_t, idx_t = _PLY_TYPES[props[0][1]], _PLY_TYPES[props[0][2]]
            dt = np.dtype([("n", endian + cnt_t), ("i", endian + idx_t, (3,))])
            arr = np.frombuffer(body, dt, count, offset)
            if count and not np.all(arr["n"] == 3):
                raise InputError(f"{path.name}: only triangle meshes are supported", reason="bad_mesh")
            if name == "face":
                faces = arr["i"].astype(np.int32)
            offset += dt.itemsize * count
        else:
            dt = np.dtype([(p[1], endian + _PLY_TYPES[p[0]]) for p in props])
            arr = np.frombuffer(body, dt, count, offset)
            if name == "vertex":
                verts = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float32)
            offset += dt.itemsize * count
    return verts, faces


def _read_ply_ascii(
    body: bytes, elements: list[tuple[str, int, list[tuple[str, ...]]]]
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    lines = body.decode("ascii").splitlines()
    verts = np.zeros((0, 3), np.float32)
    faces = np.zeros((0, 3), np.int32)
    pos = 0
    for name, count, props in elements:
        rows = [ln.split() for ln in lines[pos : pos + count]]
        pos += count
        if name == "vertex":
            names = [p[1] for p in props]
            ix = [names.index(a) for a in ("x", "y", "z")]
            verts = np.array([[float(r[i]) for i in ix] for r in rows], np.float32).reshape(-1, 3)
        elif name == "face":
            faces = np.array([[int(v) for v in r[1:4]] for r in rows], np.int32).reshape(-1, 3)
    return verts, faces


def read_stl(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Binary STL (each triangle's corners become vertices of their own)."""
    data = path.read_bytes()
    if len(data) < 84:
        raise InputError(f"{path.name}: not a binary STL file", reason="bad_mesh")
    n = int(np.frombuffer(data, "<u4", 1, 80)[0])
    dt = np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    if len(data) < 84 + n * dt.itemsize:
        raise InputError(f"{path.name}: truncated STL", reason="bad_mesh")
    rec = np.frombuffer(data, dt, n, 84)
    return rec["v"].reshape(-1, 3).astype(np.float32), np.arange(3 * n, dtype=np.int32).reshape(-1, 3)


def load_meshes(recon_dir: Path) -> list[Mesh]:
    """Every bone surface present in ``recon_dir`` (PLY preferred, else STL); unreadable files are skipped."""
    out: list[Mesh] = []
    for bone in BONES:
        for ext, reader in ((".ply", read_ply), (".stl", read_stl)):
            p = recon_dir / f"{bone}{ext}"
            if not p.is_file():
                continue
            try:
                v, f = reader(p)
            except (InputError, ValueError, KeyError, IndexError) as exc:
                log.warning("cannot read %s: %s", p.name, exc)
                continue
            out.append(Mesh(bone, v, f))
            break
    return out


@dataclass(frozen=True)
class SliceVolume:
    """Volume and labels in closest-canonical voxel order (i: to the right, j: anterior, k: superior)."""

    hu: NDArray[np.float32]
    labels: NDArray[np.uint8] | None
    spacing_mm: tuple[float, float, float]


def load_slice_volume(recon_dir: Path) -> SliceVolume | None:
    vol_path = recon_dir / "volume.nii.gz"
    if not vol_path.is_file():
        return None
    img = nib.as_closest_canonical(nib.load(vol_path))
    hu = np.asarray(img.get_fdata(dtype=np.float32))
    labels = None
    lab_path = recon_dir / "labels.nii.gz"
    if lab_path.is_file():
        lab = nib.as_closest_canonical(nib.load(lab_path))
        arr = np.asarray(lab.dataobj).astype(np.uint8)
        labels = arr if arr.shape == hu.shape else None
    zooms = img.header.get_zooms()[:3]
    return SliceVolume(hu, labels, (float(zooms[0]), float(zooms[1]), float(zooms[2])))
