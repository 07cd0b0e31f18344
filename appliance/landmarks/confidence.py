"""The low-confidence threshold for landmarks, fitted to landmark error on held-out simulated films.

A landmark whose confidence (its heatmap peak; 1 = as sharp as a training target) is below
:data:`LOW_CONFIDENCE` is to be flagged ``low_confidence``, and every value that needs it flagged too
(still reported, never hidden).

Fit (docs/landmarks.md, "Low-confidence threshold"), refitted for the shipped models 0.3.0 on 74 held-out
simulated long-leg films, side given: eval seeds 500100-500115 and 500200-500211 (one leg per film, 28),
500300-500315 (bilateral, 16) and 500400-500429 (bilateral, 30); 592 in-field landmarks, 23 with error
> 3 mm, none > 10 mm. ``export.evaluation.landmarks_eval.fit_low_confidence`` gives 0.718 for 50 %
sensitivity to errors > 3 mm and 0.841 for 67 %; the round 0.80 between them (as for 0.2.0) flags

* 57 % (13/23) of the landmarks with error > 3 mm,
* 9.1 % of the landmarks with error <= 3 mm; 54 % of films (40/74) get at least one flag.

Confidence is a weak predictor of millimetre-level error (Spearman rho -0.24 between confidence and
error): 80 % sensitivity to > 3 mm (0.901) would flag 38 % of the good landmarks. (0.2.0 on 38 films:
0.80 flagged 65 % of 23 errors > 3 mm, both > 10 mm, and 11 % of the good ones.) Refit with
``xr3d eval landmarks --json`` when the models change.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["LOW_CONFIDENCE", "LOW_CONFIDENCE_FIT"]

LOW_CONFIDENCE: Final = 0.80
LOW_CONFIDENCE_FIT: Final = MappingProxyType(
    {
        "error_mm": 3.0,
        "sensitivity": 13 / 23,
        "sensitivity_10mm": None,  # no error > 10 mm in the sample
        "flag_rate_good": 0.091,
        "eval_seeds": "500100-500115, 500200-500211, 500300-500315, 500400-500429",
        "models": "landmarks 0.3.0",
    }
)
"""The figures of the fit above, for reports (read-only)."""
