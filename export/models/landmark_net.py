"""Coarse-to-fine landmark networks for AP long-leg films (issue 4).

* :class:`WholeFilmNet` (stage 1): a light U-Net on the whole film resampled to 2 mm/px at the detector
  (1 x 672 x 256). Outputs the eight ``LANDMARKS_2D`` heatmaps and two bone-mask logits (femur, tibia)
  at stride 4 (168 x 64).
* :class:`CropNet` (stage 2): a smaller U-Net on 0.5 mm/px crops (1 x 160 x 224) around hip, knee and
  ankle. Outputs eight heatmaps at stride 4 (40 x 56); a crop of region ``r`` is read only on the
  channels of ``REGIONS[r]`` (the others are trained with zero weight). Stride 4 at 0.5 mm/px is a 2 mm
  heatmap pixel; the log-quadratic peak refinement gives the sub-pixel position.

Heatmaps: the networks produce per-landmark logits, trained with a spatial cross-entropy against the
Gaussian targets normalised to sum 1 (converges far faster on this CPU than MSE on heatmaps, which sits
at the all-zero solution for hundreds of steps). The exported ``forward`` applies the spatial softmax and
scales it by 2 pi sigma^2, so a perfect prediction peaks at ~1: decoded with the log-quadratic peak
refinement of :func:`export.datasets.heatmaps.decode_heatmaps`, the peak value is the confidence.

Only TensorRT-friendly ops: Conv, BatchNormalization (folded at export), Relu, Resize (nearest, x2),
Concat, Reshape, Softmax, Mul. Inputs are float32 in [0, 1], bone bright. The exported ONNX writes each
up-block (Resize + Concat + 3x3 Conv) as the exact ConvTranspose + Conv + Add of
``export/onnx_upsample_form.py`` (faster on ONNX Runtime's CPU path; same op-check verdict).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

__all__ = [
    "CROP_GEOMETRY",
    "WHOLE_GEOMETRY",
    "CropNet",
    "NetGeometry",
    "WholeFilmNet",
    "count_parameters",
    "crop_geometry",
    "spatial_softmax",
]

N_LANDMARKS: Final = 8


@dataclass(frozen=True)
class NetGeometry:
    """Input geometry of one stage: (rows, cols) at ``mm_per_px`` (detector mm), heatmap stride, and
    the Gaussian sigma of the training targets in heatmap pixels."""

    rows: int
    cols: int
    mm_per_px: float
    stride: int
    sigma: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def heatmap_shape(self) -> tuple[int, int]:
        return (-(-self.rows // self.stride), -(-self.cols // self.stride))

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "rows": self.rows,
            "cols": self.cols,
            "mm_per_px": self.mm_per_px,
            "stride": self.stride,
            "sigma_heatmap_px": self.sigma,
            "layout": "NCHW float32 [0,1], bone bright",
        }


WHOLE_GEOMETRY: Final = NetGeometry(rows=672, cols=256, mm_per_px=2.0, stride=4, sigma=1.5)
CROP_GEOMETRY: Final = NetGeometry(rows=160, cols=224, mm_per_px=0.5, stride=4, sigma=1.5)
CROP_SIGMA_S2: Final = 2.0
"""Target sigma of the stride-2 crop head in heatmap pixels (1 mm at 0.5 mm/px): sharper than the
stride-4 head's 3 mm, still >= 2 samples so the log-parabola decoding is well posed."""


def crop_geometry(stride: int) -> NetGeometry:
    """The crop stage's geometry for a heatmap ``stride`` of 4 (0.1/0.2) or 2 (0.3)."""
    if stride == 4:
        return CROP_GEOMETRY
    return dataclasses.replace(CROP_GEOMETRY, stride=stride, sigma=CROP_SIGMA_S2)


