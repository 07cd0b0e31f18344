"""A coarse 3D shape context for the point decoder (recon-1.2).

The point decoder sees each film only around the ray through its point, so it cannot tell a bone's depth
profile or round off a cross-section the two films only bound (the sagittal "ghosts" of recon-1.1,
docs/recon.md). :class:`ContextNet` adds the missing shape prior while keeping the geometry: the film
feature maps are **back-projected** along the real rays onto a coarse grid of ``GRID``^3 points spanning the
cube (every grid point samples each film where it projects, exactly as the decoder does), and a small 3D
U-Net turns that back-projection into ``channels`` context maps (4.6 mm voxels, receptive field the whole
cube). The decoder samples the context trilinearly at each point and appends it to the film features.

The trilinear sampling is written as one 2D ``GridSample`` on the volume laid out as a (G*G, G) image
(:func:`sample_volume`): a point between slices i0 and i0 + 1 is sampled bilinearly in both slices (rows
i0*G + j and (i0+1)*G + j) and the two are blended by the slice fraction. This is exact trilinear
interpolation, runs on ONNX opset 17 and TensorRT (whose grid sampler is 2D only), and PyTorch trains the
very same function, so export parity needs no second form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GRID = 32  # context grid points per axis (voxel centres span the cube's -1..1)


def grid_points(g: int = GRID) -> Tensor:
    """(g^3, 3) normalised cube coordinates of the context grid, axis 0 slowest (the cube's index order)."""
    ax = torch.linspace(-1.0, 1.0, g)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)


def project(mats: Tensor, pts: Tensor) -> Tensor:
    """``mats`` (B, V, 3, 4) normalised cube -> normalised frame, ``pts`` (B, N, 3) -> (B, V, N, 2) frame
    coordinates (align_corners=True convention)."""
    ph = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1)
    q = torch.matmul(mats, ph.transpose(1, 2).unsqueeze(1)).transpose(2, 3)  # (B, V, N, 3)
    return q[..., :2] / torch.clamp(q[..., 2:3], min=1e-3)


def fast_path_coords(uv: Tensor, size: Tensor) -> Tensor:
    """Normalised ``align_corners=True`` frame coordinates ``uv`` -> the ``align_corners=False`` ones that
    address the same pixel positions, ``u' = ((u + 1) (W - 1) + 1) / W - 1`` (``size`` = (W, H), broadcast
    against ``uv``). ``GridSample`` in that mode is ONNX Runtime's precomputed-plan fast path (~3x faster
    than its generic per-channel loop); every step but the first rounding is exact in fp32."""
    return ((uv + 1.0) * (size - 1.0) + 1.0) / size - 1.0


