"""Stage 3 of the long-leg landmark model: a fine patch network shared by the eight landmarks.

:class:`FineNet` sees a small patch (1 x 96 x 96 at 0.25 mm/px at the detector, 24 x 24 mm) cut around
the point the crop stage found for one landmark and outputs eight heatmap logits at stride 2 (48 x 48,
0.5 mm cells); the patch of landmark ``k`` is read on channel ``k`` only (the same "one channel per
landmark, read the one you asked for" scheme as the crop stage's regions). Training targets are
Gaussians of :data:`FINE_GEOMETRY` ``.sigma`` heatmap pixels (0.75 mm), trained like the crop stage with
the spatial cross-entropy plus the soft-argmax distance; the exported ``forward`` applies the scaled
spatial softmax (:func:`export.models.landmark_net.spatial_softmax`), so the runtime decodes it with the
same log-quadratic peak.

Same TensorRT-friendly op set as the other stages (Conv, BN folded, Relu, Resize nearest x2, Concat,
Reshape, Softmax, Mul). Input float32 in [0, 1], bone bright, mirrored to the canonical side.
"""

from __future__ import annotations

import logging
from typing import Final

import torch
from torch import nn

from export.models.landmark_net import N_LANDMARKS, NetGeometry, _conv, _Down, _Up, spatial_softmax

log = logging.getLogger(__name__)

__all__ = ["FINE_GEOMETRY", "FineNet"]

FINE_GEOMETRY: Final = NetGeometry(rows=96, cols=96, mm_per_px=0.25, stride=2, sigma=1.5)
"""96 x 96 patches at 0.25 mm/px (detector): 24 mm around the crop stage's point, room for its p95
error (~3 mm) plus the training jitter; heatmaps at 0.5 mm cells, target sigma 0.75 mm."""


class FineNet(nn.Module):
    """(B, 1, 96, 96) -> heatmaps (B, 8, 48, 48): a light U-Net down to stride 16 (6 x 6, the whole
    patch in view) and back up to stride 2 with skips."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        w = width
        self.width = width
        self.geometry = FINE_GEOMETRY
        self.stem = _conv(1, w, 2)  # s2
        self.d1 = _Down(w, 2 * w)  # s4
        self.d2 = _Down(2 * w, 3 * w)  # s8
        self.d3 = _Down(3 * w, 4 * w)  # s16
        self.ctx = nn.Sequential(_conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.u2 = _Up(4 * w, 3 * w, 3 * w)  # s8
        self.u1 = _Up(3 * w, 2 * w, 2 * w)  # s4
        self.u0 = _Up(2 * w, w, w)  # s2
        self.heat = nn.Conv2d(w, N_LANDMARKS, 1)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        """Heatmaps: spatial softmax scaled to peak ~1."""
        return spatial_softmax(self.logits(patch), self.geometry.sigma)

    def logits(self, patch: torch.Tensor) -> torch.Tensor:
        s2 = self.stem(patch)
        s4 = self.d1(s2)
        s8 = self.d2(s4)
        s16 = self.ctx(self.d3(s8))
        x = self.u2(s16, s8)
        x = self.u1(x, s4)
        x = self.u0(x, s2)
        return self.heat(x)

    def arch(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights so a checkpoint rebuilds its network."""
        return {"width": self.width}