def spatial_softmax(logits: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-map softmax over all pixels, scaled by 2 pi sigma^2 so that a prediction equal to the
    training target (a Gaussian of ``sigma`` heatmap pixels) peaks at ~1. Its log is the logits up to
    a constant, so the log-quadratic peak refinement fits the logits directly."""
    b, n, h, w = logits.shape
    p = torch.softmax(logits.reshape(b, n, h * w), dim=-1).reshape(b, n, h, w)
    return p * (2.0 * math.pi * sigma * sigma)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv(cin, cout, 2), _conv(cout, cout))


class _Up(nn.Module):
    """Nearest x2 upsampling of the coarse map, concatenated with the skip, then two convs."""

    def __init__(self, cin: int, cskip: int, cout: int, *, convs: int = 2) -> None:
        super().__init__()
        layers = [_conv(cin + cskip, cout)] + [_conv(cout, cout) for _ in range(convs - 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        up = up[:, :, : skip.shape[2], : skip.shape[3]]
        return self.body(torch.cat([up, skip], dim=1))


class WholeFilmNet(nn.Module):
    """Stage 1: (B, 1, 672, 256) -> heatmaps (B, 8, 168, 64), mask logits (B, 2, 168, 64)."""

    geometry: Final = WHOLE_GEOMETRY

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = _conv(1, w, 2)  # s2
        self.d1 = _Down(w, 2 * w)  # s4
        self.d2 = _Down(2 * w, 3 * w)  # s8
        self.d3 = _Down(3 * w, 4 * w)  # s16
        self.d4 = _Down(4 * w, 6 * w)  # s32
        self.ctx = nn.Sequential(_conv(6 * w, 6 * w), _conv(6 * w, 6 * w))
        self.u3 = _Up(6 * w, 4 * w, 4 * w)  # s16
        self.u2 = _Up(4 * w, 3 * w, 3 * w)  # s8
        self.u1 = _Up(3 * w, 2 * w, 2 * w, convs=1)  # s4
        self.heat = nn.Conv2d(2 * w, N_LANDMARKS, 1)
        self.mask = nn.Conv2d(2 * w, 2, 1)

    def forward(self, film: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmaps: spatial softmax scaled to peak ~1, mask logits)."""
        logits, mask = self.logits(film)
        return spatial_softmax(logits, self.geometry.sigma), mask

    def logits(self, film: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmap logits, mask logits): what the loss sees."""
        s2 = self.stem(film)
        s4 = self.d1(s2)
        s8 = self.d2(s4)
        s16 = self.d3(s8)
        s32 = self.ctx(self.d4(s16))
        x = self.u3(s32, s16)
        x = self.u2(x, s8)
        x = self.u1(x, s4)
        return self.heat(x), self.mask(x)


class CropNet(nn.Module):
    """Stage 2: (B, 1, 160, 224) -> heatmaps (B, 8, 160 / stride, 224 / stride).

    ``stride`` 4 is the 0.1/0.2 design (2 mm heatmap cells); ``stride`` 2 adds one upsampling block
    with a skip from the stem (1 mm cells, targets of sigma :data:`CROP_SIGMA_S2`), which the 0.3
    models use. The instance's :attr:`geometry` says which."""

    def __init__(self, width: int = 8, stride: int = 4) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"CropNet stride must be 2 or 4, got {stride}")
        w = width
        self.width = width
        self.stride = stride
        self.geometry = crop_geometry(stride)
        self.stem = _conv(1, w, 2)  # s2
        self.d1 = _Down(w, 2 * w)  # s4
        self.d2 = _Down(2 * w, 3 * w)  # s8
        self.d3 = _Down(3 * w, 4 * w)  # s16
        self.ctx = nn.Sequential(_conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.u2 = _Up(4 * w, 3 * w, 3 * w)  # s8
        self.u1 = _Up(3 * w, 2 * w, 2 * w)  # s4
        self.u0 = _Up(2 * w, w, w) if stride == 2 else None  # s2
        self.heat = nn.Conv2d(w if stride == 2 else 2 * w, N_LANDMARKS, 1)

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        """Heatmaps: spatial softmax scaled to peak ~1."""
        return spatial_softmax(self.logits(crop), self.geometry.sigma)

    def logits(self, crop: torch.Tensor) -> torch.Tensor:
        s2 = self.stem(crop)
        s4 = self.d1(s2)
        s8 = self.d2(s4)
        s16 = self.ctx(self.d3(s8))
        x = self.u2(s16, s8)
        x = self.u1(x, s4)
        if self.u0 is not None:
            x = self.u0(x, s2)
        return self.heat(x)

    def arch(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights so a checkpoint rebuilds its network."""
        return {"width": self.width, "stride": self.stride}


def count_parameters(module: nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())
