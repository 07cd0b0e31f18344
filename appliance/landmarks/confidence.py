"""The low-confidence threshold for landmarks, fitted to landmark error on held-out simulated films.

A landmark whose confidence (its heatmap peak; 1 = as sharp as a training target) is below
:data:`LOW_CONFIDENCE` is to be flagged ``low_confidence``, and every value that needs it flagged too
(still reported, never hidden).

Fit (docs/landmarks.md, "Low-confidence threshold"): the shipped models 0.2.0 on 38 held-out simulated
long-leg films, eval seeds 500100-500115 and 500200-500211 (one leg per film, 28 films) plus
500300-500309 (bilateral, 10 films), side given; 304 in-field landmarks, 23 of them with error > 3 mm,
2 with error > 10 mm. ``export.evaluation.landmarks_eval.fit_low_confidence`` gives 0.791 for 50 %
sensitivity to errors > 3 mm and 0.818 for 67 %; the round 0.80 between them flags

* 65 % (15/23) of the landmarks with error > 3 mm and 100 % (2/2) of those > 10 mm,
* 11 % of the landmarks with error <= 3 mm; 66 % of films get at least one flag.

Confidence is a weak predictor of millimetre-level error (Spearman rho -0.28 between confidence and
error): a threshold with 90 % sensitivity to > 3 mm (0.915) would flag 66 % of the good landmarks. The
sample is small (23 errors > 3 mm); refit on a larger eval set with ``xr3d eval landmarks --json``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["LOW_CONFIDENCE", "LOW_CONFIDENCE_FIT"]

LOW_CONFIDENCE: Final = 0.80
LOW_CONFIDENCE_FIT: Final = MappingProxyType(
    {
        "error_mm": 3.0,
        "sensitivity": 15 / 23,
        "sensitivity_10mm": 1.0,
        "flag_rate_good": 0.114,
        "eval_seeds": "500100-500115, 500200-500211, 500300-500309",
        "models": "landmarks 0.2.0",
    }
)
"""The figures of the fit above, for reports (read-only)."""
