"""The low-confidence threshold for knee-film landmarks (same style as ``confidence.py``).

A knee landmark whose confidence (its heatmap peak; 1 = as sharp as a training target) is below
:data:`KNEE_LOW_CONFIDENCE` is flagged ``low_confidence``, and every knee measurement that needs it is
flagged too (still reported, never hidden). The value is the long-leg threshold
(:data:`appliance.landmarks.confidence.LOW_CONFIDENCE`) until a knee-specific fit exists; the
check of it on held-out knee films is in docs/knee-landmarks.md ("Low-confidence threshold").
"""

from __future__ import annotations

from typing import Final

from appliance.landmarks.confidence import LOW_CONFIDENCE

__all__ = ["KNEE_LOW_CONFIDENCE"]

KNEE_LOW_CONFIDENCE: Final = LOW_CONFIDENCE
