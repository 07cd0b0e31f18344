"""Bone surfaces from the label volume, in patient LPS mm, and small binary STL / PLY writers.

Marching cubes (scikit-image) runs on each bone's 0/1 mask, lightly smoothed (Gaussian, sigma in voxels)
so the 0.5 iso-surface passes between voxel centres instead of along the staircase; the vertices are in
voxel-index space and the volume affine takes them to LPS mm. Faces are wound so their normals point
out of the bone in patient space, whatever the affine's handedness.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage import measure

from appliance.errors import InputError
from appliance.geometry.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mesh:
    """Triangle mesh: ``vertices`` (N, 3) float64 LPS mm, ``faces`` (M, 3) int vertex indices (outward)."""

    vertices: NDArray[np.float64]
    faces: NDArray[np.int64]

    def face_normals(self) -> NDArray[np.float64]:
        v = self.vertices[self.faces]
        n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        lengths = np.linalg.norm(n, axis=1, keepdims=True)
        return np.asarray(n / np.maximum(lengths, 1e-12), dtype=np.float64)

    def volume_mm3(self) -> float:
        """Signed enclosed volume (positive for outward-wound closed meshes)."""
        v = self.vertices[self.faces]
        return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def label_surface(labels: Volume, label: int, smooth_sigma_vox: float = 0.7) -> Mesh | None:
    """Surface of ``labels == label`` in LPS mm, or None when the label is absent."""
    mask = np.asarray(labels.data) == label
    if not mask.any():
        return None
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - 2, 0)
    hi = np.minimum(idx.max(axis=0) + 3, mask.shape)
    sub = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    # A zero border closes meshes of bones that touch the volume's faces.
    sub = np.pad(sub, 1)
    if smooth_sigma_vox > 0:
        sub = ndimage.gaussian_filter(sub, smooth_sigma_vox)
    verts, faces, _, _ = measure.marching_cubes(sub, level=0.5)
    verts = verts + lo - 1.0
    mm = labels.index_to_mm(verts)
    mesh = Mesh(np.asarray(mm, dtype=np.float64), np.asarray(faces, dtype=np.int64))
    if mesh.volume_mm3() < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    return mesh


def write_stl(mesh: Mesh, path: Path, name: str = "xr3d") -> None:
    """Binary STL (80-byte header, little-endian float32 normal + 3 vertices + attribute per face)."""
    tri = mesh.vertices[mesh.faces].astype("<f4")
    normals = mesh.face_normals().astype("<f4")
    rec = np.zeros(len(mesh.faces), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"] = normals
    rec["v"] = tri
    header = f"{name} LPS mm".encode("ascii", "replace")[:80].ljust(80, b" ")
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(struct.pack("<I", len(mesh.faces)))
        fh.write(rec.tobytes())


def read_stl(path: Path) -> Mesh:
    """Read a binary STL written by :func:`write_stl` (vertices not merged)."""
    raw = Path(path).read_bytes()
    if len(raw) < 84:
        raise InputError(f"{path}: too short for a binary STL")
    (n,) = struct.unpack("<I", raw[80:84])
    rec = np.frombuffer(raw[84 : 84 + 50 * n], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    verts = rec["v"].reshape(-1, 3).astype(np.float64)
    return Mesh(verts, np.arange(3 * n, dtype=np.int64).reshape(n, 3))


def write_ply(mesh: Mesh, path: Path) -> None:
    """Binary little-endian PLY with float32 vertices and uint8-count int32 face lists."""
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment xr3d bone surface, LPS mm\n"
        f"element vertex {len(mesh.vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(mesh.faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    faces = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    faces["n"] = 3
    faces["idx"] = mesh.faces
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(mesh.vertices.astype("<f4").tobytes())
        fh.write(faces.tobytes())


def read_ply(path: Path) -> Mesh:
    """Read a PLY written by :func:`write_ply`."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    head = raw[:end].decode("ascii").splitlines()
    nv = int(next(h for h in head if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in head if h.startswith("element face")).split()[-1])
    verts = np.frombuffer(raw[end : end + 12 * nv], dtype="<f4").reshape(nv, 3).astype(np.float64)
    faces = np.frombuffer(
        raw[end + 12 * nv : end + 12 * nv + 13 * nf], dtype=[("n", "u1"), ("idx", "<i4", 3)]
    )
    return Mesh(verts, faces["idx"].astype(np.int64))
