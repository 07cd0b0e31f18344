"""CPAK: Coronal Plane Alignment of the Knee (MacDessi et al., Bone Joint J 2021;103-B(2):329-337).

Nine phenotypes from two numbers: the arithmetic HKA (aHKA = MPTA - mLDFA) and the joint line
obliquity (JLO = MPTA + mLDFA). Thresholds and numbering follow ../shared/reference/alignment.md:
aHKA varus < -2, neutral -2..+2, valgus > +2; JLO apex distal < 177, neutral 177..183, apex proximal
> 183; a value exactly on a boundary is neutral. Rows run apex distal -> apex proximal, columns varus
-> valgus, so type = 3 * row + column + 1 (I top-left, IX bottom-right of the reference table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from appliance.errors import InputError

AHKA_VARUS_BELOW: Final = -2.0
AHKA_VALGUS_ABOVE: Final = 2.0
JLO_APEX_DISTAL_BELOW: Final = 177.0
JLO_APEX_PROXIMAL_ABOVE: Final = 183.0

AHKA_CATEGORIES: Final[tuple[str, ...]] = ("varus", "neutral", "valgus")
JLO_CATEGORIES: Final[tuple[str, ...]] = ("apex_distal", "neutral", "apex_proximal")
ROMAN: Final[tuple[str, ...]] = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")

BORDERLINE_DEG: Final = 1.0
"""A knee whose aHKA or JLO lies within this of a CPAK boundary is reported with the neighbouring types
(``Cpak.borderline``): 1 deg is below a human reader's angle reproducibility (95 % limits +-1.1-1.4 deg)
and about twice the 95th-percentile aHKA / JLO error of our landmark model on held-out simulated films
(0.52 / 0.60 deg, docs/landmarks.md), so a type near a boundary is told as such, not as a certainty."""

# Angles arrive as sums/differences of floats (MPTA - mLDFA), so a value meant to be exactly -2 can
# land at -2.0000000000000004; classify on a value rounded far below any clinical precision.
_CLASSIFY_DECIMALS: Final = 9


@dataclass(frozen=True)
class Cpak:
    """One CPAK phenotype: ``type`` 1..9, Roman ``label``, and the two category names."""

    type: int
    label: str
    ahka_category: str
    jlo_category: str
    # labels of the other types within BORDERLINE_DEG of either angle, in type order (empty: clear)
    borderline: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, int | str | list[str]]:
        return {
            "type": self.type,
            "label": self.label,
            "ahka_category": self.ahka_category,
            "jlo_category": self.jlo_category,
            "borderline": list(self.borderline),
        }

    @property
    def display(self) -> str:
        return cpak_display(self.label, self.borderline)


def ahka_column(ahka: float) -> int:
    """0 varus, 1 neutral, 2 valgus."""
    a = round(ahka, _CLASSIFY_DECIMALS)
    if a < AHKA_VARUS_BELOW:
        return 0
    if a > AHKA_VALGUS_ABOVE:
        return 2
    return 1


def jlo_row(jlo: float) -> int:
    """0 apex distal, 1 neutral, 2 apex proximal."""
    j = round(jlo, _CLASSIFY_DECIMALS)
    if j < JLO_APEX_DISTAL_BELOW:
        return 0
    if j > JLO_APEX_PROXIMAL_ABOVE:
        return 2
    return 1


def cpak_display(label: str, borderline: tuple[str, ...] | list[str] = ()) -> str:
    """How a type is shown to the surgeon: "II", or "II (borderline V)" near a boundary."""
    return f"{label} (borderline {'/'.join(borderline)})" if borderline else label


def borderline_types(ahka: float, jlo: float, tolerance: float = BORDERLINE_DEG) -> tuple[int, ...]:
    """The other CPAK types (1..9) the knee would have if aHKA and/or JLO moved by up to ``tolerance``."""
    cols = {ahka_column(ahka + d) for d in (-tolerance, 0.0, tolerance)}
    rows = {jlo_row(jlo + d) for d in (-tolerance, 0.0, tolerance)}
    own = 3 * jlo_row(jlo) + ahka_column(ahka) + 1
    return tuple(sorted({3 * r + c + 1 for r in rows for c in cols} - {own}))


def cpak_type(ahka: float, jlo: float, borderline_deg: float = BORDERLINE_DEG) -> Cpak:
    """Classify one knee (with the types within ``borderline_deg``); InputError for non-finite input."""
    if not (math.isfinite(ahka) and math.isfinite(jlo)):
        raise InputError(f"CPAK needs finite aHKA and JLO, got {ahka!r}, {jlo!r}", reason="bad_angle")
    col = ahka_column(ahka)
    row = jlo_row(jlo)
    number = 3 * row + col + 1
    near = borderline_types(ahka, jlo, borderline_deg) if borderline_deg > 0 else ()
    return Cpak(
        type=number,
        label=ROMAN[number - 1],
        ahka_category=AHKA_CATEGORIES[col],
        jlo_category=JLO_CATEGORIES[row],
        borderline=tuple(ROMAN[t - 1] for t in near),
    )
