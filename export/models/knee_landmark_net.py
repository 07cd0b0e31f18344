"""Heatmap network for knee AP and knee lateral films (issue 4, knee films).

One light U-Net serves both views: the input is the knee film resampled to 0.5 mm/px at the detector
and cut to 480 x 384 (240 x 192 mm) around the film centre (or, on a second pass, around the knee found
by the first), bone bright in [0, 1]. The output has one heatmap per (view, landmark): the six knee AP
landmarks then the six knee lateral landmarks of ``appliance.landmarks.knee_views.KNEE_LANDMARKS``, at
stride 2 (1 mm heatmap pixels); a film of one view is read on its own six channels (the others are
trained with zero weight). A single stage at 0.5 mm/px replaces the long-leg model's coarse-to-fine
pair: a knee film (24 x 30 cm) fits one input at that resolution.

As in ``export/models/landmark_net.py`` (whose design this follows), the network outputs logits trained
with a spatial cross-entropy against Gaussian targets; the exported ``forward`` applies the spatial
softmax scaled by 2 pi sigma^2, so the peak of a prediction as sharp as a target is ~1 (the confidence)
and the log-quadratic peak refinement of ``appliance.landmarks.heatmaps`` applies unchanged.
Only TensorRT-friendly ops: Conv (BN folded at export), Relu, Resize (nearest x2), Concat, Slice,
Reshape, Softmax, Mul; the exported ONNX writes the up-blocks as ConvTranspose + Conv + Add
(``export/onnx_upsample_form.py``, exact).
"""

from __future__ import annotations

import logging
from typing import Final

import torch
from torch import nn

from appliance.landmarks.knee_views import KNEE_AP, KNEE_LANDMARKS, KNEE_LAT
from export.models.landmark_net import NetGeometry, _conv, _Down, _Up, spatial_softmax

log = logging.getLogger(__name__)

__all__ = ["CHANNELS", "KNEE_GEOMETRY", "KneeLandmarkNet", "view_channels"]

KNEE_GEOMETRY: Final = NetGeometry(rows=480, cols=384, mm_per_px=0.5, stride=2, sigma=2.0)
CHANNELS: Final[tuple[str, ...]] = tuple(
    f"{prefix}.{n}" for view, prefix in ((KNEE_AP, "ap"), (KNEE_LAT, "lat")) for n in KNEE_LANDMARKS[view]
)
"""Output channel names: ``ap.FKC`` ... ``lat.TAX``."""


def view_channels(view: str) -> tuple[int, ...]:
    """Indices of ``view``'s channels in the output."""
    prefix = {KNEE_AP: "ap", KNEE_LAT: "lat"}[view]
    return tuple(i for i, c in enumerate(CHANNELS) if c.split(".", 1)[0] == prefix)


class KneeLandmarkNet(nn.Module):
    """(B, 1, 480, 384) -> heatmaps (B, 12, 240, 192)."""

    geometry: Final = KNEE_GEOMETRY

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = _conv(1, w, 2)  # s2
        self.d1 = _Down(w, 2 * w)  # s4
        self.d2 = _Down(2 * w, 3 * w)  # s8
        self.d3 = _Down(3 * w, 4 * w)  # s16
        self.d4 = _Down(4 * w, 6 * w)  # s32: a receptive field spanning joint and axis points
        self.ctx = nn.Sequential(_conv(6 * w, 6 * w), _conv(6 * w, 6 * w))
        self.u3 = _Up(6 * w, 4 * w, 4 * w)  # s16
        self.u2 = _Up(4 * w, 3 * w, 3 * w)  # s8
        self.u1 = _Up(3 * w, 2 * w, 2 * w)  # s4
        self.u0 = _Up(2 * w, w, 2 * w, convs=1)  # s2
        self.heat = nn.Conv2d(2 * w, len(CHANNELS), 1)

    def forward(self, film: torch.Tensor) -> torch.Tensor:
        """Heatmaps: spatial softmax scaled to peak ~1."""
        return spatial_softmax(self.logits(film), self.geometry.sigma)

    def logits(self, film: torch.Tensor) -> torch.Tensor:
        s2 = self.stem(film)
        s4 = self.d1(s2)
        s8 = self.d2(s4)
        s16 = self.d3(s8)
        s32 = self.ctx(self.d4(s16))
        x = self.u3(s32, s16)
        x = self.u2(x, s8)
        x = self.u1(x, s4)
        x = self.u0(x, s2)
        out: torch.Tensor = self.heat(x)
        return out
