"""The landmark detector's low-confidence threshold: fitted from (confidence, error) pairs of an evaluation
so that a chosen share of the badly placed landmarks is flagged (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from appliance.errors import InputError

__all__ = ["ConfidenceFit", "fit_low_confidence", "flag_rates"]


@dataclass(frozen=True)
class ConfidenceFit:
    """A low-confidence threshold fitted to landmark errors: landmarks with confidence < ``threshold``
    are flagged; ``sensitivity`` = flagged share of the ``n_bad`` landmarks whose error exceeds
    ``error_mm``, ``flag_rate_good`` = flagged share of the ``n_good`` others."""

    error_mm: float
    target_sensitivity: float
    threshold: float
    sensitivity: float
    flag_rate_good: float
    n_bad: int
    n_good: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def flag_rates(conf: ArrayLike, err: ArrayLike, threshold: float, error_mm: float) -> tuple[float, float]:
    """(sensitivity, flag rate among good landmarks) of flagging confidence < ``threshold``."""
    c = np.asarray(conf, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    bad = e > error_mm
    flagged = c < threshold
    sens = float(flagged[bad].mean()) if bad.any() else float("nan")
    fpr = float(flagged[~bad].mean()) if (~bad).any() else float("nan")
    return sens, fpr


def fit_low_confidence(
    conf: ArrayLike, err: ArrayLike, *, error_mm: float = 3.0, sensitivity: float = 0.8
) -> ConfidenceFit:
    """The smallest threshold on confidence whose flags (confidence < threshold) catch at least
    ``sensitivity`` of the landmarks with error > ``error_mm`` (pure function of the pairs)."""
    c = np.asarray(conf, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    if c.shape != e.shape or c.size == 0:
        raise InputError("need as many confidences as errors, at least one", reason="bad_fit_input")
    bad = e > error_mm
    if not bad.any():
        thr = 0.0
    else:
        # flagging the k least confident bad landmarks needs a threshold just above the k-th confidence
        cb = np.sort(c[bad])
        k = max(1, int(np.ceil(sensitivity * cb.size)))
        thr = float(np.nextafter(cb[k - 1], np.inf))
    sens, fpr = flag_rates(c, e, thr, error_mm)
    return ConfidenceFit(
        error_mm=float(error_mm),
        target_sensitivity=float(sensitivity),
        threshold=thr,
        sensitivity=sens,
        flag_rate_good=fpr,
        n_bad=int(bad.sum()),
        n_good=int((~bad).sum()),
    )
