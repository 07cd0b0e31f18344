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
Reshape, Softmax, Mul; up-blocks exported as ConvTranspose + Conv + Add, ``export/onnx_upsample_form.py``).
Input float32 in [0, 1], bone bright, mirrored to the canonical side.
"""

from __future__ import annotations

import logging
from typing import Final

from export.models.landmark_net import CropNet, NetGeometry

log = logging.getLogger(__name__)

__all__ = ["FINE_GEOMETRY", "FineNet"]

FINE_GEOMETRY: Final = NetGeometry(rows=96, cols=96, mm_per_px=0.25, stride=2, sigma=1.5)
"""96 x 96 patches at 0.25 mm/px (detector): 24 mm around the crop stage's point, room for its p95
error (~3 mm) plus the training jitter; heatmaps at 0.5 mm cells, target sigma 0.75 mm."""


class FineNet(CropNet):
    """(B, 1, 96, 96) -> heatmaps (B, 8, 48, 48): the crop stage's light U-Net (down to stride 16, 6 x 6,
    the whole patch in view, and back up to stride 2 with skips) on 0.25 mm/px patches. Same layers and
    state-dict keys as ``CropNet(width, stride=2)``; only the input geometry differs."""

    def __init__(self, width: int = 12) -> None:
        super().__init__(width, stride=2)
        self.geometry = FINE_GEOMETRY

    def arch(self) -> dict[str, int]:
        """Constructor arguments, stored with the weights so a checkpoint rebuilds its network."""
        return {"width": self.width}
