"""The low-confidence threshold for landmarks, fitted to landmark error on held-out simulated films.

A landmark whose confidence (its heatmap peak; 1 = as sharp as a training target) is below
:data:`LOW_CONFIDENCE` should be flagged ``low_confidence`` and every value that needs it flagged too.
PLACEHOLDER until the fit of this session is written here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOW_CONFIDENCE"]

LOW_CONFIDENCE: Final = 0.3