def back_project(feat: Tensor, mats: Tensor, present: Tensor, pts: Tensor) -> Tensor:
    """Film features at the projections of ``pts``: (B, V F, N), absent views zero."""
    b, v, c, h, w = feat.shape
    n = pts.shape[1]
    uv = project(mats, pts).reshape(b * v, 1, n, 2)  # align_corners=True coordinates
    # ORT's generic GridSample loop was 43 % of the 48^3 context model's time: sample on its fast path.
    uv = fast_path_coords(uv, torch.tensor([float(w), float(h)], dtype=feat.dtype))
    s = F.grid_sample(
        feat.reshape(b * v, c, h, w), uv, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return (s.reshape(b, v, c, n) * present.view(b, v, 1, 1)).reshape(b, v * c, n)


def sample_volume(vol: Tensor, pts: Tensor) -> Tensor:
    """Trilinear samples of ``vol`` (B, C, G, G, G) (axis order = the cube's index order, voxel centres at
    -1..1) at ``pts`` (B, N, 3) -> (B, C, N); points outside the cube take the border value.

    One 2D ``GridSample`` (align_corners=False, zero padding: ONNX Runtime's fast path) on the (G*G, G)
    tiling, see the module docstring."""
    b, c, g = vol.shape[0], vol.shape[1], vol.shape[2]
    n = pts.shape[1]
    f = torch.clamp((pts + 1.0) * (0.5 * (g - 1)), 0.0, float(g - 1))  # voxel coordinates (B, N, 3)
    fi, fj, fk = f[..., 0], f[..., 1], f[..., 2]
    i0 = torch.clamp(torch.floor(fi), max=float(g - 2))
    t = (fi - i0).unsqueeze(1)  # (B, 1, N)
    rows = torch.cat([i0 * g + fj, (i0 + 1.0) * g + fj], dim=1)  # (B, 2N) pixel rows of the tiling
    cols = torch.cat([fk, fk], dim=1)
    u = (2.0 * cols + 1.0) / g - 1.0
    vv = (2.0 * rows + 1.0) / (g * g) - 1.0
    grid = torch.stack([u, vv], dim=-1).unsqueeze(1)  # (B, 1, 2N, 2)
    s = F.grid_sample(
        vol.reshape(b, c, g * g, g), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).reshape(b, c, 2 * n)
    return s[:, :, :n] * (1.0 - t) + s[:, :, n:] * t


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, k, stride=stride, padding=k // 2), nn.ReLU(inplace=True))


class ContextNet(nn.Module):
    """Back-projected film features (2 views x ``n_feat`` maps, the lateral-present flag and the grid
    position) on ``grid``^3 -> ``channels`` context maps, by a 3-level 3D U-Net (grid, grid/2, grid/4; 16, 32,
    64 channels). ``grid`` is 32 (4.6 mm voxels) up to recon-1.4."""

    def __init__(self, n_feat: int, channels: int = 16, n_views: int = 2, grid: int = GRID) -> None:
        super().__init__()
        if grid % 4:
            raise ValueError(f"the context grid must be a multiple of 4 (two halvings), got {grid}")
        self.channels = int(channels)
        self.grid_n = int(grid)
        # The convolutions do not depend on the grid: a finer grid warm-starts from a coarser one's weights.
        self.register_buffer("grid", grid_points(self.grid_n), persistent=False)
        c_in = n_views * n_feat + 4
        self.inp = _conv(c_in, 16, k=1)
        self.l0 = _conv(16, 16)
        self.l1 = nn.Sequential(_conv(16, 32, stride=2), _conv(32, 32))
        self.l2 = nn.Sequential(_conv(32, 64, stride=2), _conv(64, 64), _conv(64, 64))
        self.u1 = nn.Sequential(_conv(96, 32, k=1), _conv(32, 32))
        self.u0 = nn.Sequential(_conv(48, 16, k=1), _conv(16, 16))
        self.out = nn.Conv3d(16, self.channels, 1)

    def forward(self, feat: Tensor, mats: Tensor, present: Tensor) -> Tensor:
        """``feat`` (B, V, F, H, W), ``mats`` (B, V, 3, 4), ``present`` (B, V) -> (B, channels, G, G, G)."""
        b = feat.shape[0]
        g = self.grid_n
        grid = self.grid
        assert isinstance(grid, Tensor)
        pts = grid.unsqueeze(0).expand(b, -1, -1)
        bp = back_project(feat, mats, present, pts)  # (B, V F, G^3)
        lat = present[:, 1:2].view(b, 1, 1) + torch.zeros_like(bp[:, :1])
        x = torch.cat([bp, lat, pts.transpose(1, 2)], dim=1).reshape(b, -1, g, g, g)
        x0 = self.l0(self.inp(x))
        x1 = self.l1(x0)
        x2 = self.l2(x1)
        y1 = self.u1(torch.cat([F.interpolate(x2, scale_factor=2.0, mode="trilinear"), x1], dim=1))
        y0 = self.u0(torch.cat([F.interpolate(y1, scale_factor=2.0, mode="trilinear"), x0], dim=1))
        out: Tensor = self.out(y0)
        return out
